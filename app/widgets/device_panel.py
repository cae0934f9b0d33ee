"""The Device group: this machine, a device profile, the memory budget, and the estimated peak.

The estimate is engine.api.estimate's arithmetic (torch-free) over the model's config.json, so the
bar follows every settings change at once. It is the engine's pre-flight check's own
computation with the same inputs: the task the data resolves `auto` to and, for SFT, the
longest completion in tokens (engine.api.estimate.scored_columns), both from the dataset's
inspection. What is not known yet is sized for the worst it can be (a dataset not inspected yet
as SFT, completions as long as max_seq_len), so a run the bar shows as fitting is never refused
by the engine for memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QWidget

from app.wheel_guard import wheel_only_when_focused
from app.widgets.elided import ElidedProgressBar
from engine.api import profiles
from engine.api.config import TrainConfig, field_doc
from engine.api.estimate import Shape, estimate, per_worker, replaced, scored_columns, suggest

GIB = 2**30
BAR_STEPS = 1000  # the bar's resolution: 0.1 % of the budget
# Dark text on a light track and a pale chunk reads in any theme and on both sides of the fill
# edge (the default style drew white on the chunk and black beyond, splitting words).
BAR_STYLE = ("QProgressBar {{ border: 1px solid #8a8a8a; border-radius: 3px; background: #f4f4f4;"
             " color: #1a1a1a; text-align: center; }}"
             " QProgressBar::chunk {{ background: {chunk}; }}")
FITS_CHUNK, OVER_CHUNK = "#a9d6a0", "#f2aaa2"


@dataclass(frozen=True)
class Hardware:
    """What the window can tell about this machine without importing torch."""

    system: str
    machine: str
    cpu_cores: int
    memory_bytes: int
    accelerator: str  # "cuda" | "mps" | "" (a guess; the engine's probe has the final word)

    def describe(self) -> str:
        extra = {"cuda": " · NVIDIA GPU (nvidia-smi found)", "mps": " · Apple silicon GPU"}.get(
            self.accelerator, "")
        return (f"{self.system} {self.machine} · {self.cpu_cores} CPU cores · "
                f"{self.memory_bytes / GIB:.1f} GiB RAM{extra}")


def detect_hardware() -> Hardware:
    system, machine = platform.system(), platform.machine()
    if shutil.which("nvidia-smi"):
        accelerator = "cuda"
    elif system == "Darwin" and machine == "arm64":
        accelerator = "mps"
    else:
        accelerator = ""
    return Hardware(system, machine, psutil.cpu_count(logical=False) or os.cpu_count() or 1,
                    psutil.virtual_memory().total, accelerator)


def model_config(folder: str | Path) -> dict[str, Any] | None:
    """A model folder's config.json (what the estimate needs); None when there is none."""
    if not str(folder):
        return None
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def resolved_dtype(profile: profiles.Profile) -> str:
    """The dtype the engine will use under this profile (its `auto` rule, engine/device.py)."""
    if profile.dtype != "auto":
        return profile.dtype
    return "bfloat16" if profile.device == "cuda" else "float32"


class DevicePanel(QWidget):
    """Profile and budget for the run; tells the window whether the estimate fits."""

    sig_fit_changed = Signal(str)
    """Why the run cannot start ("" when the estimate fits or is not known yet)."""
    sig_device_changed = Signal()
    """The profile or the budget changed: the estimate needs the current config again."""

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.hardware = detect_hardware()
        self.profiles = profiles.load_all()
        self.shape: Shape | None = None
        # The dataset's inspection (None: no dataset; without "task": not inspected yet).
        self.inspection: dict[str, Any] | None = None
        self.blocking_reason = ""
        self.estimate_bytes: int | None = None

        self.hardware_label = QLabel(self.hardware.describe(), wordWrap=True)
        self.profile_combo = QComboBox()
        for key, profile in self.profiles.items():
            self.profile_combo.addItem(profile.name, key)
            self.profile_combo.setItemData(self.profile_combo.count() - 1, profile.description,
                                           Qt.ItemDataRole.ToolTipRole)
        self.budget = QDoubleSpinBox(minimum=0.25, maximum=4096.0, singleStep=0.5, decimals=2,
                                     suffix=" GiB")
        budget_doc = field_doc("memory_budget_gb")
        self.budget.setToolTip(f"{budget_doc.help} This machine has {self._ram_gib():.1f} GiB of RAM.")
        wheel_only_when_focused(self.profile_combo, self.budget)
        # A budget above the RAM never stops a run: the system swaps or ends it first.
        self.ram_warning = QLabel("", wordWrap=True, visible=False)
        self.bar = ElidedProgressBar(minimum=0, maximum=BAR_STEPS, textVisible=True)
        self.bar.setStyleSheet(BAR_STYLE.format(chunk=FITS_CHUNK))
        self._set_bar_text("estimate: pick a model")
        self.reason = QLabel("", wordWrap=True)
        # Not a blocking reason: what the estimate says about the optimiser not chosen.
        self.note = QLabel("", wordWrap=True, visible=False)
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addRow("This machine", self.hardware_label)
        layout.addRow("Profile", self.profile_combo)
        layout.addRow(budget_doc.label, self.budget)
        layout.addRow(self.ram_warning)
        layout.addRow("Estimated peak", self.bar)
        layout.addRow(self.reason)
        layout.addRow(self.note)

        saved = self.settings.value("device/profile", "")
        key = saved if saved in self.profiles else self._detected_key()
        self.select_profile(key)
        saved_budget = self.settings.value("device/budget_gb", None)
        if saved_budget is not None and saved in self.profiles:
            self.budget.setValue(float(saved_budget))
        self.profile_combo.activated.connect(lambda _: self._profile_picked())
        self.budget.valueChanged.connect(self._budget_changed)
        self.budget.valueChanged.connect(self._check_ram)
        self._check_ram(self.budget.value())

    def _ram_gib(self) -> float:
        return self.hardware.memory_bytes / GIB

    def _check_ram(self, budget_gb: float) -> None:
        ram = self._ram_gib()
        over = budget_gb > ram
        self.ram_warning.setText(
            f"<span style='color:#b00'>The budget is above this machine's {ram:.1f} GiB of RAM: the "
            f"system would swap or end the run before the budget stops it; set {ram:.1f} GiB or "
            "less.</span>" if over else "")
        self.ram_warning.setVisible(over)

    def _budget_changed(self, value: float) -> None:
        self.settings.setValue("device/profile", self.profile_combo.currentData())
        self.settings.setValue("device/budget_gb", value)
        self.sig_device_changed.emit()

    def _detected_key(self) -> str:
        wanted = self.hardware.accelerator or "cpu"
        # A profile that needs a CPU feature waits for the engine's probe to say it is there.
        return next((k for k, p in self.profiles.items() if p.device == wanted and not p.requires),
                    next(iter(self.profiles), ""))

    @property
    def profile(self) -> profiles.Profile | None:
        return self.profiles.get(self.profile_combo.currentData())

    def select_profile(self, key: str) -> None:
        """Show `key`'s profile and take its budget (the user may then change the budget)."""
        index = self.profile_combo.findData(key)
        if index < 0:
            return
        self.profile_combo.setCurrentIndex(index)
        self.budget.setValue(self.profiles[key].memory_budget_gb)

    def _profile_picked(self) -> None:
        self.select_profile(self.profile_combo.currentData())
        self.settings.setValue("device/profile", self.profile_combo.currentData())
        self.settings.setValue("device/budget_gb", self.budget.value())
        self.sig_device_changed.emit()

    def adopt_detected(self, key: str) -> None:
        """The engine's own detection (from a probe), unless the user picked a profile."""
        if not self.settings.value("device/profile", "") and key in self.profiles:
            self.select_profile(key)

    def set_model_config(self, config: dict[str, Any] | None) -> None:
        """The model's config.json (None: unknown model, no estimate)."""
        try:
            self.shape = Shape.from_config(config) if config else None
        except (KeyError, TypeError, ZeroDivisionError):
            self.shape = None  # not a decoder config we can size; the engine still checks

    def set_inspection(self, inspection: dict[str, Any] | None) -> None:
        """The dataset's inspect-dataset answer; {} while it is inspected, None for no dataset."""
        self.inspection = inspection

    def sized(self, config: TrainConfig) -> tuple[TrainConfig, int | None]:
        """`config` as the engine's pre-flight check sizes it: the task the data resolves `auto`
        to, and the columns an SFT batch scores (None: every column, for completions not known:
        not inspected yet, or in a separate held-out file)."""
        inspection = self.inspection or {}
        if config.task == "auto" and self.inspection is not None:
            config = dataclasses.replace(config, task=inspection.get("task") or "sft")
        longest = None if config.eval_dataset else inspection.get("longest_completion_tokens")
        return config, scored_columns(longest, config.max_seq_len) if config.task == "sft" else None

    def apply(self, config: TrainConfig) -> None:
        """Put the profile's device and dtype and the budget into `config`."""
        profile = self.profile
        if profile is not None:
            config.device, config.dtype = profile.device, profile.dtype
        config.memory_budget_gb = round(self.budget.value(), 2)

    def update_estimate(self, config: TrainConfig | None) -> None:
        """Redraw the bar for `config` (None: the settings are invalid) and report the fit."""
        budget_bytes = int(self.budget.value() * GIB)
        profile = self.profile
        if config is None or self.shape is None or profile is None:
            self.estimate_bytes = None
            self.bar.setValue(0)
            self._set_bar_text("estimate: pick a model" if self.shape is None else
                               "estimate: fix the settings first")
            self._set_reason("")
            self.note.setVisible(False)
            return
        dtype = resolved_dtype(profile)
        config, scored = self.sized(config)
        # The budget bounds each worker's process, as the engine's pre-flight check does.
        workers = [e.total_bytes for e in per_worker(self.shape, config, dtype, scored)]
        total = max(workers)
        self.estimate_bytes = total
        self.bar.setValue(min(BAR_STEPS, round(BAR_STEPS * total / budget_bytes)))
        budget = f"{self.budget.value():.2f} GiB budget"
        self._set_bar_text(f"{total / GIB:.2f} GiB of {budget}" if len(workers) == 1 else
                           f"{total / GIB:.2f} GiB per worker of {budget}; {len(workers)} "
                           f"workers: {sum(workers) / GIB:.2f} GiB in total")
        fits = total <= budget_bytes
        self.bar.setStyleSheet(BAR_STYLE.format(chunk=FITS_CHUNK if fits else OVER_CHUNK))
        first_order, forward_only = (
            estimate(self.shape, replaced(config, optimizer={"name": name}), dtype, scored).total_bytes
            for name in ("fo", "prge"))
        # The case P-RGE is for: backprop keeps every layer's activations, P-RGE's passes none.
        only_prge_fits = first_order > budget_bytes >= forward_only
        chosen = config.optimizer.name
        self.note.setText(f"First-order (fo) would need about {first_order / GIB:.2f} GiB, over the "
                          f"{budget}: P-RGE trains this model here, first-order does not."
                          if fits and only_prge_fits and chosen == "prge" else "")
        self.note.setVisible(bool(self.note.text()))
        if fits:
            self._set_reason("")
            return
        options = suggest(self.shape, config, budget_bytes, dtype, scored)
        hint = (f"settings that fit: {', '.join(options)}" if options else
                "no smaller q, batch or sequence length fits: pick a smaller model or raise the budget")
        if chosen == "fo" and only_prge_fits:
            self._set_reason(f"First-order (fo) needs about {total / GIB:.2f} GiB, over the {budget}: "
                             "its backward pass keeps every layer's activations. P-RGE (forward "
                             f"passes only) fits in about {forward_only / GIB:.2f} GiB; {hint}.")
            return
        self._set_reason(f"Needs about {total / GIB:.2f} GiB, over the {budget}; {hint}.")

    def _set_bar_text(self, text: str) -> None:
        self.bar.setFormat(text)
        self.bar.setToolTip(text)  # the whole text where the bar is too narrow and elides it

    def _set_reason(self, reason: str) -> None:
        self.reason.setText(f"<span style='color:#b00'>{reason}</span>" if reason else "")
        if reason != self.blocking_reason:
            self.blocking_reason = reason
            self.sig_fit_changed.emit(reason)
