"""The training settings form: one widget per config field, built from engine.api.config's dataclasses.

The form edits a copy of a base TrainConfig (the loaded YAML or the defaults), so fields the form
does not show (LoRA targets, eval rows, …) pass through to the engine unchanged. Each field's
label and tooltip are the config's own (engine.api.config.field_doc).
"""

from __future__ import annotations

import copy
import json
import re
import typing

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.wheel_guard import wheel_only_when_focused
from engine.api.config import CHOICES, TrainConfig, field_doc, get_field

# The fields shown, in order (dotted paths into TrainConfig). Device, dtype and the memory
# budget belong to the Device group (app.widgets.device_panel).
BASIC = (
    "task", "time_budget_minutes", "steps", "batch_size", "max_seq_len", "eval_fraction",
    "skip_bad_rows", "label_words", "prompt_template", "seed",
)
ADVANCED = (
    "backend", "optimizer.name", "optimizer.lr", "optimizer.q", "optimizer.mode",
    "optimizer.estimator", "optimizer.directions", "optimizer.normalize", "optimizer.eps",
    "optimizer.schedule", "optimizer.warmup_steps", "optimizer.momentum",
    "lora.variant", "lora.rank", "lora.alpha", "lora.top_layers",
    "eval_every", "early_stopping_patience", "checkpoint_every", "threads", "workers",
)
FIELDS = BASIC + ADVANCED
# What only a classification run reads; an SFT run ignores them, so they are greyed out then.
CLASSIFICATION_ONLY = ("label_words", "prompt_template")
# How a one-line field is typed here (the YAML writes these values its own way).
TYPING = {
    "label_words": 'Typed as a JSON list, e.g. [" terrible", " great"]; empty infers them.',
    "prompt_template": r"Typed on one line: \n is a line break, \\ a backslash.",
}

# The window's controls by the fields they set: this form's, the ones around it, and the
# device profile, which sets device and dtype together.
CONTROLS = {name: field_doc(name).label
            for name in (*FIELDS, "model", "dataset", "schema", "memory_budget_gb")}
CONTROLS |= {"device": "Profile", "dtype": "Profile"}
# A field quoted or set (`"name"`, `name=`), or any dotted or snake_case name: a bare plain
# word ("steps", "workers") is as likely prose as a field.
_MENTION = re.compile(r'"([a-z_.]+)"|\b([a-z]+(?:[._][a-z]+)+)\b|\b([a-z]+)=')
# Instructions for a config file or the command line, and what the window offers instead.
_CONFIG_FILE_WORDS = (
    (re.compile(r"; set it in the YAML or as [\w.]+=…"), "; fill it in"),
    (re.compile(r"`python -m engine train \S+ --resume`"), "the Resume button"),
)

# The quick presets keep the default two-sided estimator (8 copies per pass instead of 16: half
# the step time); every preset sets the whole estimator, so none inherits another's.
QUICK_ESTIMATOR = {"optimizer.estimator": "two-sided", "optimizer.directions": "gaussian",
                   "optimizer.q": 4, "optimizer.schedule": "constant"}
BEST_ESTIMATOR = {"optimizer.estimator": "one-sided", "optimizer.directions": "rademacher",
                  "optimizer.q": 15, "optimizer.schedule": "cosine"}
# Preset → field values; the rest of the form keeps what the user set.
PRESETS = {
    "Quick demo": {"steps": 50, "time_budget_minutes": 0, "batch_size": 4, "max_seq_len": 64,
                   **QUICK_ESTIMATOR, "eval_every": 25, "checkpoint_every": 25},
    "Balanced": {"steps": 200, "time_budget_minutes": 0, "batch_size": 4, "max_seq_len": 128,
                 **QUICK_ESTIMATOR, "eval_every": 50, "checkpoint_every": 50},
    # The estimator measured best per second (docs/convergence.md, round 3): 15 one-sided
    # Rademacher directions against one shared unperturbed copy, cosine over the run.
    "Quality": {"steps": 1000, "time_budget_minutes": 0, "batch_size": 4, "max_seq_len": 128,
                **BEST_ESTIMATOR, "eval_every": 100, "checkpoint_every": 100},
    # Steps become an upper bound; the cosine schedule decays over the ten minutes, so the run
    # ends annealed instead of drifting.
    "Train for 10 minutes": {"steps": 100000, "time_budget_minutes": 10, "batch_size": 4,
                             "max_seq_len": 128, **BEST_ESTIMATOR, "eval_every": 100,
                             "checkpoint_every": 100},
}


def name_the_controls(message: str) -> str:
    """An engine or config message as the window shows it: instructions for a config file give
    way to the window's, and the controls of the fields it names are added by their labels (the
    field names stay, for whoever looks them up in a YAML file)."""
    for pattern, replacement in _CONFIG_FILE_WORDS:
        message = pattern.sub(replacement, message)
    mentioned = (next(filter(None, match.groups())) for match in _MENTION.finditer(message))
    labels = list(dict.fromkeys(CONTROLS[name] for name in mentioned if name in CONTROLS))
    return f"{message} (in this window: {', '.join(labels)})" if labels else message


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


def _tooltip(name: str) -> str:
    note = TYPING.get(name)
    return field_doc(name).help + (f"\n\n{note}" if note else "")


class SettingsForm(QWidget):
    """Edits the training fields; `config()` returns the base config with the form applied."""

    sig_settings_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.base = TrainConfig()
        # The task the dataset's inspection found ("" before one answered), and which data it
        # was about: the same data inspected again must not undo the user's own choice.
        self.detected_task = ""
        self._followed: tuple[typing.Any, typing.Any] | None = None
        self.preset = QComboBox()
        self.preset.addItems(["Custom", *PRESETS])
        self.preset.activated.connect(lambda _: self.apply_preset(self.preset.currentText()))
        wheel_only_when_focused(self.preset)
        self.widgets: dict[str, QWidget] = {}
        basic = QFormLayout()
        basic.setContentsMargins(0, 0, 0, 0)
        basic.addRow("Preset", self.preset)
        self.advanced = QWidget()
        self.advanced.setVisible(False)
        advanced = QFormLayout(self.advanced)
        advanced.setContentsMargins(0, 0, 0, 0)
        for names, rows in ((BASIC, basic), (ADVANCED, advanced)):
            for name in names:
                widget = self._make_widget(name)
                widget.setToolTip(_tooltip(name))
                label = QLabel(field_doc(name).label, toolTip=widget.toolTip())
                self.widgets[name] = widget
                rows.addRow(label, widget)
        self.advanced_toggle = QToolButton(
            text="Advanced", toolTip="Optimiser and LoRA internals, evaluation and checkpoint "
            "cadence, threads, workers and the training backend",
            checkable=True, arrowType=Qt.ArrowType.RightArrow,
            toolButtonStyle=Qt.ToolButtonStyle.ToolButtonTextBesideIcon, autoRaise=True)
        self.advanced_toggle.toggled.connect(self._show_advanced)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(basic)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced)
        layout.addStretch(1)
        self.widgets["task"].currentTextChanged.connect(lambda _: self._enable_for_task())
        self._hint_label_words([])
        self.set_config(self.base)

    def _make_widget(self, name: str) -> QWidget:
        hint = _hint(name)
        if name in CHOICES:
            widget = QComboBox()
            widget.addItems(list(CHOICES[name]))
            widget.currentTextChanged.connect(self.sig_settings_changed)
            wheel_only_when_focused(widget)
        elif hint is bool:
            widget = QCheckBox()
            widget.toggled.connect(self.sig_settings_changed)
        elif hint is int:
            widget = QSpinBox(minimum=0, maximum=10_000_000)
            widget.valueChanged.connect(self.sig_settings_changed)
            wheel_only_when_focused(widget)
        else:
            widget = QLineEdit()
            widget.textChanged.connect(self.sig_settings_changed)
        return widget

    def _show_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def set_config(self, config: TrainConfig) -> None:
        self.base = copy.deepcopy(config)
        self._followed = None  # the loaded task is checked against the data once more
        for name in self.widgets:
            self._show(name, get_field(config, name))

    def _show(self, name: str, value: typing.Any) -> None:
        widget = self.widgets[name]
        if isinstance(widget, QComboBox):
            widget.setCurrentText(str(value))
        elif isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, QSpinBox):
            widget.setValue(int(value))
        elif name == "label_words":
            # Empty shows the placeholder: what the engine infers from the labels.
            widget.setText(json.dumps(value, ensure_ascii=False) if value else "")
        elif name == "prompt_template":
            widget.setText(value.replace("\\", "\\\\").replace("\n", "\\n"))
        else:
            widget.setText(f"{value:g}" if isinstance(value, float) else str(value))

    def follow_dataset(self, inspection: dict) -> None:
        """Take the task the dataset's inspection found (DatasetPreview.sig_inspected): a task
        the rows cannot train is switched to theirs (auto already follows them), and an SFT
        dataset greys out the classification-only fields. The user may change it afterwards."""
        detected = str(inspection.get("task") or "")
        data = (inspection.get("path"), inspection.get("schema"))
        task = self.widgets["task"]
        if detected and data != self._followed and task.currentText() not in ("auto", detected):
            task.setCurrentText(detected)
        self._followed = data if detected else None
        self.detected_task = detected
        self._hint_label_words(inspection.get("label_words") or [])
        self._enable_for_task()

    def _hint_label_words(self, inferred: list[str]) -> None:
        # Shown while the field is empty: what the engine will use then.
        self.widgets["label_words"].setPlaceholderText(
            f"{json.dumps(inferred, ensure_ascii=False)} (from the labels)" if inferred
            else "inferred when the labels are words")

    def _enable_for_task(self) -> None:
        task = self.widgets["task"].currentText()
        classification = (self.detected_task if task == "auto" else task) != "sft"
        for name in CLASSIFICATION_ONLY:
            self.widgets[name].setEnabled(classification)

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
        if isinstance(widget, QCheckBox):
            return widget.isChecked()
        if isinstance(widget, QSpinBox):
            return widget.value()
        text = widget.text()
        # The label for the user, the field name for whoever reads the YAML or the log.
        named = f"{field_doc(name).label} ({name})"
        if name == "label_words":
            try:
                words = json.loads(text or "[]")
            except json.JSONDecodeError:
                words = None
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise ValueError(f'{named}: {text!r} is not a JSON list of strings, e.g. [" bad", " good"]')
            return words
        if name == "prompt_template":
            return text.replace("\\n", "\n").replace("\\\\", "\\")
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{named}: {text!r} is not a number") from None
