"""The Playground tab: a conversation with the base model and the fine-tuned one, side by side.

Each side is its own engine chat session (`python -m engine chat --adapter RUN --adapter-scale
0|1 --protocol`), started by the first Send: it loads the model once and then answers every
message in the same process, so only the first answer pays for the load. Each Send is one
request on the session's stdin: that side's conversation so far (the user's turns and its own
answers), the system prompt, the template and the sampling settings. New chat starts the
conversation over; Stop ends the answers (`stop` on stdin) and keeps the sessions; another run
starts new ones. Classification runs also show the label-word probabilities before (base) and
after (fine-tuned) training, and default to the raw prompt they were trained on.

Only the protocol module of the engine is imported here: no torch, no llama.cpp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PySide6.QtCore import QObject, QSignalBlocker, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
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
from app.runs import has_adapter, list_runs
from engine.api.protocol import STOP_COMMAND

STOP_GRACE_MS = 3000  # after `stop`, how long the engine gets before it is terminated (and killed)
TEMPLATES = [("Chat template", "chat"),
             ("Raw prompt (how classification runs are trained)", "raw")]


class ChatProcess(QObject):
    """One `python -m engine chat --protocol` session: started by the first question, kept for
    the next ones while the command line stays the same."""

    sig_token_received = Signal(str)
    """A piece of the answer arrived."""
    sig_label_probs_received = Signal(list, list)
    """Label words and their probabilities for the question."""
    sig_answer_finished = Signal(dict)
    """The answer ended: the engine's `answer` event (status "completed" | "stopped" | "failed",
    message, tokens, seconds, template, messages); "failed" and why when the session ended first."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._process = EngineProcess(self, terminate_after_ms=STOP_GRACE_MS,
                                      kill_after_ms=STOP_GRACE_MS)
        self._process.sig_event_received.connect(self._event)
        self._process.sig_finished.connect(self._ended)
        self._args: list[str] = []  # the running session's command line
        self._answering = False

    def is_answering(self) -> bool:
        return self._answering

    def has_session(self, args: list[str]) -> bool:
        """A session for `args` runs: its model is loaded, or loading."""
        return self._process.is_running() and args == self._args

    def ask(self, args: list[str], request: dict) -> None:
        """Send `request` (engine/api/protocol.py, "Chat") to the session for `args`, started
        now if there is none; one for other args is ended first (it holds another model)."""
        if not self.has_session(args):
            self._process.abandon()
            self._process.start(engine_command("chat", *args, "--protocol"))
            self._args = args
        self._answering = True
        self._process.send(json.dumps(request))

    def stop_answer(self) -> None:
        """End the answer after the current token; the session stays for the next question."""
        if self._answering:
            self._process.send(STOP_COMMAND)

    def close(self) -> None:
        """End the answer and the session (terminated, then killed, if it does not end)."""
        self._process.stop()

    def _event(self, event) -> None:
        if event.type == "token":
            self.sig_token_received.emit(str(event.data.get("text", "")))
        elif event.type == "label_probs":
            self.sig_label_probs_received.emit(list(event.data.get("words", [])),
                                               list(event.data.get("probabilities", [])))
        elif event.type == "answer" and self._answering:
            self._answering = False
            self.sig_answer_finished.emit(dict(event.data))

    def _ended(self, end: ProcessEnd) -> None:
        if self._answering:  # the session ended before the answer did: it failed to load, or crashed
            self._answering = False
            self.sig_answer_finished.emit({
                "status": "stopped" if end.status == "stopped" else "failed",
                "message": end.message or "the chat session ended"})


class AnswerPane(QWidget):
    """One side: a title, the conversation, the label-word probabilities, the status."""

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
        self.status.setText("")

    def begin(self, question: str, loading: bool) -> None:
        self.answer.appendPlainText(f"You: {question}")
        self.answer.appendPlainText("")  # the answer's paragraph
        self.probabilities.setText("")
        self.status.setText("loading…" if loading else "thinking…")

    def append(self, text: str) -> None:
        self.answer.moveCursor(self.answer.textCursor().MoveOperation.End)
        self.answer.insertPlainText(text)
        self.status.setText("generating…")

    def show_probabilities(self, words: list, probabilities: list) -> None:
        self.probabilities.setText("   ".join(
            f"P({str(w).strip()!r}) = {float(p):.3f}" for w, p in zip(words, probabilities, strict=False)))

    def finish(self, status: str, message: str) -> None:
        self.status.setText(status if not message else f"{status}: {message}")


@dataclass
class Side:
    """One side of the comparison: its pane, its chat session and its own conversation."""

    pane: AnswerPane
    process: ChatProcess
    adapter_scale: str  # "0": the base model alone, "1": with the run's adapter
    history: list[dict] = field(default_factory=list)  # the user's turns and this side's answers
    answer: list[str] = field(default_factory=list)  # the pieces of the answer in progress

    def args(self, run_dir: str) -> list[str]:
        """Its chat session's command line for the run `run_dir`."""
        return ["--adapter", run_dir, "--adapter-scale", self.adapter_scale]


def is_classification_run(folder: Path) -> bool:
    """The run scores label words: it was trained on raw prompts, not the chat template."""
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(config, dict) and (config.get("task") == "classification"
                                         or bool(config.get("label_words")))


class PlaygroundWidget(QWidget):
    """Talk to the base model and the fine-tuned model at once; read their answers side by side."""

    sig_generation_finished = Signal()
    """Both sides have finished their answer (completed, stopped or failed)."""

    def __init__(self, parent: QWidget | None = None, runs_root: Path | None = None) -> None:
        super().__init__(parent)
        self.runs_root = runs_root  # the runs the list offers: those with an adapter, newest first
        self.runs = QComboBox(editable=True, insertPolicy=QComboBox.InsertPolicy.NoInsert)
        self.runs.setToolTip("runs with an adapter, newest first (or a run folder's path)")
        self.run_dir = self.runs.lineEdit()
        self.run_dir.setPlaceholderText("run folder (holds config.yaml and adapter/)")
        self.system_prompt = QLineEdit(placeholderText="System prompt (optional)")
        self.template = QComboBox()
        for label, template in TEMPLATES:
            self.template.addItem(label, template)
        self.prompt = QPlainTextEdit(placeholderText="Ask something…")
        self.prompt.setMaximumHeight(90)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.1, value=0.7)
        self.temperature.setToolTip("0 = greedy: the same answer every time")
        self.top_p = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05, value=0.9)
        self.max_tokens = QSpinBox(minimum=1, maximum=4096, value=128)
        self.new_chat_button = QPushButton("New chat")
        self.new_chat_button.setToolTip("forget the conversation; the models stay loaded")
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop", enabled=False)
        self.base = AnswerPane("Base model")
        self.tuned = AnswerPane("Fine-tuned")
        self._sides = [Side(self.base, ChatProcess(self), "0"), Side(self.tuned, ChatProcess(self), "1")]
        self._question = ""  # the user's turn being answered
        for side in self._sides:
            side.process.sig_token_received.connect(lambda text, side=side: self._token(side, text))
            side.process.sig_label_probs_received.connect(side.pane.show_probabilities)
            side.process.sig_answer_finished.connect(
                lambda answer, side=side: self._answered(side, answer))

        run_row = QHBoxLayout()
        run_row.addWidget(QLabel("Run:"))
        run_row.addWidget(self.runs, 1)
        chat_row = QHBoxLayout()
        chat_row.addWidget(self.system_prompt, 1)
        chat_row.addWidget(QLabel("Template:"))
        chat_row.addWidget(self.template)
        settings = QGridLayout()
        for column, (label, widget) in enumerate((("Temperature", self.temperature),
                                                  ("Top-p", self.top_p),
                                                  ("Max tokens", self.max_tokens))):
            settings.addWidget(QLabel(label), 0, 2 * column)
            settings.addWidget(widget, 0, 2 * column + 1)
        buttons = QHBoxLayout()
        buttons.addLayout(settings)
        buttons.addStretch(1)
        buttons.addWidget(self.new_chat_button)
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        answers = QHBoxLayout()
        answers.addWidget(self.base)
        answers.addWidget(self.tuned)
        layout = QVBoxLayout(self)
        layout.addLayout(run_row)
        layout.addLayout(chat_row)
        layout.addWidget(self.prompt)
        layout.addLayout(buttons)
        layout.addLayout(answers, 1)
        self.run_dir.textChanged.connect(self._run_changed)
        self.new_chat_button.clicked.connect(self.new_chat)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stop_answers)
        self.refresh_runs()

    def refresh_runs(self) -> None:
        """List the runs with an adapter under the runs folder, newest first; what the run
        field holds stays."""
        runs = list_runs(self.runs_root) if self.runs_root is not None else []
        shown = self.run_dir.text()
        with QSignalBlocker(self.run_dir):
            self.runs.clear()
            self.runs.addItems([str(run.path) for run in runs if has_adapter(run.path)])
            self.run_dir.setText(shown)

    def showEvent(self, event: QShowEvent) -> None:
        self.refresh_runs()  # runs may have finished (or been renamed) since the list was made
        super().showEvent(event)

    def set_run(self, run_dir: str | Path) -> None:
        self.refresh_runs()
        self.run_dir.setText(str(run_dir))

    def is_generating(self) -> bool:
        return any(side.process.is_answering() for side in self._sides)

    def _request(self, side: Side, question: str) -> dict:
        """The chat request for `side`'s answer to `question` (engine/api/protocol.py, "Chat")."""
        return {"messages": [*side.history, {"role": "user", "content": question}],
                "system": self.system_prompt.text().strip() or None,
                "template": self.template.currentData(),
                "temperature": self.temperature.value(), "top_p": self.top_p.value(),
                "max_tokens": self.max_tokens.value()}

    def send(self) -> None:
        question = self.prompt.toPlainText().strip()
        run_dir = self.run_dir.text().strip()
        if not question or not run_dir or self.is_generating():
            return
        self._question = question
        self.prompt.clear()
        for side in self._sides:
            side.answer = []
            side.pane.begin(question, loading=not side.process.has_session(side.args(run_dir)))
            side.process.ask(side.args(run_dir), self._request(side, question))
        self._update_buttons()

    def stop_answers(self) -> None:
        """End both answers after their current token; the models stay loaded."""
        for side in self._sides:
            side.process.stop_answer()

    def stop(self) -> None:
        """End the answers and the chat sessions (the window closes); a later Send starts them
        again."""
        for side in self._sides:
            side.process.close()

    def new_chat(self) -> None:
        """Forget the conversation; the sessions stay loaded."""
        self._question = ""  # an answer still on its way joins no conversation
        for side in self._sides:
            side.history.clear()
            side.pane.clear()

    def _run_changed(self, text: str) -> None:
        """Another run: the sessions of the last one end (they hold its models), and its
        conversation starts empty with the template it was trained on."""
        self.stop()
        self.new_chat()
        folder = Path(text.strip()) if text.strip() else None
        raw = folder is not None and is_classification_run(folder)
        self.template.setCurrentIndex(self.template.findData("raw" if raw else "chat"))

    def _token(self, side: Side, text: str) -> None:
        side.answer.append(text)
        side.pane.append(text)

    def _answered(self, side: Side, answer: dict) -> None:
        status = str(answer.get("status", "failed"))
        side.pane.finish(status, str(answer.get("message", "")))
        if status != "failed" and self._question:  # a stopped answer: as far as it got
            side.history += [{"role": "user", "content": self._question},
                             {"role": "assistant", "content": "".join(side.answer)}]
        if not self.is_generating():
            self._update_buttons()
            self.sig_generation_finished.emit()

    def _update_buttons(self) -> None:
        generating = self.is_generating()
        self.send_button.setEnabled(not generating)
        self.new_chat_button.setEnabled(not generating)
        self.runs.setEnabled(not generating)
        self.stop_button.setEnabled(generating)
