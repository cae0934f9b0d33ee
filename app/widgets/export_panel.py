"""The Export tab: the run's PEFT adapter folder, and one button per format the engine exports.

The buttons come from engine.api.formats.FORMATS (a torch-free table), so a format the engine gains
shows up here without an app change. Each export runs `python -m engine export RUN --format F
--protocol` in its own process (app.process.EngineProcess): its status, progress and log events
are the progress bar and the lines below it, its artifact event the exported path; no text is
parsed, and the engine's stderr (library chatter) is shown only as its last lines after a
failure. The newest export of the run is described with its verification verdict, and can be
opened in the file manager or, for GGUF, loaded into Ollama with the copied command. An
ExecuTorch export or a merged GGUF model (for PocketPal / ChatterUI, into the phone's Download
folder) is pushed to a connected phone with `push`; where it landed and what to open on the phone
come from its artifact event. Stop sends `stop`, on which the engine removes the file it was
writing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication
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

from app.exports import describe, modelfile, newest_export, ollama_command, phone_exports, phone_label
from app.json_tool import JsonTool
from app.process import EngineProcess, ProcessEnd, engine_command
from app.widgets.elided import ElidedLabel
from engine.api.formats import FORMATS

# (label, --quantize value) for the ExecuTorch export.
EXECUTORCH_TARGETS = [
    ("Android, XNNPACK fp32 (exact)", "none"),
    ("Android, XNNPACK 8da4w (int8 activations, int4 weights: smaller, approximate)", "8da4w"),
]
# (label, --outtype value) for the merged GGUF model: what llama.cpp apps (PocketPal, Ollama, LM
# Studio) are usually given.
MERGED_OUTTYPES = [
    ("Q4_K_M (4-bit, about a quarter of F16: what phones run)", "q4_k_m"),
    ("Q8_0 (8-bit, about half of F16, close to exact)", "q8_0"),
    ("F16 (16-bit, exact)", "f16"),
]
PHONE_LINES = 4  # where a push landed, then what to open on the phone (PocketPal, ChatterUI)
STDERR_TAIL_LINES = 20  # of the engine's stderr, shown after a failure
STOPPED_EXIT_CODE = 130  # the engine's exit code after a stop, SIGTERM or Ctrl+C
# After `stop`: time to remove the file being written. A stop lands at the next Python bytecode,
# so a long C call (a tensor write, llama.cpp loading) delays it: seconds on a loaded laptop.
TERMINATE_AFTER_MS = 10_000
KILL_AFTER_MS = 3000  # after terminate


class ExportPanel(QWidget):
    """Exports one run folder; one engine process (export or push) at a time."""

    sig_export_finished = Signal(str, int, str)
    """Format, exit code, and the exported path ("" when the export failed)."""

    sig_push_finished = Signal(int, str)
    """Exit code, and where the export landed ("SERIAL:/path", "" when the push failed)."""

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
        self.outtype = QComboBox()
        for label, outtype in MERGED_OUTTYPES:
            self.outtype.addItem(label, outtype)
        self.outtype.setToolTip("the weights of the merged model (Export merged-gguf)")
        self.result_label = QLabel("", wordWrap=True)  # the newest export and its verification
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.open_folder_button = QPushButton("Open folder", enabled=False)
        self.open_folder_button.setToolTip("show the newest export in the file manager")
        self.open_folder_button.clicked.connect(self.open_folder)
        self.ollama_button = QPushButton("Copy the ollama create command", enabled=False)
        self.ollama_button.setToolTip("`ollama create NAME -f X.Modelfile` for the newest GGUF "
                                      "export, to paste in a terminal")
        self.ollama_button.clicked.connect(self.copy_ollama_command)
        self.devices = QComboBox()
        self.devices.addItem("press Refresh to look for a phone", None)
        self.devices.currentIndexChanged.connect(self._update_push)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("list Android devices with adb")
        self.refresh_button.clicked.connect(self.refresh_devices)
        self.push_button = QPushButton("Push to phone", enabled=False)
        self.push_button.clicked.connect(self.push)
        self.push_choice = QComboBox()  # the run's exports a phone takes; data: the path
        self.push_choice.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.push_choice.setMinimumContentsLength(24)  # long labels elide, not widen the window
        self.push_choice.currentIndexChanged.connect(self._update_push)
        self.push_choice.setToolTip("what Push to phone copies: an ExecuTorch export, or a merged "
                                    "GGUF model for PocketPal / ChatterUI (a GGUF adapter is not "
                                    "offered: those apps cannot apply a LoRA adapter)")
        self.phone_label = ElidedLabel(lines=PHONE_LINES)  # where the push landed, what next
        self.phone_label.hide()
        self.device_tool = JsonTool("push", self)
        self.device_tool.sig_answered.connect(self.show_devices)
        self.latest_export: Path | None = None  # the newest export of this run, any format
        self._process = EngineProcess(self, terminate_after_ms=TERMINATE_AFTER_MS,
                                      kill_after_ms=KILL_AFTER_MS)
        self._process.sig_event_received.connect(self._event)
        self._process.sig_log_received.connect(self._log)
        self._process.sig_finished.connect(self._ended)
        self._when_done: Callable[[int, str], None] | None = None  # the work in flight's end
        self._artifact = ""
        self._next_step = ""  # the push artifact's: what to open on the phone
        executorch_row = QHBoxLayout()
        executorch_row.addWidget(QLabel("ExecuTorch target:"))
        executorch_row.addWidget(self.target, 1)
        gguf_row = QHBoxLayout()
        gguf_row.addWidget(QLabel("Merged GGUF weights:"))
        gguf_row.addWidget(self.outtype, 1)
        result_row = QHBoxLayout()
        result_row.addWidget(self.open_folder_button)
        result_row.addWidget(self.ollama_button)
        result_row.addStretch(1)
        push_row = QHBoxLayout()
        push_row.addWidget(QLabel("To the phone:"))
        push_row.addWidget(self.push_choice, 1)
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
        layout.addLayout(gguf_row)
        layout.addWidget(self.busy)
        layout.addWidget(self.result_label)
        layout.addLayout(result_row)
        layout.addLayout(push_row)
        layout.addLayout(phone_row)
        layout.addWidget(self.phone_label)
        layout.addWidget(self.output, 1)
        self._list_phone_exports()

    def set_run(self, folder: Path) -> None:
        if self.run_dir.text() == str(folder):  # no textChanged: read its exports again anyway
            self._show_adapter(str(folder))
        self.run_dir.setText(str(folder))

    def _show_adapter(self, text: str) -> None:
        adapter = Path(text.strip()) / "adapter"
        if text.strip() and (adapter / "adapter_config.json").is_file():
            self.adapter_label.setText(f"PEFT adapter (loads with peft.PeftModel.from_pretrained): {adapter}")
        else:
            self.adapter_label.setText("PEFT adapter: this folder has none yet (the run has not finished)")
        self.phone_label.hide()  # an earlier run's push
        self._list_phone_exports()
        self._show_export(newest_export(Path(text.strip())) if text.strip() else None)

    def _list_phone_exports(self) -> None:
        """The run's exports a phone takes, newest first (the one just exported on top)."""
        run_dir = self.run_dir.text().strip()
        self.push_choice.clear()
        for export in phone_exports(Path(run_dir)) if run_dir else []:
            self.push_choice.addItem(phone_label(export), str(export))
        if not self.push_choice.count():
            self.push_choice.addItem("no ExecuTorch or merged GGUF export of this run yet", None)
        self._update_push()

    def is_running(self) -> bool:
        return self._process.is_running()

    def export(self, fmt: str) -> None:
        run_dir = self.run_dir.text().strip()
        if not run_dir or self.is_running():
            return
        args = ["export", run_dir, "--format", fmt]
        if fmt == "executorch":
            args += ["--quantize", self.target.currentData()]
        elif fmt == "merged-gguf":
            args += ["--outtype", self.outtype.currentData()]
        self._start(args, lambda code, path: self._export_finished(fmt, code, path))

    def push(self) -> None:
        serial, export = self.devices.currentData(), self.push_choice.currentData()
        if export is None or serial is None or self.is_running():
            return
        self.phone_label.hide()
        self._start(["push", export, "--serial", serial], self._push_finished)

    def _start(self, args: list[str], finished: Callable[[int, str], None]) -> None:
        self._when_done, self._artifact, self._next_step = finished, "", ""
        self.output.appendPlainText(f"$ python -m engine {' '.join(args)}")
        self.busy.setRange(0, 0)
        self.busy.setFormat("")
        self.busy.show()
        self._process.start(engine_command(*args, "--protocol"))
        self._enable_buttons()

    def _event(self, event) -> None:
        data = event.data
        if event.type == "status":
            self.output.appendPlainText(f"{data.get('state')}: {data.get('message')}")
        elif event.type == "progress" and "stages" in data:  # export: stage I of N
            index, count, seconds = int(data["stage"]), int(data["stages"]), data.get("seconds")
            self.busy.setRange(0, count)
            self.busy.setFormat(f"stage {index}/{count}: {data.get('name')}" +
                                (f" done in {float(seconds):.1f} s" if seconds is not None else "…"))
            self.busy.setValue(index if seconds is not None else index - 1)
        elif event.type == "progress" and "percent" in data:  # push: of all bytes
            self.busy.setRange(0, 100)
            self.busy.setFormat(f"{data.get('file')} {data.get('file_percent')}% (all files %p%)")
            self.busy.setValue(int(data["percent"]))
        elif event.type in ("log", "error"):
            self.output.appendPlainText(str(data.get("message")))
        elif event.type == "artifact":
            self._artifact = str(data.get("path", ""))
            self._next_step = str(data.get("next_step") or "")

    def _log(self, level: str, line: str) -> None:
        if level != "stderr":  # ours (a malformed line, a stop that escalates); stderr is chatter
            self.output.appendPlainText(line)

    def _ended(self, end: ProcessEnd) -> None:
        if end.status == "crashed":  # no error event said why
            self.output.appendPlainText(end.message)
        tail = list(self._process.stderr_tail)[-STDERR_TAIL_LINES:]
        if end.exit_code not in (0, STOPPED_EXIT_CODE) and tail:
            self.output.appendPlainText("the engine's last lines on stderr:\n" + "\n".join(tail))
        self.busy.hide()
        self._enable_buttons()
        finished, self._when_done = self._when_done, None
        finished(end.exit_code, self._artifact if end.exit_code == 0 else "")

    def _export_finished(self, fmt: str, code: int, path: str) -> None:
        if path:
            self.output.appendPlainText(f"— exported {fmt}: {path}")
            self._show_export(Path(path))
        elif code == STOPPED_EXIT_CODE:
            self.output.appendPlainText(f"— export {fmt} stopped")
        else:
            self.output.appendPlainText(f"— export {fmt} failed (exit code {code}); see the lines above")
        if path and fmt in ("executorch", "merged-gguf"):
            self._list_phone_exports()
        if fmt == "executorch" and path:
            self.refresh_devices()  # an export just made: the phone is the likely next step
        self.sig_export_finished.emit(fmt, code, path)

    def _push_finished(self, code: int, where: str) -> None:
        if where:
            self.output.appendPlainText(f"— pushed and verified: {where}")
            landed = "\n".join(filter(None, [f"On the phone, checked: {where}", self._next_step]))
            self.phone_label.setText(landed)
            self.phone_label.setToolTip(landed)
            self.phone_label.show()
        elif code == STOPPED_EXIT_CODE:
            self.output.appendPlainText("— push stopped")
        else:
            self.output.appendPlainText(f"— push failed (exit code {code}); see the lines above")
        self.sig_push_finished.emit(code, where)

    def _show_export(self, export: Path | None) -> None:
        """The newest export: what it is and its verification verdict, and its buttons."""
        self.latest_export = export if export is not None and export.exists() else None
        self.result_label.setText(describe(export) if export is not None else "")
        self.open_folder_button.setEnabled(self.latest_export is not None)
        self.ollama_button.setEnabled(export is not None and modelfile(export) is not None)

    def open_folder(self) -> None:
        """The newest export's folder in the file manager."""
        if self.latest_export is not None:
            folder = self.latest_export if self.latest_export.is_dir() else self.latest_export.parent
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    def copy_ollama_command(self) -> None:
        """`ollama create …` for the newest GGUF export, on the clipboard."""
        path = modelfile(self.latest_export) if self.latest_export is not None else None
        if path is not None:
            command = ollama_command(path)
            QGuiApplication.clipboard().setText(command)
            self.output.appendPlainText(f"— copied: {command}")

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
        ready = self.devices.currentData() is not None and self.push_choice.currentData() is not None
        self.push_button.setEnabled(ready and not self.is_running())
        self.push_button.setToolTip(
            "" if ready else "needs an ExecuTorch or merged GGUF export of this run and a "
                             "connected phone")

    def _enable_buttons(self) -> None:
        running = self.is_running()
        for button in self.buttons.values():
            button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self._update_push()

    def stop(self) -> None:
        """Stop the export or push: the engine removes the file it was writing; terminated
        after TERMINATE_AFTER_MS and killed KILL_AFTER_MS later if it has not ended."""
        self._process.stop()

    def kill(self) -> None:
        """End the work (window closing) without waiting for it: the stop sequence, so no
        partial file stays."""
        self.device_tool.kill()
        self._process.stop()
