"""Start, Stop and Resume, with the run's progress and its status line under them."""

from __future__ import annotations

import html

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from app.settings_form import name_the_controls

FINISHED = {
    "completed": "Finished: the adapter is saved.",
    "stopped": "Stopped with a checkpoint; Resume continues from it.",
    "failed": "The run failed; see the Log tab.",
    "crashed": "The engine crashed (exit code {code}); see the Log tab. Resume continues "
               "from the last checkpoint if there is one.",
    "hung": "The engine stopped answering and was ended; see the Log tab.",
}


class RunControls(QWidget):
    """The run's buttons, progress bar, progress line and status line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Ctrl+Return")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Ctrl+.")
        self.resume_button = QPushButton("Resume")
        self.progress = QProgressBar(format="step %v / %m")
        self.progress_text = QLabel("")
        self.status_line = QLabel("Ready", wordWrap=True)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.resume_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)  # its rows line up with the panel's
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_text)
        layout.addWidget(self.status_line)

    def update_buttons(self, state: str, blocking_reason: str, resumable: bool) -> None:
        """Enable what `state` allows; `blocking_reason` (why the run does not fit) disables Start."""
        idle = state == "idle"
        self.start_button.setEnabled(idle and not blocking_reason)
        self.start_button.setToolTip(blocking_reason or "Ctrl+Return")
        self.stop_button.setEnabled(state == "running")
        self.resume_button.setEnabled(idle and resumable)

    def show_launched(self, resume: bool, total_steps: int) -> None:
        self.progress.setMaximum(total_steps)
        self.progress.setValue(0)
        self.progress_text.setText("")
        self.status_line.setText("Resuming…" if resume else "Starting the engine…")

    def show_progress(self, data: dict, tokens_per_second: float | None) -> None:
        """A progress event's step, total and ETA, with the last measured speed."""
        step, total = int(data.get("step", 0)), int(data.get("total_steps", 0) or 1)
        self.progress.setMaximum(total)
        self.progress.setValue(step)
        eta = data.get("eta_seconds")
        parts = [f"step {step}/{total}"]
        if eta is not None:
            parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        if tokens_per_second:
            parts.append(f"{tokens_per_second:.0f} tokens/s")
        self.progress_text.setText("   ".join(parts))

    def show_error(self, message: str) -> None:
        # Rich text: a path or message holding < or & must show as typed.
        self.status_line.setText(
            f"<span style='color:#b00'>{html.escape(name_the_controls(message))}</span>")

    def show_finished(self, status: str, exit_code: int, last_error: str,
                      stderr_tail: list[str]) -> None:
        """How the run ended; a failure shows the engine's error, or its last stderr lines."""
        text = FINISHED.get(status, status).format(code=exit_code)
        if status == "failed" and last_error:
            self.show_error(last_error)  # says what to change; the Log tab has the rest
        elif status in ("crashed", "hung", "failed"):
            tail = "<br>".join(html.escape(line[-160:]) for line in stderr_tail[-3:])
            self.status_line.setText(f"<span style='color:#b00'>{text}</span>"
                                     + (f"<br><tt>{tail}</tt>" if tail else ""))
        else:
            self.status_line.setText(text)
