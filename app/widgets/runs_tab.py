"""The Runs tab: the run folders under the runs root, to overlay their curves, resume one,
rename or delete them, or open one's folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from PySide6.QtCore import QFile, QPoint, Qt, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QPalette
from PySide6.QtWidgets import (
    QHBoxLayout,
    QInputDialog,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.run_state import RunState
from app.runs import FAILED_TO_START, has_adapter, launch_config, list_runs, name_problem, rename_run
from app.widgets.elided import ElidedLabel

STATUS_ROLE = Qt.ItemDataRole.UserRole + 1  # the run's status as listed (RunInfo.status, "running")


class RunsTab(QWidget):
    """One line per run folder; each item holds its folder (UserRole) and status (STATUS_ROLE).
    A folder whose run failed to start is listed greyed, to be deleted; the folder of the run in
    progress is neither renamed nor deleted."""

    sig_open_requested = Signal(list)
    """Show these runs' curves (their list items)."""
    sig_resume_requested = Signal(list)
    """Continue the run of the selected items (one) from its last checkpoint."""
    sig_runs_listed = Signal()
    """The list was read from the runs root again (a run ended, was renamed or deleted)."""

    def __init__(self, runs_root: Path, run: RunState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs_root = runs_root
        self.run = run
        self.runs_list = QListWidget()
        self.runs_list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.runs_list.itemDoubleClicked.connect(lambda item: self._open([item]))
        self.runs_list.itemSelectionChanged.connect(self._update_actions)
        self.runs_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.runs_list.customContextMenuRequested.connect(self._show_context_menu)
        run.sig_state_changed.connect(lambda _: self._update_actions())
        self.open_action = QAction("Overlay selected", self)
        self.open_action.triggered.connect(lambda: self._open(self.runs_list.selectedItems()))
        self.resume_action = QAction("Resume selected", self)
        self.resume_action.triggered.connect(
            lambda: self.sig_resume_requested.emit(self._runs(self.runs_list.selectedItems())))
        self.rename_action = QAction("Rename…", self)
        self.rename_action.triggered.connect(self.rename_selected)
        self.delete_action = QAction("Delete…", self)
        self.delete_action.triggered.connect(self.delete_selected)
        self.folder_action = QAction("Open folder", self)
        self.folder_action.triggered.connect(self.open_selected_folder)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh)
        self.runs_root_label = ElidedLabel()
        header = QHBoxLayout()
        header.addWidget(self.runs_root_label, 1)
        header.addWidget(refresh)
        self.resume_selected_button = _button(self.resume_action)
        buttons = QHBoxLayout()
        for action in self.run_actions():
            buttons.addWidget(self.resume_selected_button if action is self.resume_action
                              else _button(action))
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addLayout(buttons)
        layout.addWidget(self.runs_list, 1)

    def refresh(self) -> None:
        self.runs_root_label.setText(f"Runs in {self.runs_root}")
        self.runs_root_label.setToolTip(str(self.runs_root))
        self.runs_list.clear()
        for info in list_runs(self.runs_root):
            status = "running" if self._busy(info.path) else info.status
            text = f"{info.path.name}  [{status}]  {info.model} · {info.dataset} · "
            if status != FAILED_TO_START:
                best = f"{info.best_accuracy:.1%}" if info.best_accuracy is not None else "–"
                text += f"best acc {best} · {info.step_text} · "
            item = QListWidgetItem(text + info.date)
            item.setData(Qt.ItemDataRole.UserRole, str(info.path))
            item.setData(STATUS_ROLE, status)
            item.setToolTip(str(info.path))
            if status == FAILED_TO_START:
                item.setForeground(self.palette().color(QPalette.ColorGroup.Disabled,
                                                        QPalette.ColorRole.Text))
            self.runs_list.addItem(item)
        self._update_actions()
        self.sig_runs_listed.emit()

    def adapter_runs(self) -> list[Path]:
        """The listed runs that saved an adapter, newest first."""
        return [folder for folder in map(folder_of, self._items()) if has_adapter(folder)]

    def context_menu(self) -> QMenu:
        """The menu of the selected runs' actions, as a right click opens it."""
        menu = QMenu(self)
        menu.addActions(self.run_actions())
        return menu

    def _show_context_menu(self, position: QPoint) -> None:
        menu = self.context_menu()
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        menu.popup(self.runs_list.viewport().mapToGlobal(position))

    def run_actions(self) -> list[QAction]:
        """What the buttons and the context menu offer, in their order."""
        return [self.open_action, self.resume_action, self.rename_action, self.delete_action,
                self.folder_action]

    def _update_actions(self) -> None:
        items = self.runs_list.selectedItems()
        runs = self._runs(items)
        none_live = not any(self._busy(folder_of(item)) for item in items)
        self.open_action.setEnabled(bool(runs))
        self.resume_action.setEnabled(len(items) == len(runs) == 1)
        self.rename_action.setEnabled(len(items) == len(runs) == 1 and none_live)
        self.delete_action.setEnabled(bool(items) and none_live)
        self.folder_action.setEnabled(len(items) == 1)

    # ---- the actions --------------------------------------------------------------------------
    def _open(self, items: list[QListWidgetItem]) -> None:
        runs = self._runs(items)
        if runs:
            self.sig_open_requested.emit(runs)

    def rename_selected(self) -> None:
        """Rename the selected run's folder to a name the user types; a taken or invalid name is
        refused with a message saying why."""
        items = self.runs_list.selectedItems()
        if not self.rename_action.isEnabled() or len(items) != 1:
            return
        folder = folder_of(items[0])
        name, ok = QInputDialog.getText(self, "Rename run", "New name of the run folder:",
                                        text=folder.name)
        name = name.strip()
        if not ok or name == folder.name:
            return
        problem = name_problem(folder, name)
        if problem:
            QMessageBox.warning(self, "Run not renamed", problem)
            return
        try:
            rename_run(folder, name)
        except OSError as exc:
            QMessageBox.warning(self, "Run not renamed",
                                f"cannot rename {folder} to {name}: {exc.strerror or exc}")
        self.refresh()

    def delete_selected(self) -> None:
        """Move the selected run folders and their launch configs to the trash once the user
        agrees; where the disk has no trash, delete them for good if the user agrees to that."""
        folders = [folder_of(item) for item in self.runs_list.selectedItems()]
        if not self.delete_action.isEnabled() or not folders:
            return
        names = ", ".join(folder.name for folder in folders)
        if not _confirm(self, "Delete runs", f"Move {names} to the trash?"):
            return
        paths = [path for folder in folders for path in (folder, launch_config(folder))
                 if path.exists()]
        left = [path for path in paths if not QFile(str(path)).moveToTrash()]
        if left and _confirm(self, "Delete runs for good",
                             f"{', '.join(p.name for p in left)}: this disk has no trash. Delete "
                             "for good? This cannot be undone."):
            try:
                for path in left:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            except OSError as exc:
                QMessageBox.warning(self, "Run not deleted",
                                    f"cannot delete {exc.filename}: {exc.strerror or exc}")
        self.refresh()

    def open_selected_folder(self) -> None:
        """Show the selected run's folder in the file manager."""
        items = self.runs_list.selectedItems()
        if len(items) == 1:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder_of(items[0]))))

    # ---- helpers ------------------------------------------------------------------------------
    def _items(self) -> list[QListWidgetItem]:
        return [self.runs_list.item(row) for row in range(self.runs_list.count())]

    def _runs(self, items: list[QListWidgetItem]) -> list[QListWidgetItem]:
        """The items that are runs (not folders of runs that failed to start)."""
        return [item for item in items if item.data(STATUS_ROLE) != FAILED_TO_START]

    def _busy(self, folder: Path) -> bool:
        """The engine is writing `folder` now."""
        return self.run.state != "idle" and self.run.output_dir == folder


def folder_of(item: QListWidgetItem) -> Path:
    """The run folder a Runs tab item stands for."""
    return Path(item.data(Qt.ItemDataRole.UserRole))


def _button(action: QAction) -> QPushButton:
    """A push button that triggers `action` and follows its enabled state."""
    button = QPushButton(action.text(), enabled=action.isEnabled())
    button.clicked.connect(action.trigger)
    action.enabledChanged.connect(button.setEnabled)
    return button


def _confirm(parent: QWidget, title: str, question: str) -> bool:
    answer = QMessageBox.question(parent, title, question,
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes
