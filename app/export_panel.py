"""The Export tab: the run's PEFT adapter folder, and one button per format the engine exports.

The buttons come from engine.api.formats.FORMATS (a torch-free table), so a format the engine gains
shows up here without an app change. Each export runs `python -m engine export RUN --format F`
in its own process; its stderr lines are the progress, its last stdout line the exported path.
Stop sends SIGTERM, on which the engine removes the file it was writing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QProcess, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.engine_client import REPO_ROOT, engine_command
from app.json_tool import JsonTool
from engine.api.formats import FORMATS

# (label, --quantize value) for the ExecuTorch export.
EXECUTORCH_TARGETS = [
    ("Android, XNNPACK fp32 (exact)", "none"),
    ("Android, XNNPACK 8da4w (int8 activations, int4 weights: smaller, approximate)", "8da4w"),
]
_STAGE = re.compile(r"^executorch: stage (\d+)/(\d+) (\w+)(?:: (.*)| done in ([\d.]+) s)$")

STOPPED_EXIT_CODE = 130  # the engine's exit code after SIGTERM or Ctrl+C
KILL_AFTER_MS = 3000  # after SIGTERM: time to remove the file being written


class ExportPanel(QWidget):
    """Exports one run folder; one engine process (export or push) at a time."""

    sig_export_finished = Signal(str, int, str)
    """Format, exit code, and the exported path ("" when the export failed)."""

    sig_push_finished = Signal(int, str)
    """Exit code, and where the files landed ("SERIAL:/path", "" when the push failed)."""

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
        for fmt, spec in FORMATS.items():
            button = QPushButton(f"Export {fmt}")
            button.setToolTip(spec.help)
            button.clicked.connect(lambda _=False, f=fmt: self.export(f))
            row.addWidget(button)
            self.buttons[fmt] = button
        self.stop_button = QPushButton("Stop", enabled=False)
        self.stop_button.clicked.connect(self.stop)
        row.addWidget(self.stop_button)
        self.target = QComboBox()
        for label, quantize in EXECUTORCH_TARGETS:
            self.target.addItem(label, quantize)
        self.target.setToolTip("what the ExecuTorch export writes (Export executorch)")
        self.result_label = QLabel("", wordWrap=True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.devices = QComboBox()
        self.devices.addItem("press Refresh to look for a phone", None)
        self.devices.currentIndexChanged.connect(self._update_push)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("list Android devices with adb")
        self.refresh_button.clicked.connect(self.refresh_devices)
        self.push_button = QPushButton("Push to phone", enabled=False)
        self.push_button.clicked.connect(self.push)
        self.device_tool = JsonTool("push", self)
        self.device_tool.sig_answered.connect(self.show_devices)
        self.export_folder: Path | None = None  # the latest ExecuTorch export of this run
        self._process: QProcess | None = None
        self._stdout = b""
        self._stderr = b""
        executorch_row = QHBoxLayout()
        executorch_row.addWidget(QLabel("ExecuTorch target:"))
        executorch_row.addWidget(self.target, 1)
        phone_row = QHBoxLayout()
        phone_row.addWidget(QLabel("Phone:"))
        phone_row.addWidget(self.devices, 1)
        phone_row.addWidget(self.refresh_button)
        phone_row.addWidget(self.push_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.run_dir)
        layout.addWidget(self.adapter_label)
        layout.addLayout(row)
        layout.addLayout(executorch_row)
        layout.addWidget(self.busy)
        layout.addWidget(self.result_label)
        layout.addLayout(phone_row)
        layout.addWidget(self.output, 1)

    def set_run(self, folder: Path) -> None:
        self.run_dir.setText(str(folder))

    def _show_adapter(self, text: str) -> None:
        adapter = Path(text.strip()) / "adapter"
        if text.strip() and (adapter / "adapter_config.json").is_file():
            self.adapter_label.setText(f"PEFT adapter (loads with peft.PeftModel.from_pretrained): {adapter}")
        else:
            self.adapter_label.setText("PEFT adapter: this folder has none yet (the run has not finished)")
        exports = sorted((Path(text.strip()) / "export").glob("executorch*/metadata.json"),
                         key=lambda p: p.stat().st_mtime) if text.strip() else []
        self._show_executorch(exports[-1].parent if exports else None)

    def is_running(self) -> bool:
        return self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning

    def export(self, fmt: str) -> None:
        run_dir = self.run_dir.text().strip()
        if not run_dir or self.is_running():
            return
        args = ["export", run_dir, "--format", fmt]
        if fmt == "executorch":
            args += ["--quantize", self.target.currentData()]
        self._start(args, lambda code, path: self._export_finished(fmt, code, path))

    def push(self) -> None:
        serial = self.devices.currentData()
        if self.export_folder is None or serial is None or self.is_running():
            return
        self._start(["push", str(self.export_folder), "--serial", serial], self._push_finished)

    def _start(self, args: list[str], finished: Callable[[int, str], None]) -> None:
        process = QProcess(self)
        process.setWorkingDirectory(str(REPO_ROOT))
        process.readyReadStandardOutput.connect(lambda: self._read(process, stdout=True))
        process.readyReadStandardError.connect(lambda: self._read(process, stdout=False))
        process.finished.connect(lambda code, _status: self._finished(process, code, finished))
        process.errorOccurred.connect(lambda error: self._failed_to_start(process, error, finished))
        self._process = process
        self._stdout = self._stderr = b""
        self.output.appendPlainText(f"$ python -m engine {' '.join(args)}")
        self.busy.setRange(0, 0)
        self.busy.setFormat("")
        self.busy.show()
        program, *arguments = engine_command(*args)
        process.start(program, arguments)
        self._enable_buttons()

    def _read(self, process: QProcess, stdout: bool) -> None:
        if stdout:
            self._stdout += bytes(process.readAllStandardOutput())
            return
        self._stderr += bytes(process.readAllStandardError())
        *lines, self._stderr = self._stderr.split(b"\n")
        for line in lines:
            if line.strip():
                self._show_line(line.decode("utf-8", errors="replace").rstrip())

    def _show_line(self, line: str) -> None:
        self.output.appendPlainText(line)
        stage = _STAGE.match(line)
        if stage is not None:
            index, count, name, _what, seconds = stage.groups()
            done = int(index) if seconds is not None else int(index) - 1
            self.busy.setRange(0, int(count))
            self.busy.setFormat(f"stage {index}/{count}: {name}" +
                                (f" done in {float(seconds):.1f} s" if seconds else "…"))
            self.busy.setValue(done)

    def _finished(self, process: QProcess, code: int, finished: Callable[[int, str], None]) -> None:
        self._read(process, stdout=True)
        self._read(process, stdout=False)
        if self._stderr.strip():
            self._show_line(self._stderr.decode("utf-8", errors="replace").rstrip())
        lines = [line.strip() for line in self._stdout.decode("utf-8", errors="replace").splitlines()]
        path = next((line for line in reversed(lines) if line), "") if code == 0 else ""
        self.busy.hide()
        self._process = None
        self._enable_buttons()
        finished(code, path)

    def _failed_to_start(self, process: QProcess, error: QProcess.ProcessError,
                         finished: Callable[[int, str], None]) -> None:
        # No `finished` follows a process that never started: end the work here.
        if process is not self._process or error != QProcess.ProcessError.FailedToStart:
            return
        self.output.appendPlainText(f"the engine could not be started ({process.program()}: "
                                    f"{process.errorString()})")
        self.busy.hide()
        self._process = None
        process.deleteLater()
        self._enable_buttons()
        finished(-1, "")

    def _export_finished(self, fmt: str, code: int, path: str) -> None:
        if path:
            self.output.appendPlainText(f"— exported {fmt}: {path}")
        elif code == STOPPED_EXIT_CODE:
            self.output.appendPlainText(f"— export {fmt} stopped")
        else:
            self.output.appendPlainText(f"— export {fmt} failed (exit code {code}); see the lines above")
        if fmt == "executorch" and path:
            self._show_executorch(Path(path))
            self.refresh_devices()  # an export just made: the phone is the likely next step
        self.sig_export_finished.emit(fmt, code, path)

    def _push_finished(self, code: int, where: str) -> None:
        if where:
            self.output.appendPlainText(f"— pushed and verified: {where}")
        elif code == STOPPED_EXIT_CODE:
            self.output.appendPlainText("— push stopped")
        else:
            self.output.appendPlainText(f"— push failed (exit code {code}); see the lines above")
        self.sig_push_finished.emit(code, where)

    def _show_executorch(self, folder: Path | None) -> None:
        """The export's verification numbers from its metadata.json."""
        self.export_folder = None
        self.result_label.setText("")
        if folder is not None:
            try:
                metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
                report = metadata["verification"]
                # The adapter layout: a small per-run program plus the base's shared weights.
                sizes = f"model.pte {metadata['program_bytes'] / 2**20:.1f} MiB" + (
                    f" + foundation.ptd {metadata['data_bytes'] / 2**20:.1f} MiB (the base, "
                    "shared by this base's exports)" if metadata.get("data_bytes") else "")
                self.result_label.setText(
                    f"ExecuTorch export ({metadata['export']['quantize']}, {sizes}): {folder}\n"
                    f"checked in the ExecuTorch runtime against PyTorch with the adapter on "
                    f"{report['prompts']} held-out prompts ({report['positions']} positions): "
                    f"max |Δlogit| {report['max_abs_diff']:.3g}, top-1 agreement "
                    f"{report['top1_agreement']:.1%}")
                self.export_folder = folder
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.result_label.setText(f"{folder}: cannot read metadata.json ({exc})")
        self._update_push()

    def refresh_devices(self) -> None:
        self.refresh_button.setEnabled(False)
        self.devices.clear()
        self.devices.addItem("looking for phones…", None)
        self.device_tool.run("--list")

    def show_devices(self, answer: dict) -> None:
        """`push --list --json`'s answer: ready devices are choices, others say what is wrong."""
        self.refresh_button.setEnabled(True)
        self.devices.clear()
        errors = answer.get("errors") or []
        devices = answer.get("devices") or []
        for device in devices:
            free = device.get("free_bytes")
            label = f"{device.get('model') or 'Android device'} ({device['serial']})" + \
                (f", {free / 2**30:.1f} GiB free" if free is not None else "")
            if device.get("ready"):
                self.devices.addItem(label, device["serial"])
            else:
                self.devices.addItem(f"{label}: {device.get('state')}", None)
        if errors:
            self.devices.addItem(errors[0].get("message", "adb failed"), None)
        elif not devices:
            self.devices.addItem("no phone connected (USB debugging on? press Refresh)", None)
        ready = next((i for i in range(self.devices.count()) if self.devices.itemData(i)), 0)
        self.devices.setCurrentIndex(ready)
        self._update_push()

    def _update_push(self) -> None:
        ready = self.devices.currentData() is not None and self.export_folder is not None
        self.push_button.setEnabled(ready and not self.is_running())
        self.push_button.setToolTip(
            "" if ready else "needs an ExecuTorch export of this run and a connected phone")

    def _enable_buttons(self) -> None:
        running = self.is_running()
        for button in self.buttons.values():
            button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self._update_push()

    def stop(self) -> None:
        """Stop the export or push; on SIGTERM the engine removes the file it was writing."""
        if self.is_running():
            self._process.terminate()

    def kill(self) -> None:
        """End the work (window closing): a stop first, so no partial file stays, then a kill
        if the engine has not ended after KILL_AFTER_MS."""
        self.device_tool.kill()
        if self.is_running():
            self._process.terminate()
            # Bound to the process: the timer goes with it, and a kill after its end is a no-op.
            QTimer.singleShot(KILL_AFTER_MS, self._process, self._process.kill)
