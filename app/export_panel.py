"""The Export tab: the run's PEFT adapter folder, and one button per format the engine exports.

The buttons come from engine.export.FORMATS (a torch-free table), so a format the engine gains
shows up here without an app change; a format whose module is not installed yet is shown
disabled. Each export runs `python -m engine export RUN --format F` in its own process; its
stderr lines are the progress, its last stdout line the exported path. Stop sends SIGTERM,
on which the engine removes the file it was writing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from PySide6.QtCore import QProcess, Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.engine_client import REPO_ROOT
from engine.export import FORMATS

STOPPED_EXIT_CODE = 130  # the engine's exit code after SIGTERM or Ctrl+C


def format_available(fmt: str) -> bool:
    """Whether the engine has the module that writes `fmt` (some formats land later)."""
    return importlib.util.find_spec(FORMATS[fmt][0]) is not None


class ExportPanel(QWidget):
    """Exports one run folder; one export at a time."""

    sig_export_finished = Signal(str, int, str)
    """Format, exit code, and the exported path ("" when the export failed)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run_dir = QLineEdit(placeholderText="run folder (a finished run, or pick one in Runs)")
        self.run_dir.textChanged.connect(self._show_adapter)
        self.adapter_label = QLabel("PEFT adapter: (no finished run yet)", wordWrap=True)
        self.adapter_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.output = QPlainTextEdit(readOnly=True)
        self.output.setMaximumBlockCount(5000)
        self.busy = QProgressBar(minimum=0, maximum=0, visible=False)  # no step count: a spinner
        self.buttons: dict[str, QPushButton] = {}
        row = QHBoxLayout()
        for fmt, (_module, _function, help_text) in FORMATS.items():
            button = QPushButton(f"Export {fmt}")
            available = format_available(fmt)
            button.setEnabled(available)
            button.setToolTip(help_text if available else f"{help_text} (not available in this engine yet)")
            button.clicked.connect(lambda _=False, f=fmt: self.export(f))
            row.addWidget(button)
            self.buttons[fmt] = button
        self.stop_button = QPushButton("Stop", enabled=False)
        self.stop_button.clicked.connect(self.stop)
        row.addWidget(self.stop_button)
        self._process: QProcess | None = None
        self._stdout = b""
        self._stderr = b""
        layout = QVBoxLayout(self)
        layout.addWidget(self.run_dir)
        layout.addWidget(self.adapter_label)
        layout.addLayout(row)
        layout.addWidget(self.busy)
        layout.addWidget(self.output, 1)

    def set_run(self, folder: Path) -> None:
        self.run_dir.setText(str(folder))

    def _show_adapter(self, text: str) -> None:
        adapter = Path(text.strip()) / "adapter"
        if text.strip() and (adapter / "adapter_config.json").is_file():
            self.adapter_label.setText(f"PEFT adapter (loads with peft.PeftModel.from_pretrained): {adapter}")
        else:
            self.adapter_label.setText("PEFT adapter: this folder has none yet (the run has not finished)")

    def is_running(self) -> bool:
        return self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning

    def export(self, fmt: str) -> None:
        run_dir = self.run_dir.text().strip()
        if not run_dir or self.is_running():
            return
        process = QProcess(self)
        process.setWorkingDirectory(str(REPO_ROOT))
        process.readyReadStandardOutput.connect(lambda: self._read(process, stdout=True))
        process.readyReadStandardError.connect(lambda: self._read(process, stdout=False))
        process.finished.connect(lambda code, _status: self._finished(process, fmt, code))
        self._process = process
        self._stdout = self._stderr = b""
        self.output.appendPlainText(f"$ python -m engine export {run_dir} --format {fmt}")
        self.busy.show()
        for button in self.buttons.values():
            button.setEnabled(False)
        self.stop_button.setEnabled(True)
        process.start(sys.executable, ["-m", "engine", "export", run_dir, "--format", fmt])

    def _read(self, process: QProcess, stdout: bool) -> None:
        if stdout:
            self._stdout += bytes(process.readAllStandardOutput())
            return
        self._stderr += bytes(process.readAllStandardError())
        *lines, self._stderr = self._stderr.split(b"\n")
        for line in lines:
            if line.strip():
                self.output.appendPlainText(line.decode("utf-8", errors="replace").rstrip())

    def _finished(self, process: QProcess, fmt: str, code: int) -> None:
        self._read(process, stdout=True)
        self._read(process, stdout=False)
        if self._stderr.strip():
            self.output.appendPlainText(self._stderr.decode("utf-8", errors="replace").rstrip())
        lines = [line.strip() for line in self._stdout.decode("utf-8", errors="replace").splitlines()]
        path = next((line for line in reversed(lines) if line), "") if code == 0 else ""
        if path:
            self.output.appendPlainText(f"— exported {fmt}: {path}")
        elif code == STOPPED_EXIT_CODE:
            self.output.appendPlainText(f"— export {fmt} stopped")
        else:
            self.output.appendPlainText(f"— export {fmt} failed (exit code {code}); see the lines above")
        self.busy.hide()
        self.stop_button.setEnabled(False)
        for name, button in self.buttons.items():
            button.setEnabled(format_available(name))
        self.sig_export_finished.emit(fmt, code, path)

    def stop(self) -> None:
        """Stop the export; on SIGTERM the engine removes the file it was writing."""
        if self.is_running():
            self._process.terminate()

    def kill(self) -> None:
        """End the export now (window closing): a stop first, so no partial file stays."""
        if self.is_running():
            self._process.terminate()
            if not self._process.waitForFinished(3000):
                self._process.kill()
                self._process.waitForFinished(3000)
