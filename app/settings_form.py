"""The training settings form: one widget per config field, built from engine.api.config's dataclasses.

The form edits a copy of a base TrainConfig (the loaded YAML or the defaults), so fields the form
does not show (LoRA targets, eval rows, …) pass through to the engine unchanged.
"""

from __future__ import annotations

import copy
import json
import typing

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QLineEdit, QSpinBox, QWidget

from engine.api.config import CHOICES, TrainConfig, get_field

# The fields shown, in order (dotted paths into TrainConfig). Device, dtype and the memory
# budget belong to the Device group (app.device_panel).
FIELDS = (
    "task", "time_budget_minutes", "steps", "batch_size", "max_seq_len", "backend",
    "optimizer.name", "optimizer.q", "optimizer.mode", "optimizer.estimator",
    "optimizer.directions", "optimizer.normalize", "optimizer.eps", "optimizer.lr",
    "optimizer.schedule", "optimizer.warmup_steps", "optimizer.momentum",
    "lora.variant", "lora.rank", "lora.alpha", "lora.top_layers",
    "eval_every", "early_stopping_patience", "checkpoint_every", "seed", "threads", "workers",
    "label_words", "prompt_template",
)

# Preset → field values; the rest of the form keeps what the user set.
PRESETS = {
    "Quick demo": {"steps": 50, "time_budget_minutes": 0, "batch_size": 4, "max_seq_len": 64,
                   "optimizer.q": 4, "optimizer.schedule": "constant", "eval_every": 25,
                   "checkpoint_every": 25},
    "Balanced": {"steps": 200, "time_budget_minutes": 0, "batch_size": 4, "max_seq_len": 128,
                 "optimizer.q": 4, "optimizer.schedule": "constant", "eval_every": 50,
                 "checkpoint_every": 50},
    "Quality": {"steps": 1000, "time_budget_minutes": 0, "batch_size": 8, "max_seq_len": 128,
                "optimizer.q": 8, "optimizer.schedule": "cosine", "eval_every": 100,
                "checkpoint_every": 100},
    # Steps become an upper bound; the cosine schedule decays over the ten minutes, so the run
    # ends annealed instead of drifting (docs/convergence.md).
    "Train for 10 minutes": {"steps": 100000, "time_budget_minutes": 10, "batch_size": 4,
                             "max_seq_len": 128, "optimizer.q": 4, "optimizer.schedule": "cosine",
                             "eval_every": 50, "checkpoint_every": 50},
}


def _hint(dotted: str) -> typing.Any:
    cls: typing.Any = TrainConfig
    parts = dotted.split(".")
    for part in parts[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return typing.get_type_hints(cls)[parts[-1]]


def _set_field(config: TrainConfig, dotted: str, value: typing.Any) -> None:
    obj: typing.Any = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part)
    setattr(obj, parts[-1], value)


class SettingsForm(QWidget):
    """Edits the training fields; `config()` returns the base config with the form applied."""

    sig_settings_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.base = TrainConfig()
        self.preset = QComboBox()
        self.preset.addItems(["Custom", *PRESETS])
        self.preset.activated.connect(lambda _: self.apply_preset(self.preset.currentText()))
        self.widgets: dict[str, QWidget] = {}
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addRow("Preset", self.preset)
        for name in FIELDS:
            widget = self._make_widget(name)
            self.widgets[name] = widget
            layout.addRow(name, widget)
        self.set_config(self.base)

    def _make_widget(self, name: str) -> QWidget:
        hint = _hint(name)
        if name in CHOICES:
            widget = QComboBox()
            widget.addItems(list(CHOICES[name]))
            widget.currentTextChanged.connect(self.sig_settings_changed)
        elif hint is int:
            widget = QSpinBox(minimum=0, maximum=10_000_000)
            widget.valueChanged.connect(self.sig_settings_changed)
        else:
            widget = QLineEdit()
            widget.textChanged.connect(self.sig_settings_changed)
            if name == "label_words":
                widget.setToolTip('JSON list, label order, e.g. [" terrible", " great"]; [] infers')
            elif name == "prompt_template":
                widget.setToolTip(r"{text} is the row's text; {{ and }} are literal braces; \n is a "
                                  "line break")
        if name == "time_budget_minutes":
            widget.setToolTip("train for this many minutes (0 = until the last step); the run then "
                              "evaluates, checkpoints and writes its adapter as after its last step")
        if name == "workers":
            widget.setToolTip("worker processes on this machine, each evaluating its share of the "
                              "step's directions (P-RGE; each holds its own copy of the model). For "
                              "several machines: python -m engine launch CONFIG --nodes K --print")
        if name == "backend":
            widget.setToolTip("executorch: every forward pass runs in the ExecuTorch runtime, as on a "
                              "phone (CPU, float32, P-RGE or MeZO; lowering takes minutes once per run)")
        return widget

    def set_config(self, config: TrainConfig) -> None:
        self.base = copy.deepcopy(config)
        for name in self.widgets:
            self._show(name, get_field(config, name))

    def _show(self, name: str, value: typing.Any) -> None:
        widget = self.widgets[name]
        if isinstance(widget, QComboBox):
            widget.setCurrentText(str(value))
        elif isinstance(widget, QSpinBox):
            widget.setValue(int(value))
        elif name == "label_words":
            widget.setText(json.dumps(value, ensure_ascii=False))
        elif name == "prompt_template":
            widget.setText(value.replace("\\", "\\\\").replace("\n", "\\n"))
        else:
            widget.setText(f"{value:g}" if isinstance(value, float) else str(value))

    def apply_preset(self, name: str) -> None:
        for field_name, value in PRESETS.get(name, {}).items():
            self._show(field_name, value)
        self.preset.setCurrentText(name)

    def config(self) -> TrainConfig:
        """The base config with the form's values; raises ValueError naming a bad field."""
        config = copy.deepcopy(self.base)
        for name, widget in self.widgets.items():
            _set_field(config, name, self._value(name, widget))
        return config

    def _value(self, name: str, widget: QWidget) -> typing.Any:
        if isinstance(widget, QComboBox):
            return widget.currentText()
        if isinstance(widget, QSpinBox):
            return widget.value()
        text = widget.text()
        if name == "label_words":
            try:
                words = json.loads(text or "[]")
            except json.JSONDecodeError:
                words = None
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise ValueError(f'{name}: {text!r} is not a JSON list of strings, e.g. [" bad", " good"]')
            return words
        if name == "prompt_template":
            return text.replace("\\n", "\n").replace("\\\\", "\\")
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name}: {text!r} is not a number") from None
