"""The Playground tab: base and fine-tuned answers side by side for the same prompt.

Each side is its own engine process (`python -m engine chat --adapter RUN --adapter-scale 0|1
--protocol`), so loading and generating never block the window and the two answers stream
in together. Stop sends `stop` on stdin, then terminates, then kills. Classification runs also
show the label-word probabilities before (base) and after (fine-tuned) training.

Only the protocol module of the engine is imported here: no torch, no llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal
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

from app.process import EngineProcess, ProcessEnd, engine_command

STOP_GRACE_MS = 3000  # after `stop`, how long the engine gets before it is terminated (and killed)


class ChatProcess(QObject):
    """One `python -m engine chat --protocol` process and its event stream."""

    sig_token_received = Signal(str)
    """A piece of the answer arrived."""
    sig_label_probs_received = Signal(list, list)
    """Label words and their probabilities for the prompt."""
    sig_finished = Signal(str, str)
    """The process ended: status ("completed" | "stopped" | "failed") and a message."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._process = EngineProcess(self, terminate_after_ms=STOP_GRACE_MS,
                                      kill_after_ms=STOP_GRACE_MS)
        self._process.sig_event_received.connect(self._event)
        self._process.sig_finished.connect(self._ended)

    def is_running(self) -> bool:
        return self._process.is_running()

    def start(self, args: list[str]) -> None:
        self._process.start(engine_command("chat", *args, "--protocol"))

    def stop(self) -> None:
        self._process.stop()

    def _event(self, event) -> None:
        if event.type == "token":
            self.sig_token_received.emit(str(event.data.get("text", "")))
        elif event.type == "label_probs":
            self.sig_label_probs_received.emit(list(event.data.get("words", [])),
                                               list(event.data.get("probabilities", [])))

    def _ended(self, end: ProcessEnd) -> None:
        status = end.status if end.status in ("completed", "stopped") else "failed"
        self.sig_finished.emit(status, end.message)


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
