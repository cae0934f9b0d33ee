"""The model picker: a line edit (typed, dropped, browsed or one of the recent models) and the
probe's summary of the model it names."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.json_tool import JsonTool
from app.run_state import RunState
from app.widgets.dataset_preview import dropped_path
from app.widgets.elided import ElidedLabel

RECENT_MODELS = 8
# The summary's height in lines, the same before, during and after a probe (the widgets below
# it stay under the pointer); a longer message is elided, whole in the tooltip.
SUMMARY_LINES = 3


class ModelEdit(QLineEdit):
    """The model line edit; a dropped folder or .gguf file fills it."""

    sig_path_dropped = Signal(str)
    """A folder or .gguf file was dropped on the edit: its path."""

    def __init__(self) -> None:
        super().__init__(placeholderText="folder, .gguf file, hub id, or 'default'")
        self.setAcceptDrops(True)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        path = dropped_path(event)
        if path is not None and (path.is_dir() or path.suffix.lower() == ".gguf"):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = dropped_path(event)
        if path is not None and (path.is_dir() or path.suffix.lower() == ".gguf"):
            event.acceptProposedAction()
            self.setText(str(path))
            self.sig_path_dropped.emit(str(path))


class ModelPicker(QWidget):
    """The Model row (edit, Browse…, Recent) over the probe's summary of the model."""

    sig_model_read = Signal(dict)
    """The probe read the model the edit names: its answer (folder, profile, parameters…)."""

    def __init__(self, settings: QSettings, run: RunState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.run = run
        self.probed = ""  # the reference last sent to the probe
        self.ready = False  # the probe read self.probed
        self.folder = ""  # where the probe found it (a .gguf is converted to a folder)
        self.edit = ModelEdit()
        self.edit.sig_path_dropped.connect(self.probe_model)
        self.edit.editingFinished.connect(lambda: self.probe_model(self.edit.text()))
        self.probe = JsonTool("probe", self)
        self.probe.sig_answered.connect(self._show_probe)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.recent_button = QToolButton(text="Recent",
                                         popupMode=QToolButton.ToolButtonPopupMode.InstantPopup)
        self.recent_button.setMenu(QMenu(self.recent_button))
        self.recent_button.menu().aboutToShow.connect(self._fill_recent_menu)
        self.summary = ElidedLabel(lines=SUMMARY_LINES)
        self._say("Pick a model: a folder, a .gguf file, a hub id or 'default'")

        row = QHBoxLayout()
        row.addWidget(QLabel("Model"))
        row.addWidget(self.edit, 1)
        row.addWidget(browse)
        row.addWidget(self.recent_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)  # its rows line up with the box's other rows
        layout.addLayout(row)
        layout.addWidget(self.summary)

    def config_folder(self) -> str:
        """Where the named model's config.json is: the probe's folder once it has read that
        model, else the edit's text (a local folder is sized before any probe)."""
        reference = self.edit.text().strip()
        return self.folder if self.ready and reference == self.probed else reference

    def probe_model(self, reference: str) -> None:
        """Describe the model (architecture, size, context) from a probe process."""
        reference = reference.strip()
        if reference == self.probed:
            return
        if not reference or self.run.state != "idle":
            return  # during a run a probe would compete with training for the cores
        self.probed = reference
        self.ready = False
        self._say(f"{Path(reference).name}: reading the model…")
        self.probe.run(reference)

    def _show_probe(self, result: dict) -> None:
        if result.get("reference", self.probed) != self.probed:
            return  # an answer about a model the user has moved away from
        if "architecture" not in result:
            errors = result.get("errors") or [{"message": "the model could not be read"}]
            self._say(str(errors[0].get("message")), error=True)
            return
        parameters = result.get("parameters") or 0
        size = f"{parameters / 1e9:.2f} B" if parameters >= 1e9 else f"{parameters / 1e6:.1f} M"
        self._say(
            f"{result['architecture']} · {size} parameters · context {result.get('context_length')}"
            f" · {'chat template' if result.get('chat_template') else 'no chat template'}"
            f" · weights {result.get('stored_dtype')}")
        self.ready, self.folder = True, str(result.get("folder", ""))
        self.sig_model_read.emit(result)

    def _say(self, text: str, error: bool = False) -> None:
        """Show `text` in the summary, red when it says what is wrong; whole in the tooltip."""
        self.summary.setText(text)
        self.summary.setToolTip(text)
        self.summary.setStyleSheet("color: #b00" if error else "")

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder")
        if not folder:
            folder, _ = QFileDialog.getOpenFileName(self, "GGUF model", "", "GGUF (*.gguf)")
        if folder:
            self.edit.setText(folder)
            self.probe_model(folder)

    def recent_models(self) -> list[str]:
        value = self.settings.value("recent_models", [])
        return [value] if isinstance(value, str) else list(value or [])

    def remember(self, model: str) -> None:
        """Put `model` first in the Recent menu."""
        recent = [model] + [m for m in self.recent_models() if m != model]
        self.settings.setValue("recent_models", recent[:RECENT_MODELS])

    def _fill_recent_menu(self) -> None:
        menu = self.recent_button.menu()
        menu.clear()
        for model in self.recent_models() or ["default"]:
            menu.addAction(model, lambda m=model: (self.edit.setText(m), self.probe_model(m)))
