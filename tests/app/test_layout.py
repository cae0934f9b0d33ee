"""The window's layout holds still: long texts never widen it, the probe summary never moves the
rows below it, the left panel never collapses, and the window comes back as it was left. And the
Runs tab: delete, rename, open folder, runs that failed to start, and the run Export and the
Playground are given."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from conftest import ENGINE_TIMEOUT_MS

pytest.importorskip("pytestqt")

from PySide6.QtCore import QFile, QPoint, QSize, QUrl  # noqa: E402
from PySide6.QtGui import QDesktopServices  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMessageBox,
)

from app.status_line import StatusMessage  # noqa: E402

SMALL_SCREEN_WIDTH = 1366  # the narrowest laptop screen the window must fit
LONG_SENTENCE = "the engine says something long about what went wrong and what to do " * 20
LONG_PATH = "/home/someone/models" + "/a-folder-with-a-long-name" * 40


def _run_folder(root: Path, name: str, *, metrics: bool = True, adapter: bool = False,
                age_seconds: float = 0.0) -> Path:
    """A run folder as the engine leaves it: config.yaml, then metrics.jsonl and adapter/ as
    far as the run got; `age_seconds` back-dates it (the Runs tab lists the newest first)."""
    folder = root / name
    folder.mkdir(parents=True)
    config = folder / "config.yaml"
    config.write_text(f"model: tiny\ndataset: /data/x.jsonl\noutput_dir: {folder}\n")
    if metrics:
        (folder / "metrics.jsonl").write_text(json.dumps({"type": "metrics", "step": 1, "loss": 1.0}) + "\n")
    if adapter:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text("{}")
    stamp = time.time() - age_seconds
    os.utime(config, (stamp, stamp))
    return folder


def _settle() -> None:
    """Let the posted layout requests reach the window (that is when it would grow)."""
    for _ in range(3):
        QApplication.processEvents()


def _select(window, name: str) -> None:
    window.runs_list.clearSelection()
    for row in range(window.runs_list.count()):
        item = window.runs_list.item(row)
        if item.text().startswith(f"{name}  "):
            item.setSelected(True)
            return
    raise AssertionError(f"{name} is not listed")


def _names(window) -> list[str]:
    return [window.runs_list.item(row).text().split("  ")[0] for row in range(window.runs_list.count())]


# ---- the window never grows ------------------------------------------------------------------

def test_long_texts_never_widen_the_window(make_window, tmp_path):
    _run_folder(tmp_path / "runs", "run-" + "x" * 240, adapter=True)
    window = make_window()
    _settle()
    available = window.screen().availableGeometry().width()
    assert window.width() <= available
    # The panels of this window's own making elide or wrap their texts: the longest ask for no
    # more room than the shortest did.
    own = (window.model_picker, window.runs_tab)
    own_widths = [panel.minimumSizeHint().width() for panel in own]
    window.runs_tab.runs_root = Path(LONG_PATH)
    window.runs_tab.refresh()
    for text in (LONG_SENTENCE, LONG_PATH):
        window.model_picker._show_probe({"reference": window.model_picker.probed,
                                         "errors": [{"message": text}]})
        _settle()
        assert [panel.minimumSizeHint().width() for panel in own] == own_widths
    # Every label and line edit of the window, its own or another panel's: the window keeps its
    # width whichever tab is in front. (The line edits get the path: most name files, which
    # their panels look up as they change.)
    for edit in window.findChildren(QLineEdit):
        if not isinstance(edit.parent(), (QAbstractSpinBox, QComboBox)):
            edit.setText(LONG_PATH)
    for text in (LONG_SENTENCE, LONG_PATH):
        window.status.show("input", StatusMessage(text, error=True))
        for label in window.findChildren(QLabel):
            label.setText(text)
        for index in range(window.tabs.count()):
            window.tabs.setCurrentIndex(index)
            _settle()
            assert window.width() <= available, window.tabs.tabText(index)
            assert window.minimumSizeHint().width() <= SMALL_SCREEN_WIDTH


def test_the_left_panel_cannot_be_collapsed(make_window):
    window = make_window()
    splitter = window.centralWidget()
    left = splitter.widget(0)
    splitter.moveSplitter(0, 1)
    _settle()
    assert splitter.sizes()[0] >= left.minimumWidth() >= 300  # Start and the form stay usable
    assert not splitter.isCollapsible(0) and left.isVisible()
    assert window.start_button.isVisible() and window.start_button.width() > 0


# ---- the probe summary keeps its place -------------------------------------------------------

def test_the_probe_summary_keeps_its_height(make_window, qtbot, tiny_model, tmp_path):
    window = make_window()
    _settle()

    def place() -> tuple[int, int]:
        below = window.dataset_edit.mapTo(window, QPoint(0, 0)).y()
        return window.model_summary.height(), below

    before = place()
    missing = tmp_path / ("a-model-folder-that-is-not-there-" * 6) / "model"
    for reference in (str(missing), str(tiny_model)):
        with qtbot.waitSignal(window.model_probe.sig_answered, timeout=ENGINE_TIMEOUT_MS):
            window.model_picker.probe_model(reference)
            _settle()
            assert "reading the model" in window.model_summary.text()
            assert place() == before  # while probing
        _settle()
        assert place() == before, window.model_summary.text()  # after
    assert "LlamaForCausalLM" in window.model_summary.text()
    window.model_picker.probe_model(str(missing))  # the long error once more, from the engine
    qtbot.waitUntil(lambda: "reading the model" not in window.model_summary.text(),
                    timeout=ENGINE_TIMEOUT_MS)
    _settle()
    assert place() == before
    assert window.model_summary.toolTip() == window.model_summary.text()  # whole in the tooltip


# ---- the window comes back as it was left ----------------------------------------------------

def test_geometry_splitter_model_dataset_and_settings_survive_a_restart(
        make_window, tiny_model, classification_data):
    window = make_window()
    window.resize(760, 560)
    window.centralWidget().setSizes([400, 340])
    _settle()
    sizes = window.centralWidget().sizes()
    window.model_edit.setText(str(tiny_model))
    window.setup.set_dataset(str(classification_data))
    window.form.widgets["steps"].setValue(77)
    window.form.widgets["optimizer.lr"].setText("0.0123")
    window.close()

    again = make_window()
    _settle()
    assert again.size() == QSize(760, 560)
    assert again.centralWidget().sizes() == sizes
    assert again.model_edit.text() == str(tiny_model)
    assert again.dataset_edit.text() == str(classification_data)
    assert again.form.widgets["steps"].value() == 77
    config = again.setup.current_config()
    assert config.steps == 77 and config.optimizer.lr == pytest.approx(0.0123)
    assert config.model == str(tiny_model) and config.dataset == str(classification_data)


def test_the_first_launch_fits_the_screen(make_window):
    window = make_window()
    available = window.screen().availableGeometry()
    assert window.width() <= available.width() and window.height() <= available.height()


# ---- the Runs tab ----------------------------------------------------------------------------

@pytest.fixture
def trash(tmp_path, monkeypatch) -> Path:
    """The desktop's trash, in the test's folder (QFile.moveToTrash follows XDG_DATA_HOME)."""
    data_home = tmp_path / "data-home"
    data_home.mkdir()
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    return data_home / "Trash" / "files"


def _answer(monkeypatch, *answers: QMessageBox.StandardButton) -> list[str]:
    """The confirmation dialogs answer `answers` in turn; their questions are recorded."""
    asked: list[str] = []
    queue = list(answers)

    def question(parent, title, text, *args):
        asked.append(text)
        return queue.pop(0)

    monkeypatch.setattr(QMessageBox, "question", question)
    return asked


def _warnings(monkeypatch) -> list[str]:
    said: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text, *args: said.append(text))
    return said


def test_delete_moves_a_run_to_the_trash_after_asking(make_window, tmp_path, trash, monkeypatch):
    root = tmp_path / "runs"
    kept = _run_folder(root, "run-kept", age_seconds=60)
    gone = _run_folder(root, "run-gone")
    (root / "run-gone.yaml").write_text(f"output_dir: {gone}\n")  # the launch config beside it
    window = make_window()
    _select(window, "run-gone")
    asked = _answer(monkeypatch, QMessageBox.StandardButton.No)
    window.runs_tab.delete_action.trigger()
    assert asked and "run-gone" in asked[0] and "trash" in asked[0]
    assert gone.is_dir() and _names(window) == ["run-gone", "run-kept"]  # "No": nothing moves

    _select(window, "run-gone")
    _answer(monkeypatch, QMessageBox.StandardButton.Yes)
    window.runs_tab.delete_action.trigger()
    assert not gone.exists() and not (root / "run-gone.yaml").exists()
    assert (trash / "run-gone" / "config.yaml").is_file() and (trash / "run-gone.yaml").is_file()
    assert _names(window) == ["run-kept"] and kept.is_dir()


def test_delete_where_there_is_no_trash_asks_again(make_window, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    folder = _run_folder(root, "run-a")
    monkeypatch.setattr(QFile, "moveToTrash", lambda file: False)
    window = make_window()
    _select(window, "run-a")
    asked = _answer(monkeypatch, QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.No)
    window.runs_tab.delete_action.trigger()
    assert len(asked) == 2 and "for good" in asked[1] and folder.is_dir()
    _select(window, "run-a")
    _answer(monkeypatch, QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Yes)
    window.runs_tab.delete_action.trigger()
    assert not folder.exists() and window.runs_list.count() == 0


def test_rename_moves_the_folder_and_refuses_taken_or_invalid_names(make_window, tmp_path,
                                                                   monkeypatch):
    root = tmp_path / "runs"
    folder = _run_folder(root, "run-1")
    (folder / "checkpoints").mkdir()
    (root / "run-1.yaml").write_text(f"model: tiny\noutput_dir: {folder}\n")
    _run_folder(root, "taken", age_seconds=60)
    window = make_window()
    said = _warnings(monkeypatch)
    for refused, reason in (("taken", "exists"), ("a/b", "cannot name"), ("..", "cannot name"),
                            (".hidden", "cannot name"), ("ends with a dot.", "cannot name")):
        _select(window, "run-1")
        monkeypatch.setattr(QInputDialog, "getText", lambda *args, name=refused, **kw: (name, True))
        window.runs_tab.rename_action.trigger()
        assert said and reason in said[-1], (refused, said)
        assert folder.is_dir() and sorted(_names(window)) == ["run-1", "taken"]
    _select(window, "run-1")
    monkeypatch.setattr(QInputDialog, "getText", lambda *args, **kw: ("sentiment v2", True))
    window.runs_tab.rename_action.trigger()
    renamed = root / "sentiment v2"
    assert not folder.exists() and (renamed / "checkpoints").is_dir()
    assert sorted(_names(window)) == ["sentiment v2", "taken"]
    # Resume continues the run in its new place: the configs point there.
    for config in (renamed / "config.yaml", root / "sentiment v2.yaml"):
        assert yaml.safe_load(config.read_text())["output_dir"] == str(renamed)


def test_open_folder_and_the_context_menu(make_window, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    folder = _run_folder(root, "run-1", adapter=True)
    window = make_window()
    opened: list[QUrl] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    _select(window, "run-1")
    menu = window.runs_tab.context_menu()
    actions = {action.text(): action for action in menu.actions()}
    assert {"Overlay selected", "Resume selected", "Rename…", "Delete…", "Open folder"} <= set(actions)
    assert all(action.isEnabled() for action in actions.values())
    actions["Open folder"].trigger()
    assert opened == [QUrl.fromLocalFile(str(folder))]


def test_folders_that_failed_to_start_are_not_runs(make_window, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _run_folder(root, "run-ok", age_seconds=60)
    _run_folder(root, "run-failed", metrics=False)
    (root / "not-a-run").mkdir(parents=True)  # no config at all: not listed
    window = make_window()
    texts = [window.runs_list.item(row).text() for row in range(window.runs_list.count())]
    assert len(texts) == 2 and not any("broken" in text or "not-a-run" in text for text in texts)
    assert "[failed to start]" in texts[0] and "best acc" not in texts[0]
    _select(window, "run-failed")
    menu = {action.text(): action.isEnabled() for action in window.runs_tab.context_menu().actions()}
    assert menu["Delete…"] and not menu["Overlay selected"] and not menu["Resume selected"]
    assert not menu["Rename…"] and not window.resume_selected_button.isEnabled()
    opened: list = []
    window.runs_tab.sig_open_requested.connect(opened.append)
    window.runs_list.itemDoubleClicked.emit(window.runs_list.selectedItems()[0])
    assert opened == []  # nothing to overlay
    _answer(monkeypatch, QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Yes)
    monkeypatch.setattr(QFile, "moveToTrash", lambda file: False)
    window.runs_tab.delete_action.trigger()
    assert _names(window) == ["run-ok"]


def test_export_and_playground_get_the_newest_run_with_an_adapter(make_window, tmp_path,
                                                                  monkeypatch):
    root = tmp_path / "runs"
    with_adapter = _run_folder(root, "run-finished", adapter=True, age_seconds=120)
    _run_folder(root, "run-stopped", age_seconds=60)  # newer, no adapter
    _run_folder(root, "run-failed", metrics=False)  # newest, failed to start
    window = make_window()
    for panel in (window.export_panel, window.playground):
        assert panel.isEnabled() and panel.run_dir.text() == str(with_adapter)
    # Opening runs without an adapter leaves the panels on the one with it.
    _select(window, "run-stopped")
    window.open_runs(window.runs_list.selectedItems())
    assert window.export_panel.run_dir.text() == window.playground.run_dir.text() == str(with_adapter)
    # Its deletion leaves no run with an adapter: both are disabled.
    _select(window, "run-finished")
    _answer(monkeypatch, QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Yes)
    monkeypatch.setattr(QFile, "moveToTrash", lambda file: False)
    window.runs_tab.delete_action.trigger()
    assert not window.export_panel.isEnabled() and not window.playground.isEnabled()


def test_export_and_playground_are_disabled_without_a_run_with_an_adapter(make_window, tmp_path):
    _run_folder(tmp_path / "runs", "run-stopped")
    window = make_window()
    assert not window.export_panel.isEnabled() and not window.playground.isEnabled()
    assert not window.playground.send_button.isEnabled()
    assert not any(button.isEnabled() for button in window.export_panel.buttons.values())
    # A run with an adapter from elsewhere, given to a panel itself, brings it back.
    elsewhere = _run_folder(tmp_path / "elsewhere", "run-cli", adapter=True)
    window.export_panel.set_run(elsewhere)
    assert window.export_panel.isEnabled() and window.export_panel.buttons["gguf"].isEnabled()
    assert not window.playground.isEnabled()
