"""The EdgeTune main window: pick a model and a dataset, set up training, watch it, export it.

Left: inputs and run control. Right: tabs (Curves, Runs, Log, Export, Playground). The engine is
a separate process (app.engine_client); this module never imports torch, so the window opens fast
and survives whatever the engine does. The panels live in app/widgets/; this module assembles
them and carries the run between them: start, engine events, the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from platformdirs import user_data_dir
from PySide6.QtCore import QSettings, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
    QFrame,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.about import AboutDialog
from app.adapter_runs import AdapterRuns
from app.engine_client import EngineClient
from app.notifications import Notifier
from app.quit_guard import QuitGuard
from app.run_events import RunEvents
from app.run_progress import RunProgress
from app.run_state import RunState
from app.runs import series_of
from app.status_line import StatusLine, StatusMessage
from app.widgets.cluster_dialog import ClusterDialog
from app.widgets.curves_tab import CurvesTab
from app.widgets.export_panel import ExportPanel
from app.widgets.log_view import LogView
from app.widgets.playground import PlaygroundWidget
from app.widgets.run_controls import RunControls, outcome
from app.widgets.run_setup import RunSetup
from app.widgets.runs_tab import RunsTab, folder_of
from engine.api import config as config_io
from engine.api.errors import UserError

if TYPE_CHECKING:
    from app.widgets.curves import CurvesWidget

SETTINGS_SCHEMA = 1
# The platform's place for user data (~/.local/share/edgetune/runs on Linux), the same in a
# source checkout and in the bundle, whose own folder may be read-only.
DEFAULT_RUNS_ROOT = Path(user_data_dir("edgetune", appauthor=False)) / "runs"
DEFAULT_WIDTH, DEFAULT_HEIGHT = 1280, 800  # the first launch's size, cut to the screen
# The left panel at first: the settings form without a sideways scrollbar. At its minimum, Start,
# Stop and Resume and the form's labels still fit (the form scrolls sideways), and half a 1366 px
# screen leaves the tabs room beside it.
LEFT_PANEL_WIDTH, LEFT_PANEL_MIN_WIDTH = 430, 360


class MainWindow(QMainWindow):
    sig_run_finished = Signal(str)
    """The engine run ended: "completed" | "stopped" | "failed" | "crashed" | "hung"."""

    def __init__(self, settings: QSettings | None = None, runs_root: Path | None = None,
                 engine_command: list[str] | None = None, watchdog_seconds: float = 600.0) -> None:
        super().__init__()
        self.setWindowTitle("EdgeTune")
        self.settings = settings or QSettings("EdgeTune", "EdgeTune")
        self._check_settings_schema()
        self.runs_root = Path(runs_root or self.settings.value("runs_root", str(DEFAULT_RUNS_ROOT)))
        self.run = RunState()
        self.engine = EngineClient(self, command=engine_command, watchdog_seconds=watchdog_seconds)
        self.engine.sig_finished.connect(self._on_finished)
        self.run.sig_state_changed.connect(self._update_buttons)

        self.curves_tab = CurvesTab()
        self.log = LogView()
        self.engine.sig_log_received.connect(self.log.add_line)
        self.runs_tab = RunsTab(self.runs_root, self.run)
        self.runs_tab.sig_open_requested.connect(self.open_runs)
        self.runs_tab.sig_resume_requested.connect(self.resume_run)
        self.export_panel = ExportPanel()
        self.playground = PlaygroundWidget(runs_root=self.runs_root)
        self.adapter_runs = AdapterRuns(self.export_panel, self.playground, self.runs_tab)
        self.runs_tab.sig_runs_listed.connect(self.adapter_runs.offer)
        self.tabs = QTabWidget()
        for page, title in ((self.curves_tab, "Curves"), (self.runs_tab, "Runs"), (self.log, "Log"),
                            (self.export_panel, "Export"), (self.playground, "Playground")):
            self.tabs.addTab(_scrolling(page), title)

        self.setup = RunSetup(self.settings, self.run)
        self.setup.device.sig_fit_changed.connect(lambda _: self._update_buttons(self.run.state))
        self.setup.preview.sig_validity_changed.connect(lambda _: self._update_buttons(self.run.state))
        self.setup.sig_inputs_changed.connect(self._inputs_changed)
        self.status = StatusLine(self)
        self.controls = RunControls(self.status)
        self.controls.start_button.clicked.connect(self.start)
        self.controls.stop_button.clicked.connect(self.stop)
        self.controls.resume_button.clicked.connect(self.resume)
        self.controls.open_folder_button.clicked.connect(self.open_run_folder)
        self.notifier = Notifier(self, self.controls.banner, self.settings)
        self.quit_guard = QuitGuard(self)
        self.events = RunEvents(self.run, lambda: self.curves, self.controls, self.status, self.log,
                                self.export_panel)
        self.engine.sig_event_received.connect(self.events.on_event)
        left = QWidget(minimumWidth=LEFT_PANEL_MIN_WIDTH)
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(self.setup, 1)
        left_layout.addWidget(self.controls)

        # The parts by the names the tests, the smoke run and the startup bench reach them.
        self.model_picker = self.setup.model_picker
        self.model_edit, self.model_probe = self.model_picker.edit, self.model_picker.probe
        self.model_summary, self.recent_button = self.model_picker.summary, self.model_picker.recent_button
        self.dataset_edit, self.drop_zone = self.setup.dataset_edit, self.setup.drop_zone
        self.preview, self.form, self.device = self.setup.preview, self.setup.form, self.setup.device
        self.start_button, self.stop_button = self.controls.start_button, self.controls.stop_button
        self.resume_button, self.progress = self.controls.resume_button, self.controls.progress
        self.status_line = self.controls.status_line
        self.runs_list = self.runs_tab.runs_list
        self.resume_selected_button = self.runs_tab.resume_selected_button

        # Neither side collapses: a collapsed left panel hides Start, and its handle at the
        # window's edge is hard to find. Its explicit minimum width, not its contents', also
        # keeps a long status line from widening the window.
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.tabs)
        for index in (0, 1):
            self.splitter.setCollapsible(index, False)
        self.setCentralWidget(self.splitter)
        run_menu = self.menuBar().addMenu("&Run")
        run_menu.addAction("On several machines…", self.show_cluster_commands)
        run_menu.addAction(self.notifier.sound_action)
        self.menuBar().addMenu("&Help").addAction("About EdgeTune", self.show_about)
        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.start)
        QShortcut(QKeySequence("Ctrl+."), self, activated=self.stop)
        self._restore_layout()
        self.setup.restore()
        self.runs_tab.refresh()
        self._update_buttons("idle")

    @property
    def quit_question(self) -> QMessageBox | None:
        """The open "stop and quit?" question, if closing asked it."""
        return self.quit_guard.question

    @property
    def curves(self) -> CurvesWidget:
        """The Curves tab's CurvesWidget, built on first use."""
        return self.curves_tab.curves

    def show_about(self) -> QDialog:
        dialog = AboutDialog(self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    # ---- run control ------------------------------------------------------------------
    def start(self) -> None:
        if self.run.state != "idle":
            return
        try:
            config = self._checked_config()
        except UserError as exc:
            self.status.show("input", StatusMessage(str(exc), error=True))
            return
        self.status.clear("input")
        output_dir, config_path = self._new_run_folder()
        config.output_dir = str(output_dir)
        try:
            self.runs_root.mkdir(parents=True, exist_ok=True)
            config_io.save(config, config_path)
        except OSError as exc:
            self.status.show("outcome", StatusMessage(
                f"cannot write the run's config {config_path}: {exc.strerror or exc}; free disk "
                f"space or make {self.runs_root} writable (nothing was started)", error=True))
            return
        self.setup.model_picker.remember(config.model)
        self.settings.setValue("runs_root", str(self.runs_root))
        self.setup.save_state()
        self._launch(config_path, output_dir, resume=False, total=config.steps)

    def _new_run_folder(self) -> tuple[Path, Path]:
        """A fresh run folder under runs_root and the config file beside it (NAME.yaml)."""
        name = time.strftime("run-%Y%m%d-%H%M%S")
        output_dir, suffix = self.runs_root / name, 1
        while output_dir.exists():
            suffix += 1
            output_dir = self.runs_root / f"{name}-{suffix}"
        return output_dir, self.runs_root / f"{output_dir.name}.yaml"

    def show_cluster_commands(self) -> ClusterDialog | None:
        """Run ▸ On several machines…: the torchrun and SkyPilot commands for these settings."""
        try:
            config = self._checked_config()
        except UserError as exc:
            self.status.show("input", StatusMessage(str(exc), error=True))
            return None
        output_dir, config_path = self._new_run_folder()
        config.output_dir = str(output_dir)
        dialog = ClusterDialog(config, config_path, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def resume(self) -> None:
        # The engine checks the run folder (config, checkpoints, versions) and names what is
        # wrong; the step count arrives with its first progress event.
        if self.run.state != "idle" or self.run.config_path is None:
            return
        self._launch(self.run.config_path, self.run.output_dir, resume=True, total=0)

    def _launch(self, config_path: Path, output_dir: Path | None, resume: bool, total: int) -> None:
        self.run.config_path, self.run.output_dir = config_path, output_dir
        self.run.started_at = time.monotonic()
        self.run.last_error = ""
        self.run.progress = RunProgress(total_steps=total)
        if resume and output_dir is not None:
            self.curves.show_runs([series_of(output_dir)])
            self.curves.runs[0].label = "live"
        else:
            self.curves.clear()
        self.controls.show_launched(total)
        self.status.clear()  # what was said belonged to the last run or the inputs it passed
        self.status.show("launch", StatusMessage("Resuming…" if resume else "Starting the engine…"))
        self.log.add_line("info", f"{'resume' if resume else 'start'}: {config_path}")
        self.run.set("running")
        self.engine.start(config_path, resume=resume)
        self._show_tab(self.curves_tab)

    def resume_run(self, items: list[QListWidgetItem]) -> None:
        """Continue a run folder from the Runs tab (one from an earlier session) from its last
        checkpoint; the engine checks the folder and says what is wrong with it."""
        if len(items) != 1 or self.run.state != "idle":
            return
        folder = folder_of(items[0])
        self.run.config_path, self.run.output_dir = folder / "config.yaml", folder
        self.resume()

    def stop(self) -> None:
        if self.run.state == "running":
            self.run.set("stopping")
            self.status.show("stopping", StatusMessage("Stopping after this step (a checkpoint is written)…"))
            self.engine.stop()

    def _blocking_reason(self) -> str:
        """Why Start cannot run now: the memory fit, or a dataset the preview cannot read."""
        return self.setup.device.blocking_reason or self.setup.preview.blocking_reason

    def _checked_config(self) -> config_io.TrainConfig:
        """The config Start would launch; UserError saying why Start cannot run it."""
        blocked = self._blocking_reason()
        if blocked:  # the shortcut reaches Start with the button disabled
            raise UserError(blocked)
        return self.setup.current_config()

    def _inputs_changed(self) -> None:
        # A refused Start's error stands while its cause does: checked again, it goes once the
        # inputs pass, or gives way to what is wrong now. A failed run's error was about the
        # inputs it ran with; only the engine can tell whether the change fixed it.
        if self.status.message("input") is not None:
            try:
                self._checked_config()
            except UserError as exc:
                self.status.show("input", StatusMessage(str(exc), error=True))
            else:
                self.status.clear("input")
        if self.run.state == "idle" and self.run.last_status == "failed":
            self.status.clear("outcome")

    def _update_buttons(self, state: str) -> None:
        self.controls.update_buttons(state, self._blocking_reason(), self.run.resumable,
                                     self.run.output_dir is not None)

    def open_run_folder(self) -> None:
        """Show the current (or last) run's folder in the file manager."""
        if self.run.output_dir is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.run.output_dir)))

    def _on_finished(self, status: str, exit_code: int) -> None:
        self.run.last_status = status
        ended = outcome(status, exit_code, self.run.last_error, list(self.engine.stderr_tail))
        self.status.clear("launch", "engine", "stage", "stopping")
        self.status.show("outcome", ended)
        if status == "completed" and self.run.output_dir is not None:
            self.adapter_runs.offer(self.run.output_dir)
        self.curves.redraw()
        self.run.set("idle")
        self.runs_tab.refresh()
        if self.quit_guard.quit_when_stopped:
            QTimer.singleShot(0, self.close)
        elif status != "stopped":  # a stop is the user's own doing
            self._notify(status, ended)
        self.sig_run_finished.emit(status)

    def _notify(self, status: str, ended: StatusMessage) -> None:
        name = self.run.output_dir.name if self.run.output_dir is not None else "the run"
        if status == "completed":
            self.notifier.notify("EdgeTune: run finished", f"{name} finished at step "
                                 f"{self.run.progress.step}; the adapter is saved.", failed=False)
        else:
            self.notifier.notify("EdgeTune: run failed", f"{name}: {ended.text}", failed=True)

    # ---- runs history -----------------------------------------------------------------
    def open_runs(self, items: list[QListWidgetItem]) -> None:
        if not items or self.run.state != "idle":
            return
        folders = [folder_of(item) for item in items]
        self.curves.show_runs([series_of(folder) for folder in folders])
        self.adapter_runs.offer(*folders)
        self._show_tab(self.curves_tab)

    def _show_tab(self, page: QWidget) -> None:
        """Bring the tab that holds `page` (in its scroll area) to the front."""
        self.tabs.setCurrentIndex(next(index for index in range(self.tabs.count())
                                       if self.tabs.widget(index).widget() is page))

    # ---- settings and closing ---------------------------------------------------------
    def _restore_layout(self) -> None:
        """The last session's window geometry and splitter; the first time, a size that fits
        the screen."""
        geometry, splitter = (self.settings.value(f"window/{key}") for key in ("geometry", "splitter"))
        if geometry is None or not self.restoreGeometry(geometry):
            available = self.screen().availableGeometry()
            self.resize(min(DEFAULT_WIDTH, available.width()), min(DEFAULT_HEIGHT, available.height()))
        if splitter is None or not self.splitter.restoreState(splitter):
            self.splitter.setSizes([LEFT_PANEL_WIDTH, self.width() - LEFT_PANEL_WIDTH])

    def save_state(self) -> None:
        """Keep the window's geometry and splitter and the config in the settings, for the next
        launch (_restore_layout, RunSetup.restore)."""
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/splitter", self.splitter.saveState())
        self.setup.save_state()

    def _check_settings_schema(self) -> None:
        if int(self.settings.value("schema_version", 0) or 0) != SETTINGS_SCHEMA:
            self.settings.clear()  # settings of another layout would be misread
            self.settings.setValue("schema_version", SETTINGS_SCHEMA)

    def closeEvent(self, event) -> None:
        if self.run.state != "idle":
            # Killing the engine now would lose every step since its last checkpoint: it is
            # asked to stop cleanly first, and the window closes once it has ended.
            event.ignore()
            if self.run.state == "running":
                self.quit_guard.ask()
            else:
                self.quit_guard.stop_and_quit()
            return
        self.save_state()
        self.shutdown()
        if self.export_panel.is_running():
            # The export got SIGTERM and removes its partial file; the window closes once it
            # has ended (the panel kills it if it takes too long). Nothing blocks meanwhile.
            event.ignore()
            QTimer.singleShot(100, self.close)
            return
        super().closeEvent(event)

    def shutdown(self) -> None:
        """End every child process (engine, inspection, export, chat); none is waited for."""
        self.engine.kill()
        self.setup.kill()
        self.export_panel.kill()
        self.playground.stop()
        self.settings.sync()


def _scrolling(page: QWidget) -> QScrollArea:
    """`page` in a frameless scroll area: a page wider than the tabs (a long line in one of its
    labels) scrolls instead of widening the window past the screen."""
    area = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
    area.setWidget(page)
    return area
