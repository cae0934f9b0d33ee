"""“Several machines…”: the commands that start the configured run on K machines.

The engine writes them (`python -m engine launch CONFIG --nodes K --print`, engine/train/launch.py):
the torchrun line for every machine and a SkyPilot task. The window saves the current settings
as the config those commands name, shows both, and copies either to the clipboard; it starts
nothing on other machines.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.json_tool import JsonTool
from app.wheel_guard import wheel_only_when_focused
from engine.api import config as config_io


class ClusterDialog(QDialog):
    """The multi-machine commands for `config`, saved as `config_path` (the same path must exist
    on every machine: it is what their torchrun runs)."""

    def __init__(self, config: config_io.TrainConfig, config_path: Path,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Run on several machines")
        self.config, self.config_path = config, config_path
        self.nodes = QSpinBox(minimum=1, maximum=1024, value=2)
        self.workers = QSpinBox(minimum=1, maximum=64, value=max(config.workers, 1))
        wheel_only_when_focused(self.nodes, self.workers)
        self.host = QLineEdit("$MASTER_ADDR")
        self.host.setToolTip("the address of machine 0, which the others reach; $MASTER_ADDR "
                             "leaves it to each machine's shell")
        form = QFormLayout()
        form.addRow("Machines", self.nodes)
        form.addRow("Workers per machine", self.workers)
        form.addRow("Machine 0", self.host)
        form.addRow("Config", QLabel(str(config_path), wordWrap=True))
        self.status = QLabel(wordWrap=True)
        self.torchrun, self.skypilot = QPlainTextEdit(readOnly=True), QPlainTextEdit(readOnly=True)
        self.make_button = QPushButton("Write the commands")
        self.make_button.clicked.connect(self.make)
        self.copy_torchrun = QPushButton("Copy torchrun command", enabled=False)
        self.copy_torchrun.clicked.connect(lambda: self._copy(self.torchrun))
        self.copy_skypilot = QPushButton("Copy SkyPilot task", enabled=False)
        self.copy_skypilot.clicked.connect(lambda: self._copy(self.skypilot))
        buttons = QHBoxLayout()
        for button in (self.make_button, self.copy_torchrun, self.copy_skypilot):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("On every machine (torchrun):"))
        layout.addWidget(self.torchrun, 1)
        layout.addWidget(QLabel("Or with SkyPilot (sky launch -c edgetune task.yaml):"))
        layout.addWidget(self.skypilot, 2)
        self.launch = JsonTool("launch", self)
        self.launch.sig_answered.connect(self._answered)
        self.resize(760, 560)

    def make(self) -> None:
        try:
            self.config_path.parent.mkdir(parents=True, exist_ok=True)
            config_io.save(self.config, self.config_path)
        except OSError as exc:
            self.status.setText(f"cannot write {self.config_path}: {exc.strerror or exc}")
            return
        self.status.setText("writing the commands…")
        self.make_button.setEnabled(False)
        self.launch.run(str(self.config_path), "--nodes", str(self.nodes.value()),
                        "--workers-per-node", str(self.workers.value()),
                        "--host", self.host.text().strip() or "$MASTER_ADDR", "--print")

    def _answered(self, result: dict) -> None:
        self.make_button.setEnabled(True)
        errors = result.get("errors")
        ok = not errors and "torchrun" in result
        self.status.setText(errors[0]["message"] if errors else
                            f"{result['workers']} workers: {result['nodes']} machines × "
                            f"{result['workers_per_node']}")
        self.torchrun.setPlainText(result.get("torchrun", ""))
        self.skypilot.setPlainText(result.get("skypilot", ""))
        self.copy_torchrun.setEnabled(ok)
        self.copy_skypilot.setEnabled(ok)

    def _copy(self, text: QPlainTextEdit) -> None:
        QGuiApplication.clipboard().setText(text.toPlainText())

    def done(self, result: int) -> None:
        self.launch.kill()
        super().done(result)
