"""The EdgeTune main window: pick a model and a dataset, set up training, watch it, export it.

Left: inputs and run control. Right: tabs (Curves, Runs, Log, Export, Playground). The engine is
a separate process (app.engine_client); this module never imports torch, so the window opens fast
and survives whatever the engine does.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import yaml
from platformdirs import user_data_dir
from PySide6.QtCore import QObject, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.about import AboutDialog
from app.dataset_preview import DatasetPreview, DropZone, dropped_path
from app.device_panel import DevicePanel, model_config
from app.engine_client import EngineClient
from app.export_panel import ExportPanel
from app.json_tool import JsonTool
from app.runs import list_runs, series_of
from app.settings_form import SettingsForm
from app.widgets.playground import PlaygroundWidget
from engine.api import config as config_io
from engine.api.errors import UserError

SETTINGS_SCHEMA = 1
RECENT_MODELS = 8
# The platform's place for user data (~/.local/share/edgetune/runs on Linux), the same in a
# source checkout and in the bundle, whose own folder may be read-only.
DEFAULT_RUNS_ROOT = Path(user_data_dir("edgetune", appauthor=False)) / "runs"


class RunState(QObject):
    """What the window knows about the current run; widgets follow its signals."""

    sig_state_changed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.state = "idle"  # idle | running | stopping
        self.output_dir: Path | None = None
        self.config_path: Path | None = None
        self.last_status = ""
        self.last_error = ""  # the engine's error event of this run, shown when it ends
        self.started_at = 0.0

    def set(self, state: str) -> None:
        self.state = state
        self.sig_state_changed.emit(state)


class ModelEdit(QLineEdit):
    """The model line edit; a dropped folder or .gguf file fills it."""

    sig_path_dropped = Signal(str)

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


class MainWindow(QMainWindow):
    sig_run_finished = Signal(str)
    """The engine run ended: "completed" | "stopped" | "failed" | "crashed" | "hung"."""

    def __init__(self, settings: QSettings | None = None, runs_root: Path | None = None,
                 engine_command: list[str] | None = None, watchdog_seconds: float = 600.0) -> None:
        super().__init__()
        self.setWindowTitle("EdgeTune")
        self.resize(1280, 800)
        self.settings = settings or QSettings("EdgeTune", "EdgeTune")
        self._check_settings_schema()
        self.runs_root = Path(runs_root or self.settings.value("runs_root", str(DEFAULT_RUNS_ROOT)))
        self.run = RunState()
        self.engine = EngineClient(self, command=engine_command, watchdog_seconds=watchdog_seconds)
        self.engine.sig_event_received.connect(self._on_event)
        self.engine.sig_log_received.connect(self._on_engine_log)
        self.engine.sig_finished.connect(self._on_finished)
        self.run.sig_state_changed.connect(self._update_buttons)
        self._probed = ""
        self._model_ready = False  # the probe read self._probed
        self._model_folder = ""  # where the probe found it (a .gguf is converted to a folder)
        self.message_box: QMessageBox | None = None

        # pyqtgraph (and numpy under it) take most of a cold start: the plots are built right
        # after the window is shown, or on first use, whichever comes first.
        self._curves = None
        self.curves_tab = QWidget()
        QVBoxLayout(self.curves_tab).setContentsMargins(0, 0, 0, 0)
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(5000)
        self.playground = PlaygroundWidget()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.curves_tab, "Curves")
        self.tabs.addTab(self._build_runs_tab(), "Runs")
        self.tabs.addTab(self.log, "Log")
        self.export_panel = ExportPanel()
        self.tabs.addTab(self.export_panel, "Export")
        self.tabs.addTab(self.playground, "Playground")

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self._build_left_panel())
        splitter.addWidget(self.tabs)
        splitter.setSizes([430, 850])
        self.setCentralWidget(splitter)
        self.menuBar().addMenu("&Help").addAction("About EdgeTune", self.show_about)
        QShortcut(QKeySequence("Ctrl+Return"), self, activated=self.start)
        QShortcut(QKeySequence("Ctrl+."), self, activated=self.stop)
        self._restore_settings()
        self.refresh_runs()
        self._update_buttons("idle")
        QTimer.singleShot(0, lambda: self.curves)

    @property
    def curves(self):
        """The Curves tab's CurvesWidget, built on first use."""
        if self._curves is None:
            from app.curves import CurvesWidget

            self._curves = CurvesWidget()
            self.curves_tab.layout().addWidget(self._curves)
        return self._curves

    # ---- building ---------------------------------------------------------------------
    def _build_left_panel(self) -> QWidget:
        self.model_edit = ModelEdit()
        self.model_edit.sig_path_dropped.connect(self.probe_model)
        self.model_edit.editingFinished.connect(lambda: self.probe_model(self.model_edit.text()))
        # Sizing a local folder is one small file read: the bar follows the text as it is typed;
        # the probe (on Enter, drop, browse) adds the rest and sizes .gguf files and hub ids.
        self.model_edit.textChanged.connect(self._size_local_model)
        self.model_probe = JsonTool("probe", self)
        self.model_probe.sig_answered.connect(self._show_probe)
        model_browse = QPushButton("Browse…")
        model_browse.clicked.connect(self._browse_model)
        self.recent_button = QToolButton(text="Recent",
                                         popupMode=QToolButton.ToolButtonPopupMode.InstantPopup)
        self.recent_button.setMenu(QMenu(self.recent_button))
        self.recent_button.menu().aboutToShow.connect(self._fill_recent_menu)
        self.model_summary = QLabel("Pick a model: a folder, a .gguf file, a hub id or 'default'",
                                    wordWrap=True)
        self.dataset_edit = QLineEdit(placeholderText="dataset file or folder")
        self.dataset_edit.editingFinished.connect(
            lambda: self.set_dataset(self.dataset_edit.text()) if self.dataset_edit.text() else None)
        dataset_browse = QPushButton("Browse…")
        dataset_browse.clicked.connect(self._browse_dataset)
        self.drop_zone = DropZone("Drop a dataset here (.jsonl .json .csv .tsv .parquet .txt)")
        self.drop_zone.sig_path_dropped.connect(self.set_dataset)
        self.preview = DatasetPreview()
        self.preview.sig_inspected.connect(self._dataset_inspected)
        self.preview.schema.currentTextChanged.connect(lambda _: self._dataset_inspected({}))
        self.form = SettingsForm()
        self.device = DevicePanel(self.settings)
        self.form.sig_settings_changed.connect(self.refresh_estimate)
        self.device.sig_device_changed.connect(self.refresh_estimate)
        self.device.sig_fit_changed.connect(lambda _: self._update_buttons(self.run.state))

        inputs = QGroupBox("Model and data")
        grid = QVBoxLayout(inputs)
        for label, edit, button in (("Model", self.model_edit, model_browse),
                                    ("Dataset", self.dataset_edit, dataset_browse)):
            row = QHBoxLayout()
            row.addWidget(QLabel(label))
            row.addWidget(edit, 1)
            row.addWidget(button)
            grid.addLayout(row)
            if edit is self.model_edit:
                row.addWidget(self.recent_button)
                grid.addWidget(self.model_summary)
        grid.addWidget(self.drop_zone)
        grid.addWidget(self.preview)

        settings_box = QGroupBox("Training settings")
        settings_layout = QVBoxLayout(settings_box)
        settings_layout.addWidget(self.form)
        buttons = QHBoxLayout()
        for text, slot in (("Show as YAML", self.show_yaml), ("Load…", self._load_config_dialog),
                           ("Save…", self._save_config_dialog)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        settings_layout.addLayout(buttons)

        scroll_content = QWidget()
        scroll_layout = QVBoxLayout(scroll_content)
        device_box = QGroupBox("Device and memory")
        QVBoxLayout(device_box).addWidget(self.device)
        scroll_layout.addWidget(inputs)
        scroll_layout.addWidget(device_box)
        scroll_layout.addWidget(settings_box)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(scroll_content)

        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Ctrl+Return")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Ctrl+.")
        self.resume_button = QPushButton("Resume")
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume)
        self.progress = QProgressBar(format="step %v / %m")
        self.progress_text = QLabel("")
        self.status_line = QLabel("Ready", wordWrap=True)
        control = QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.resume_button):
            control.addWidget(button)

        panel = QWidget()
        layout = QVBoxLayout(panel)
        layout.addWidget(scroll, 1)
        layout.addLayout(control)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_text)
        layout.addWidget(self.status_line)
        return panel

    def _build_runs_tab(self) -> QWidget:
        self.runs_list = QListWidget()
        self.runs_list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.runs_list.itemDoubleClicked.connect(lambda item: self.open_runs([item]))
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_runs)
        compare = QPushButton("Overlay selected")
        compare.clicked.connect(lambda: self.open_runs(self.runs_list.selectedItems()))
        self.resume_selected_button = QPushButton("Resume selected")
        self.resume_selected_button.clicked.connect(
            lambda: self.resume_run(self.runs_list.selectedItems()))
        self.runs_root_label = QLabel()
        buttons = QHBoxLayout()
        buttons.addWidget(self.runs_root_label, 1)
        buttons.addWidget(refresh)
        buttons.addWidget(compare)
        buttons.addWidget(self.resume_selected_button)
        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.addLayout(buttons)
        layout.addWidget(self.runs_list, 1)
        return tab

    # ---- inputs -----------------------------------------------------------------------
    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder")
        if not folder:
            folder, _ = QFileDialog.getOpenFileName(self, "GGUF model", "", "GGUF (*.gguf)")
        if folder:
            self.model_edit.setText(folder)
            self.probe_model(folder)

    def _browse_dataset(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Dataset", "", "Data (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All (*)")
        if path:
            self.set_dataset(path)

    def probe_model(self, reference: str) -> None:
        """Describe the model (architecture, size, context) from a probe process."""
        reference = reference.strip()
        if reference == self._probed:
            return
        if not reference or self.run.state != "idle":
            return  # during a run a probe would compete with training for the cores
        self._probed = reference
        self._model_ready = False
        self.model_summary.setText(f"{Path(reference).name}: reading the model…")
        self.model_probe.run(reference)

    def _size_local_model(self, text: str) -> None:
        reference = text.strip()
        probed = self._model_ready and reference == self._probed
        self.device.set_model_config(model_config(self._model_folder if probed else reference))
        self.refresh_estimate()

    def _show_probe(self, result: dict) -> None:
        if result.get("reference", self._probed) != self._probed:
            return  # an answer about a model the user has moved away from
        if "architecture" not in result:
            errors = result.get("errors") or [{"message": "the model could not be read"}]
            message = html.escape(str(errors[0].get("message")))
            self.model_summary.setText(f"<span style='color:#b00'>{message}</span>")
            return
        parameters = result.get("parameters") or 0
        size = f"{parameters / 1e9:.2f} B" if parameters >= 1e9 else f"{parameters / 1e6:.1f} M"
        self.model_summary.setText(
            f"{result['architecture']} · {size} parameters · context {result.get('context_length')}"
            f" · {'chat template' if result.get('chat_template') else 'no chat template'}"
            f" · weights {result.get('stored_dtype')}")
        self._model_ready, self._model_folder = True, str(result.get("folder", ""))
        if self.dataset_edit.text().strip():  # now with token counts and the chat template
            self.preview.inspect(self._inspect_options())
        self.device.set_model_config(model_config(self._model_folder))
        if result.get("profile"):
            self.device.adopt_detected(str(result["profile"]))
        self.refresh_estimate()

    def set_dataset(self, path: str) -> None:
        self.dataset_edit.setText(path)
        self._dataset_inspected({})
        self.preview.show_file(Path(path), self._inspect_options())

    def _dataset_inspected(self, result: dict) -> None:
        """The dataset's inspection ({} while it runs) sizes the memory bar as the engine will."""
        self.device.set_inspection(result)
        self.refresh_estimate()

    def _inspect_options(self) -> list[str]:
        """inspect-dataset flags that make its example and token counts match this run."""
        try:
            config = self.form.config()
        except ValueError:
            config = config_io.TrainConfig()
        options = ["--max-seq-len", str(config.max_seq_len), "--prompt-template", config.prompt_template]
        if config.label_words:
            options += ["--label-words", json.dumps(config.label_words)]
        if self._model_ready:  # the tokenizer loads only for a model the probe could read
            options += ["--model", self._probed]
        return options

    def current_config(self) -> config_io.TrainConfig:
        """The exact config the engine will get; raises UserError naming a bad field."""
        try:
            config = self.form.config()
        except ValueError as exc:
            raise UserError(f"settings: {exc}") from None
        config.model = self.model_edit.text().strip()
        config.dataset = self.dataset_edit.text().strip()
        config.schema = self.preview.schema.currentText()
        self.device.apply(config)
        return config_io.validate(config)

    def show_yaml(self) -> QDialog:
        try:
            text = yaml.safe_dump(config_io.to_dict(self.current_config()), sort_keys=False)
        except UserError as exc:
            text = f"# the settings are not valid yet:\n# {exc}\n"
        dialog = QDialog(self)
        dialog.setWindowTitle("Config as YAML")
        dialog.resize(560, 640)
        view = QPlainTextEdit(text, readOnly=True)
        QVBoxLayout(dialog).addWidget(view)
        dialog.yaml_text = text
        dialog.show()
        return dialog

    def show_about(self) -> QDialog:
        dialog = AboutDialog(self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.open()
        return dialog

    def load_config(self, path: str | Path) -> None:
        config = config_io.load(path)
        self.form.set_config(config)
        self.form.preset.setCurrentText("Custom")
        if config.memory_budget_gb:
            self.device.budget.setValue(config.memory_budget_gb)
        self.preview.schema.blockSignals(True)  # set_dataset below inspects once, with it
        self.preview.schema.setCurrentText(config.schema)
        self.preview.schema.blockSignals(False)
        if config.model:
            self.model_edit.setText(config.model)
            self.probe_model(config.model)
        if config.dataset:
            self.set_dataset(config.dataset)

    def _load_config_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load config", "", "YAML (*.yaml *.yml)")
        if path:
            try:
                self.load_config(path)
            except UserError as exc:
                self.warn("Config not loaded", str(exc))
            except OSError as exc:
                self.warn("Config not loaded", f"config file {path} cannot be read "
                          f"({exc.strerror or exc}); give a YAML file")

    def _save_config_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save config", "", "YAML (*.yaml)")
        if path:
            try:
                config_io.save(self.current_config(), path)
            except UserError as exc:
                self.warn("Config not saved", str(exc))
            except OSError as exc:
                self.warn("Config not saved", f"cannot write {path}: {exc.strerror or exc}; free "
                          "disk space or pick a writable folder")

    def warn(self, title: str, text: str) -> QMessageBox:
        """A warning dialog that leaves the event loop running (a live run keeps drawing)."""
        if self.message_box is None:
            self.message_box = QMessageBox(QMessageBox.Icon.Warning, "", "",
                                           QMessageBox.StandardButton.Ok, self)
        self.message_box.setWindowTitle(title)
        self.message_box.setText(text)
        self.message_box.open()
        return self.message_box

    # ---- model and memory -------------------------------------------------------------
    def _fill_recent_menu(self) -> None:
        menu = self.recent_button.menu()
        menu.clear()
        for model in self.recent_models() or ["default"]:
            menu.addAction(model, lambda m=model: (self.model_edit.setText(m), self.probe_model(m)))

    def refresh_estimate(self) -> None:
        """Recompute the memory bar for the settings as they are now."""
        try:
            config = self.form.config()
        except ValueError:
            config = None
        self.device.update_estimate(config)

    # ---- run control ------------------------------------------------------------------
    def start(self) -> None:
        if self.run.state != "idle":
            return
        if self.device.blocking_reason:  # the shortcut reaches here with the button disabled
            self._show_error(self.device.blocking_reason)
            return
        try:
            config = self.current_config()
        except UserError as exc:
            self._show_error(str(exc))
            return
        name = time.strftime("run-%Y%m%d-%H%M%S")
        output_dir = self.runs_root / name
        suffix = 1
        while output_dir.exists():
            suffix += 1
            output_dir = self.runs_root / f"{name}-{suffix}"
        config.output_dir = str(output_dir)
        config_path = self.runs_root / f"{output_dir.name}.yaml"
        try:
            self.runs_root.mkdir(parents=True, exist_ok=True)
            config_io.save(config, config_path)
        except OSError as exc:
            self._show_error(f"cannot write the run's config {config_path}: "
                             f"{exc.strerror or exc}; free disk space or make {self.runs_root} "
                             "writable (nothing was started)")
            return
        self._remember_model(config.model)
        self.settings.setValue("last_dataset", config.dataset)
        self._launch(config_path, output_dir, resume=False, total=config.steps)

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
        if resume and output_dir is not None:
            self.curves.show_runs([series_of(output_dir)])
            self.curves.runs[0].label = "live"
        else:
            self.curves.clear()
        self.progress.setMaximum(total)
        self.progress.setValue(0)
        self.progress_text.setText("")
        self.status_line.setText("Resuming…" if resume else "Starting the engine…")
        self._append_log("info", f"{'resume' if resume else 'start'}: {config_path}")
        self.run.set("running")
        self.engine.start(config_path, resume=resume)
        self.tabs.setCurrentWidget(self.curves_tab)

    def resume_run(self, items: list[QListWidgetItem]) -> None:
        """Continue a run folder from the Runs tab (one from an earlier session) from its last
        checkpoint; the engine checks the folder and says what is wrong with it."""
        if len(items) != 1 or self.run.state != "idle":
            return
        folder = Path(items[0].data(Qt.ItemDataRole.UserRole))
        self.run.config_path, self.run.output_dir = folder / "config.yaml", folder
        self.resume()

    def stop(self) -> None:
        if self.run.state == "running":
            self.run.set("stopping")
            self.status_line.setText("Stopping after this step (a checkpoint is written)…")
            self.engine.stop()

    def _update_buttons(self, state: str) -> None:
        idle = state == "idle"
        blocked = self.device.blocking_reason
        self.start_button.setEnabled(idle and not blocked)
        self.start_button.setToolTip(blocked or "Ctrl+Return")
        self.stop_button.setEnabled(state == "running")
        resumable = (self.run.last_status in ("stopped", "crashed", "hung", "failed")
                     and self.run.output_dir is not None
                     and (self.run.output_dir / "checkpoints").is_dir())
        self.resume_button.setEnabled(idle and resumable)

    # ---- engine events ----------------------------------------------------------------
    def _on_event(self, event) -> None:
        data = event.data
        if event.type in ("metrics", "eval", "memory"):
            self.curves.add_event(event.type, data)
        if event.type == "progress":
            self._show_progress(data)
        elif event.type == "metrics":
            self._tokens_per_second = data.get("tokens_per_second")
        elif event.type == "status":
            self.status_line.setText(str(data.get("message") or data.get("state")))
        elif event.type == "log":
            self._append_log(str(data.get("level", "info")), str(data.get("message", "")))
        elif event.type == "eval":
            accuracy = data.get("accuracy")
            text = f"eval @ step {data.get('step')}: loss {data.get('loss', float('nan')):.4f}"
            self._append_log("info", text + (f", accuracy {accuracy:.1%}" if accuracy is not None else ""))
        elif event.type == "artifact" and data.get("kind") == "adapter":
            self.export_panel.set_run(Path(str(data.get("path"))).parent)
        elif event.type == "error":
            self.run.last_error = str(data.get("message"))
            self._append_log("error", self.run.last_error)
            self._show_error(self.run.last_error)
        elif event.type == "checkpoint":
            self._append_log("info", f"checkpoint @ step {data.get('step')}: {data.get('path')}")

    def _show_progress(self, data: dict) -> None:
        step, total = int(data.get("step", 0)), int(data.get("total_steps", 0) or 1)
        self.progress.setMaximum(total)
        self.progress.setValue(step)
        eta = data.get("eta_seconds")
        parts = [f"step {step}/{total}"]
        if eta is not None:
            parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        tps = getattr(self, "_tokens_per_second", None)
        if tps:
            parts.append(f"{tps:.0f} tokens/s")
        self.progress_text.setText("   ".join(parts))

    def _show_error(self, message: str) -> None:
        # Rich text: a path or message holding < or & must show as typed.
        self.status_line.setText(f"<span style='color:#b00'>{html.escape(message)}</span>")

    def _on_engine_log(self, level: str, message: str) -> None:
        self._append_log(level, message)

    def _append_log(self, level: str, message: str) -> None:
        self.log.appendPlainText(f"[{level}] {message}")

    def _on_finished(self, status: str, exit_code: int) -> None:
        self.run.last_status = status
        messages = {
            "completed": "Finished: the adapter is saved.",
            "stopped": "Stopped with a checkpoint; Resume continues from it.",
            "failed": "The run failed; see the Log tab.",
            "crashed": "The engine crashed (exit code {code}); see the Log tab. Resume continues "
                       "from the last checkpoint if there is one.",
            "hung": "The engine stopped answering and was ended; see the Log tab.",
        }
        text = messages.get(status, status).format(code=exit_code)
        if status == "failed" and self.run.last_error:
            self._show_error(self.run.last_error)  # says what to change; the Log tab has the rest
        elif status in ("crashed", "hung", "failed"):
            tail = "<br>".join(html.escape(line[-160:]) for line in list(self.engine.stderr_tail)[-3:])
            self.status_line.setText(f"<span style='color:#b00'>{text}</span>"
                                     + (f"<br><tt>{tail}</tt>" if tail else ""))
        else:
            self.status_line.setText(text)
        if status == "completed" and self.run.output_dir is not None:
            self.export_panel.set_run(self.run.output_dir)
            self.playground.set_run(self.run.output_dir)
        self.curves.redraw()
        self.run.set("idle")
        self.refresh_runs()
        self.sig_run_finished.emit(status)

    # ---- runs history -----------------------------------------------------------------
    def refresh_runs(self) -> None:
        self.runs_root_label.setText(f"Runs in {self.runs_root}")
        self.runs_list.clear()
        for info in list_runs(self.runs_root):
            best = f"{info.best_accuracy:.1%}" if info.best_accuracy is not None else "–"
            item = QListWidgetItem(f"{info.path.name}  [{info.status}]  {info.model} · "
                                   f"{info.dataset} · best acc {best} · step {info.last_step} · "
                                   f"{info.date}")
            item.setData(Qt.ItemDataRole.UserRole, str(info.path))
            self.runs_list.addItem(item)

    def open_runs(self, items: list[QListWidgetItem]) -> None:
        if not items or self.run.state != "idle":
            return
        folders = [Path(item.data(Qt.ItemDataRole.UserRole)) for item in items]
        self.curves.show_runs([series_of(folder) for folder in folders])
        self.export_panel.set_run(folders[0])
        self.playground.set_run(folders[0])
        self.tabs.setCurrentWidget(self.curves_tab)

    # ---- settings ---------------------------------------------------------------------
    def _check_settings_schema(self) -> None:
        if int(self.settings.value("schema_version", 0) or 0) != SETTINGS_SCHEMA:
            self.settings.clear()  # settings of another layout would be misread
            self.settings.setValue("schema_version", SETTINGS_SCHEMA)

    def _restore_settings(self) -> None:
        recent = self.recent_models()
        if recent:
            self.model_edit.setText(recent[0])  # sized at once; the probe waits for a request
        last = self.settings.value("last_dataset", "")
        if last and Path(last).exists():
            self.set_dataset(last)

    def recent_models(self) -> list[str]:
        value = self.settings.value("recent_models", [])
        return [value] if isinstance(value, str) else list(value or [])

    def _remember_model(self, model: str) -> None:
        recent = [model] + [m for m in self.recent_models() if m != model]
        self.settings.setValue("recent_models", recent[:RECENT_MODELS])
        self.settings.setValue("runs_root", str(self.runs_root))

    def closeEvent(self, event) -> None:
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
        self.preview.kill()
        self.model_probe.kill()
        self.export_panel.kill()
        self.playground.stop()
        self.settings.sync()
