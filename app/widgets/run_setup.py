"""The left panel's inputs of a run: model and data, device and memory, training settings, and
the config they make together (shown as YAML, loaded and saved)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.run_state import RunState
from app.widgets.dataset_preview import DatasetPreview, DropZone
from app.widgets.device_panel import DevicePanel, model_config
from app.widgets.model_picker import ModelPicker
from app.widgets.settings_form import SettingsForm, name_the_controls
from engine.api import config as config_io
from engine.api.errors import UserError

LAST_CONFIG_KEY = "last_config"  # the YAML of the config when the window last closed


class RunSetup(QScrollArea):
    """Model and data, device and memory, training settings: everything the config holds."""

    sig_inputs_changed = Signal()
    """Something the config or Start's checks are made of changed (a field, the model, the data)."""

    def __init__(self, settings: QSettings, run: RunState, parent: QWidget | None = None) -> None:
        super().__init__(parent, widgetResizable=True)
        self.settings = settings
        self.message_box: QMessageBox | None = None
        self.model_picker = ModelPicker(settings, run)
        self.model_picker.sig_model_read.connect(self._model_read)
        # Sizing a local folder is one small file read: the bar follows the text as it is typed;
        # the probe (on Enter, drop, browse) adds the rest and sizes .gguf files and hub ids.
        self.model_picker.edit.textChanged.connect(self._size_model)
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
        self.preview.sig_inspected.connect(self.form.follow_dataset)
        self.device = DevicePanel(settings)
        self.form.sig_settings_changed.connect(self.refresh_estimate)
        self.device.sig_device_changed.connect(self.refresh_estimate)
        for changed in (self.form.sig_settings_changed, self.device.sig_device_changed,
                        self.device.sig_fit_changed, self.preview.sig_validity_changed,
                        self.preview.schema.currentTextChanged, self.model_picker.edit.textChanged,
                        self.dataset_edit.textChanged):
            changed.connect(self.sig_inputs_changed)

        inputs = QGroupBox("Model and data")
        inputs_layout = QVBoxLayout(inputs)
        inputs_layout.addWidget(self.model_picker)
        dataset_row = QHBoxLayout()
        dataset_row.addWidget(QLabel("Dataset"))
        dataset_row.addWidget(self.dataset_edit, 1)
        dataset_row.addWidget(dataset_browse)
        inputs_layout.addLayout(dataset_row)
        inputs_layout.addWidget(self.drop_zone)
        inputs_layout.addWidget(self.preview)

        device_box = QGroupBox("Device and memory")
        QVBoxLayout(device_box).addWidget(self.device)

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

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(inputs)
        layout.addWidget(device_box)
        layout.addWidget(settings_box)
        self.setWidget(content)

    def restore(self) -> None:
        """The config of the last session (save_state): settings, model and dataset; the model
        is sized at once, the probe waits for a request. The first time: the last run's model."""
        config = self._saved_config()
        if config is None:
            recent = self.model_picker.recent_models()
            if recent:
                self.model_picker.edit.setText(recent[0])
            return
        self._show_config(config)
        if config.dataset and Path(config.dataset).exists():
            self.set_dataset(config.dataset)

    def save_state(self) -> None:
        """Keep the config as it stands, valid or not yet, for the next session's restore."""
        try:
            config = self._config()
        except UserError:
            return  # a field half typed: the session before this one is restored instead
        self.settings.setValue(LAST_CONFIG_KEY,
                               yaml.safe_dump(config_io.to_dict(config), sort_keys=False))

    def _saved_config(self) -> config_io.TrainConfig | None:
        try:
            values = yaml.safe_load(str(self.settings.value(LAST_CONFIG_KEY, "")))
            return config_io.from_dict(values) if isinstance(values, dict) else None
        except (yaml.YAMLError, UserError):
            return None  # written by a version with other fields: start from the defaults

    # ---- model, data and memory ---------------------------------------------------------
    def _size_model(self) -> None:
        self.device.set_model_config(model_config(self.model_picker.config_folder()))
        self.refresh_estimate()

    def _model_read(self, result: dict) -> None:
        if self.dataset_edit.text().strip():  # now with token counts and the chat template
            self.preview.inspect(self._inspect_options())
        self.device.set_model_config(model_config(self.model_picker.folder))
        if result.get("profile"):
            self.device.adopt_detected(str(result["profile"]))
        self.refresh_estimate()

    def _browse_dataset(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Dataset", "", "Data (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All (*)")
        if path:
            self.set_dataset(path)

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
        if self.model_picker.ready:  # the tokenizer loads only for a model the probe could read
            options += ["--model", self.model_picker.probed]
        return options

    def refresh_estimate(self) -> None:
        """Recompute the memory bar for the settings as they are now."""
        try:
            config = self.form.config()
        except ValueError:
            config = None
        self.device.update_estimate(config)

    def kill(self) -> None:
        """End the dataset inspection and the model probe; neither is waited for."""
        self.preview.kill()
        self.model_picker.probe.kill()

    # ---- the config ---------------------------------------------------------------------
    def current_config(self) -> config_io.TrainConfig:
        """The exact config the engine will get; raises UserError naming a bad field."""
        return config_io.validate(self._config())

    def _config(self) -> config_io.TrainConfig:
        """The form, model, dataset and device as they stand, not validated; raises UserError
        naming a form field that holds no value."""
        try:
            config = self.form.config()
        except ValueError as exc:
            raise UserError(f"settings: {exc}") from None
        config.model = self.model_picker.edit.text().strip()
        config.dataset = self.dataset_edit.text().strip()
        config.schema = self.preview.schema.currentText()
        self.device.apply(config)
        return config

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

    def load_config(self, path: str | Path) -> None:
        config = config_io.load(path)
        self._show_config(config)
        if config.model:
            self.model_picker.probe_model(config.model)
        if config.dataset:
            self.set_dataset(config.dataset)

    def _show_config(self, config: config_io.TrainConfig) -> None:
        """Fill the form, the budget, the schema and the model from `config` (the dataset, which
        starts an inspection, is the caller's)."""
        self.form.set_config(config)
        self.form.preset.setCurrentText("Custom")
        if config.memory_budget_gb:
            self.device.budget.setValue(config.memory_budget_gb)
        self.preview.schema.blockSignals(True)  # the caller's set_dataset inspects once, with it
        self.preview.schema.setCurrentText(config.schema)
        self.preview.schema.blockSignals(False)
        if config.model:
            self.model_picker.edit.setText(config.model)

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
        self.message_box.setText(name_the_controls(text))
        self.message_box.open()
        return self.message_box
