"""The Playground tab: base and fine-tuned answers side by side for the same prompt.

Each side is its own engine process (`python -m engine chat --adapter RUN --adapter-scale 0|1
--json-stream`), so loading and generating never block the window and the two answers stream
in together. Stop sends `stop` on stdin, then terminates, then kills. Classification runs also
show the label-word probabilities before (base) and after (fine-tuned) training.

Only the protocol module of the engine is imported here: no torch, no llama.cpp.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.engine_client import engine_command
from engine.api.protocol import STOP_COMMAND, ProtocolError, decode

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_MS = 3000  # after `stop`, how long the engine gets before it is terminated


class ChatProcess(QObject):
    """One `python -m engine chat --json-stream` process and its event stream."""

    sig_token_received = Signal(str)
    """A piece of the answer arrived."""
    sig_label_probs_received = Signal(list, list)
    """Label words and their probabilities for the prompt."""
    sig_finished = Signal(str, str)
    """The process ended: status ("completed" | "stopped" | "failed") and a message."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._process: QProcess | None = None
        self._buffer = b""
        self._status: str | None = None
        self._message = ""
        self._stderr_tail = b""

    def is_running(self) -> bool:
        return self._process is not None

    def start(self, args: list[str]) -> None:
        process = QProcess(self)
        environment = QProcessEnvironment.systemEnvironment()
        # The engine package sits beside app/; the child must find it whatever the cwd.
        paths = [str(REPO_ROOT), environment.value("PYTHONPATH", "")]
        environment.insert("PYTHONPATH", ":".join(p for p in paths if p))
        process.setProcessEnvironment(environment)
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._process_finished)
        process.errorOccurred.connect(self._process_error)
        self._process, self._buffer, self._status, self._message = process, b"", None, ""
        self._stderr_tail = b""
        program, *arguments = engine_command("chat", *args, "--json-stream")
        process.start(program, arguments)

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        process.write(f"{STOP_COMMAND}\n".encode())
        QTimer.singleShot(STOP_GRACE_MS, lambda: self._escalate(process))

    def _escalate(self, process: QProcess) -> None:
        if process is self._process and process.state() != QProcess.ProcessState.NotRunning:
            process.terminate()
            # Bound to the process: the timer goes with it, and a kill after its end is a no-op.
            QTimer.singleShot(STOP_GRACE_MS, process, process.kill)

    def _read_stderr(self) -> None:
        if self._process is not None:
            self._stderr_tail = (self._stderr_tail + bytes(self._process.readAllStandardError()))[-2000:]

    def _read_stdout(self) -> None:
        if self._process is None:
            return
        self._buffer += bytes(self._process.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._handle(line.decode("utf-8", errors="replace"))

    def _handle(self, line: str) -> None:
        try:
            event = decode(line)
        except ProtocolError:
            return  # not an event line; the engine keeps stdout for events, so this is noise
        if event.type == "token":
            self.sig_token_received.emit(str(event.data.get("text", "")))
        elif event.type == "label_probs":
            self.sig_label_probs_received.emit(list(event.data.get("words", [])),
                                               list(event.data.get("probabilities", [])))
        elif event.type == "error":
            self._message = str(event.data.get("message", ""))
        elif event.type == "done":
            self._status = str(event.data.get("status", "failed"))

    def _process_finished(self, *_) -> None:
        self._read_stdout()
        self._finish()

    def _process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._message = f"could not start the engine ({sys.executable})"
            self._finish()

    def _finish(self) -> None:
        if self._process is None:
            return  # finished and errorOccurred can both arrive; report once
        process, self._process = self._process, None
        process.deleteLater()
        status = self._status
        if status is None:
            status = "failed"
            tail = self._stderr_tail.decode("utf-8", errors="replace").strip().splitlines()
            self._message = self._message or "the engine stopped without finishing" + (
                f": {tail[-1]}" if tail else "")
        self.sig_finished.emit(status, self._message)


class AnswerPane(QWidget):
    """One side: a title, the streamed answer, the label-word probabilities, the status."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.answer = QPlainTextEdit(readOnly=True)
        self.probabilities = QLabel("")
        self.status = QLabel("")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"<b>{title}</b>"))
        layout.addWidget(self.answer, 1)
        layout.addWidget(self.probabilities)
        layout.addWidget(self.status)

    def clear(self) -> None:
        self.answer.clear()
        self.probabilities.setText("")
        self.status.setText("loading…")

    def append(self, text: str) -> None:
        self.answer.moveCursor(self.answer.textCursor().MoveOperation.End)
        self.answer.insertPlainText(text)
        self.status.setText("generating…")

    def show_probabilities(self, words: list, probabilities: list) -> None:
        self.probabilities.setText("   ".join(
            f"P({str(w).strip()!r}) = {float(p):.3f}" for w, p in zip(words, probabilities, strict=False)))

    def finish(self, status: str, message: str) -> None:
        self.status.setText(status if not message else f"{status}: {message}")


class PlaygroundWidget(QWidget):
    """Prompt once, read the base model's and the fine-tuned model's answers side by side."""

    sig_generation_finished = Signal()
    """Both sides have finished (completed, stopped or failed)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run_dir = QLineEdit(placeholderText="run folder (holds config.yaml and adapter/)")
        self.prompt = QPlainTextEdit(placeholderText="Ask something…")
        self.prompt.setMaximumHeight(90)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.1, value=0.7)
        self.temperature.setToolTip("0 = greedy: the same answer every time")
        self.top_p = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05, value=0.9)
        self.max_tokens = QSpinBox(minimum=1, maximum=4096, value=128)
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop", enabled=False)
        self.base = AnswerPane("Base model")
        self.tuned = AnswerPane("Fine-tuned")
        self._sides = [(self.base, ChatProcess(self), "0"), (self.tuned, ChatProcess(self), "1")]
        for pane, process, _ in self._sides:
            process.sig_token_received.connect(pane.append)
            process.sig_label_probs_received.connect(pane.show_probabilities)
            process.sig_finished.connect(pane.finish)
            process.sig_finished.connect(self._side_finished)

        settings = QGridLayout()
        for column, (label, widget) in enumerate((("Temperature", self.temperature),
                                                  ("Top-p", self.top_p),
                                                  ("Max tokens", self.max_tokens))):
            settings.addWidget(QLabel(label), 0, 2 * column)
            settings.addWidget(widget, 0, 2 * column + 1)
        buttons = QHBoxLayout()
        buttons.addLayout(settings)
        buttons.addStretch(1)
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        answers = QHBoxLayout()
        answers.addWidget(self.base)
        answers.addWidget(self.tuned)
        layout = QVBoxLayout(self)
        layout.addWidget(self.run_dir)
        layout.addWidget(self.prompt)
        layout.addLayout(buttons)
        layout.addLayout(answers, 1)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stop)

    def set_run(self, run_dir: str | Path) -> None:
        self.run_dir.setText(str(run_dir))

    def is_generating(self) -> bool:
        return any(process.is_running() for _, process, _ in self._sides)

    def send(self) -> None:
        prompt = self.prompt.toPlainText().strip()
        run_dir = self.run_dir.text().strip()
        if not prompt or not run_dir or self.is_generating():
            return
        common = ["--adapter", run_dir, "--prompt", prompt,
                  "--temperature", f"{self.temperature.value():g}",
                  "--top-p", f"{self.top_p.value():g}", "--max-tokens", str(self.max_tokens.value())]
        self.send_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        for pane, process, scale in self._sides:
            pane.clear()
            process.start([*common, "--adapter-scale", scale])

    def stop(self) -> None:
        for _, process, _ in self._sides:
            process.stop()

    def _side_finished(self, *_) -> None:
        if not self.is_generating():
            self.send_button.setEnabled(True)
            self.stop_button.setEnabled(False)
            self.sig_generation_finished.emit()
