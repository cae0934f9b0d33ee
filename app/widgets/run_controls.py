"""Start, Stop and Resume, with the run's progress, its device and its status line under them."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from app.run_progress import RunProgress
from app.status_line import StatusLine, StatusMessage
from app.widgets.banner import Banner
from app.widgets.elided import ElidedLabel

FINISHED = {
    "completed": "Finished: the adapter is saved.",
    "stopped": "Stopped with a checkpoint; Resume continues from it.",
    "failed": "The run failed; see the Log tab.",
    "crashed": "The engine crashed (exit code {code}); see the Log tab. Resume continues "
               "from the last checkpoint if there is one.",
    "hung": "The engine stopped answering and was ended; see the Log tab.",
}


def outcome(status: str, exit_code: int, last_error: str, stderr_tail: list[str]) -> StatusMessage:
    """How a run ended; a failure says the engine's error, or shows its last stderr lines."""
    text = FINISHED.get(status, status).format(code=exit_code)
    if status == "failed" and last_error:
        return StatusMessage(last_error, error=True)  # says what to change; the Log tab has the rest
    if status in ("crashed", "hung", "failed"):
        return StatusMessage(text, error=True, detail=tuple(stderr_tail[-3:]))
    return StatusMessage(text)


def device_text(device: str, threads: int | None) -> str:
    """"CPU · 2 threads", "CUDA:0", "MPS": an engine status's device as the indicator says it."""
    if device == "cpu" and threads:
        return f"CPU · {threads} thread{'s' if threads != 1 else ''}"
    return device.upper()


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class RunControls(QWidget):
    """The run's buttons, progress bar and line, device indicator, status line and notices."""

    def __init__(self, status: StatusLine, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.start_button = QPushButton("Start")
        self.start_button.setToolTip("Ctrl+Return")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Ctrl+.")
        self.resume_button = QPushButton("Resume")
        self.progress = QProgressBar(format="step %v / %m")
        self.progress_text = QLabel("")
        self.device_label = ElidedLabel("")
        self.open_folder_button = QPushButton("Open run folder")
        self.status_line = QLabel(wordWrap=True, textFormat=Qt.TextFormat.RichText)
        self.banner = Banner()
        status.sig_changed.connect(lambda: self.status_line.setText(status.shown().html()))
        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.resume_button):
            buttons.addWidget(button)
        device_row = QHBoxLayout()
        device_row.addWidget(self.device_label, 1)
        device_row.addWidget(self.open_folder_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)  # its rows line up with the panel's
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_text)
        layout.addLayout(device_row)
        layout.addWidget(self.status_line)
        layout.addWidget(self.banner)
        self.status_line.setText(status.shown().html())

    def update_buttons(self, state: str, blocking_reason: str, resumable: bool,
                       has_folder: bool) -> None:
        """Enable what `state` allows; `blocking_reason` (why the run does not fit) disables Start."""
        idle = state == "idle"
        self.start_button.setEnabled(idle and not blocking_reason)
        self.start_button.setToolTip(blocking_reason or "Ctrl+Return")
        self.stop_button.setEnabled(state == "running")
        self.resume_button.setEnabled(idle and resumable)
        self.open_folder_button.setEnabled(has_folder)
        if idle:
            self.device_label.setText("")  # it says what a run is running on

    def show_launched(self, total_steps: int) -> None:
        self.progress.setMaximum(total_steps)
        self.progress.setValue(0)
        self.progress_text.setText("")

    def show_device(self, device: str, threads: int | None) -> None:
        self.device_label.setText(f"running on {device_text(device, threads)}")

    def show_progress(self, progress: RunProgress, tokens_per_second: float | None) -> None:
        """The step, an evaluation under way, the time left, and the last measured speed."""
        if progress.total_steps:
            self.progress.setMaximum(progress.total_steps)
            self.progress.setValue(progress.step)
        parts = [f"step {progress.step}/{progress.total_steps}"] if progress.total_steps else []
        evaluation = progress.evaluation
        if evaluation is not None:
            parts.append(f"evaluating {evaluation.rows_done}/{evaluation.rows} rows")
        left = progress.seconds_left()
        if left is not None:
            parts.append(f"ETA {_clock(left)}")
        if tokens_per_second and evaluation is None:
            parts.append(f"{tokens_per_second:.0f} tokens/s")
        self.progress_text.setText("   ".join(parts))
