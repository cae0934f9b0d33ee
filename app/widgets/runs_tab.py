"""The Runs tab: the run folders under the runs root, to overlay their curves or resume one."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.runs import list_runs


class RunsTab(QWidget):
    """One line per run folder; each item holds its folder (UserRole)."""

    sig_open_requested = Signal(list)
    """Show these runs' curves (their list items)."""
    sig_resume_requested = Signal(list)
    """Continue the run of the selected items (one) from its last checkpoint."""

    def __init__(self, runs_root: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs_root = runs_root
        self.runs_list = QListWidget()
        self.runs_list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.runs_list.itemDoubleClicked.connect(lambda item: self.sig_open_requested.emit([item]))
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        compare = QPushButton("Overlay selected")
        compare.clicked.connect(lambda: self.sig_open_requested.emit(self.runs_list.selectedItems()))
        self.resume_selected_button = QPushButton("Resume selected")
        self.resume_selected_button.clicked.connect(
            lambda: self.sig_resume_requested.emit(self.runs_list.selectedItems()))
        self.runs_root_label = QLabel()
        buttons = QHBoxLayout()
        buttons.addWidget(self.runs_root_label, 1)
        buttons.addWidget(refresh)
        buttons.addWidget(compare)
        buttons.addWidget(self.resume_selected_button)
        layout = QVBoxLayout(self)
        layout.addLayout(buttons)
        layout.addWidget(self.runs_list, 1)

    def refresh(self) -> None:
        self.runs_root_label.setText(f"Runs in {self.runs_root}")
        self.runs_list.clear()
        for info in list_runs(self.runs_root):
            best = f"{info.best_accuracy:.1%}" if info.best_accuracy is not None else "–"
            item = QListWidgetItem(f"{info.path.name}  [{info.status}]  {info.model} · "
                                   f"{info.dataset} · best acc {best} · step {info.last_step} · "
                                   f"{info.date}")
            item.setData(Qt.ItemDataRole.UserRole, str(info.path))
            self.runs_list.addItem(item)


def folder_of(item: QListWidgetItem) -> Path:
    """The run folder a Runs tab item stands for."""
    return Path(item.data(Qt.ItemDataRole.UserRole))
