"""The settings form, the dataset preview and the device panel as a user meets them: the wheel,
labels and tooltips, the Advanced group, the task following the data, and warnings."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
from conftest import DEMO_DATA

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QWheelEvent  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QFormLayout,
    QScrollArea,
)

from app.widgets.dataset_preview import DatasetPreview  # noqa: E402
from app.widgets.device_panel import GIB, DevicePanel  # noqa: E402
from app.widgets.settings_form import FIELDS, SettingsForm, name_the_controls  # noqa: E402
from engine.api.config import TrainConfig, field_doc  # noqa: E402

INSPECT_TIMEOUT_MS = 60_000


def _wheel_down(widget) -> QWheelEvent:
    """One notch of the wheel over `widget`'s centre."""
    centre = QPointF(widget.rect().center())
    event = QWheelEvent(centre, QPointF(widget.mapToGlobal(centre)), QPoint(0, 0), QPoint(0, -120),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)
    return event


def test_the_wheel_changes_only_a_focused_field(qtbot):
    form = SettingsForm()
    scroll = QScrollArea(widgetResizable=True)
    scroll.setWidget(form)
    scroll.resize(480, 160)  # far shorter than the form, as the left panel is
    qtbot.addWidget(scroll)
    scroll.show()
    qtbot.waitExposed(scroll)
    steps, task = form.widgets["steps"], form.widgets["task"]
    assert steps.value() == 200 and not steps.hasFocus()
    for widget, value in ((steps, steps.value), (task, task.currentText)):
        before = value()
        # Left unaccepted: Qt hands a wheel event from the mouse on to the parents, so the
        # scroll area scrolls. (An event sent from a test stops here: Qt propagates only the
        # window system's own.)
        assert not _wheel_down(widget).isAccepted()
        assert value() == before

    scroll.activateWindow()
    steps.setFocus()
    qtbot.waitUntil(steps.hasFocus)
    assert _wheel_down(steps).isAccepted()
    assert steps.value() == 199  # a focused spin box takes the wheel as before


def test_every_spin_box_and_combo_box_waits_for_the_focus(qtbot, tmp_path):
    form, preview = SettingsForm(), DatasetPreview()
    device = DevicePanel(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    for widget in (form, preview, device):
        qtbot.addWidget(widget)
        fields = widget.findChildren(QAbstractSpinBox) + widget.findChildren(QComboBox)
        assert fields
        for field in fields:
            assert field.focusPolicy() == Qt.FocusPolicy.StrongFocus, field
            before = field.text() if isinstance(field, QAbstractSpinBox) else field.currentText()
            _wheel_down(field)
            after = field.text() if isinstance(field, QAbstractSpinBox) else field.currentText()
            assert after == before, field


def _leaf_fields(cls: type, prefix: str = "") -> typing.Iterator[str]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            yield from _leaf_fields(hints[field.name], f"{prefix}{field.name}.")
        else:
            yield prefix + field.name


def test_every_field_speaks_in_words_the_config_holds(qtbot):
    """Labels and tooltips are the config's own, one copy: engine.api.config.field_doc."""
    for name in _leaf_fields(TrainConfig):
        doc = field_doc(name)
        assert doc.label and doc.label != name and len(doc.help) > 10, name
    form = SettingsForm()
    qtbot.addWidget(form)
    layouts = form.findChildren(QFormLayout)
    assert set(FIELDS) == set(form.widgets) and {"eval_fraction", "skip_bad_rows"} <= set(FIELDS)
    for name, widget in form.widgets.items():
        label = next(layout.labelForField(widget) for layout in layouts if layout.labelForField(widget))
        assert label.text() == field_doc(name).label, name
        assert "_" not in label.text() and "." not in label.text(), name  # no raw key
        assert widget.toolTip().startswith(field_doc(name).help), name
    # The tooltip is the help itself; a one-line text field adds how to type its value.
    assert form.widgets["optimizer.q"].toolTip() == field_doc("optimizer.q").help
    assert "line break" in form.widgets["prompt_template"].toolTip()


def test_advanced_settings_are_collapsed_until_asked_for(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    form.show()
    basic, advanced = form.widgets["steps"], form.widgets["optimizer.q"]
    assert basic.isVisible() and not advanced.isVisible()
    assert not form.widgets["lora.rank"].isVisible() and not form.widgets["checkpoint_every"].isVisible()
    qtbot.mouseClick(form.advanced_toggle, Qt.MouseButton.LeftButton)
    assert advanced.isVisible()
    qtbot.mouseClick(form.advanced_toggle, Qt.MouseButton.LeftButton)
    assert not advanced.isVisible()


def test_the_split_and_bad_rows_controls_reach_the_config(qtbot):
    form = SettingsForm()
    qtbot.addWidget(form)
    assert form.widgets["eval_fraction"].text() == "0.1"
    form.widgets["eval_fraction"].setText("0.25")
    form.widgets["skip_bad_rows"].setChecked(True)
    config = form.config()
    assert config.eval_fraction == 0.25 and config.skip_bad_rows
    form.widgets["eval_fraction"].setText("a quarter")
    with pytest.raises(ValueError, match=r"Held-out share \(eval_fraction\)"):
        form.config()


def _inspected(qtbot, preview: DatasetPreview, path: Path | None = None) -> dict:
    with qtbot.waitSignal(preview.sig_inspected, timeout=INSPECT_TIMEOUT_MS) as inspected:
        preview.show_file(path) if path else preview.inspect()
    return inspected.args[0]


def test_the_task_follows_the_dataset_and_the_user_has_the_last_word(qtbot, tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} + 1?"},
        {"role": "assistant", "content": f"{i + 1}"}]}) + "\n" for i in range(8)))
    preview, form = DatasetPreview(), SettingsForm()
    for widget in (preview, form):
        qtbot.addWidget(widget)
    preview.sig_inspected.connect(form.follow_dataset)
    task, words = form.widgets["task"], form.widgets["label_words"]

    form.widgets["task"].setCurrentText("classification")  # e.g. left by a loaded YAML
    assert _inspected(qtbot, preview, chat)["schema"] == "messages"
    assert task.currentText() == "sft" and form.config().task == "sft"
    assert not words.isEnabled() and not form.widgets["prompt_template"].isEnabled()

    task.setCurrentText("classification")  # the user overrides it …
    assert words.isEnabled()
    _inspected(qtbot, preview)  # … and the same data inspected again (a model was picked) keeps it
    assert task.currentText() == "classification"

    result = _inspected(qtbot, preview, DEMO_DATA)
    assert result["task"] == "classification" and result["label_words"] == [" negative", " positive"]
    assert task.currentText() == "classification" and words.isEnabled()
    # The words the engine infers from the labels show in the empty field; none is imposed.
    assert words.text() == "" and '" negative", " positive"' in words.placeholderText()

    task.setCurrentText("auto")  # auto already follows the data: it stays auto
    _inspected(qtbot, preview, chat)
    assert task.currentText() == "auto" and not words.isEnabled()
    assert not preview.inspection.is_running()


def test_a_file_that_is_no_dataset_makes_the_preview_block_the_start(qtbot, tmp_path):
    image = tmp_path / "photo.jsonl"  # a PNG renamed
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16)
    preview = DatasetPreview()
    qtbot.addWidget(preview)
    assert preview.blocking_reason == ""
    with qtbot.waitSignal(preview.sig_validity_changed, timeout=INSPECT_TIMEOUT_MS,
                          check_params_cb=bool) as changed:
        preview.show_file(image)
    assert "photo.jsonl" in changed.args[0] and "binary" in changed.args[0]
    assert preview.blocking_reason == changed.args[0]
    assert "binary" in preview.summary.text()

    with qtbot.waitSignal(preview.sig_validity_changed, check_params_cb=lambda r: r == ""):
        preview.show_file(DEMO_DATA)
    _inspected(qtbot, preview)
    assert preview.blocking_reason == ""
    assert not preview.inspection.is_running()


def test_messages_name_the_windows_controls():
    shown = name_the_controls('config field "dataset" is empty; set it in the YAML or as dataset=…')
    assert "YAML" not in shown and shown.endswith("(in this window: Dataset)")
    shown = name_the_controls('config field "optimizer.q" is 0; allowed: >= 1; lower batch_size')
    assert '"optimizer.q" is 0' in shown  # the engine's words stay
    assert shown.endswith("(in this window: Perturbations per step (q), Batch size)")
    shown = name_the_controls("bad.jsonl: 1 of 2 rows are malformed; set skip_bad_rows=true")
    assert shown.endswith("(in this window: Skip malformed rows)")
    shown = name_the_controls("(resume it with `python -m engine train CONFIG --resume`)")
    assert "the Resume button" in shown and "python -m" not in shown
    # Fields the window has no control for, and plain words, are left as they are.
    assert name_the_controls("each worker waits; eval_rows is 0") == "each worker waits; eval_rows is 0"


def test_a_budget_above_the_machines_ram_is_named(qtbot, tmp_path):
    device = DevicePanel(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(device)
    ram = device.hardware.memory_bytes / GIB
    assert f"{ram:.1f} GiB of RAM" in device.budget.toolTip()
    device.budget.setValue(min(ram, 4) / 2)
    assert not device.ram_warning.isVisibleTo(device)
    device.budget.setValue(ram + 1)
    assert device.ram_warning.isVisibleTo(device)
    assert f"above this machine's {ram:.1f} GiB of RAM" in device.ram_warning.text()
