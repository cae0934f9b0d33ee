"""One engine training process (`python -m engine train CONFIG --protocol`) seen through its events.

The process itself (start, stdout as events, stderr tail, stop sequence, watchdog) is
app.process.EngineProcess; this module adds what a run is: its config and resume, its output
folder, and the run's statuses ("crashed", "hung" besides done's).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.process import EngineProcess, ProcessEnd, engine_command

TERMINATE_AFTER_MS = 10_000  # after `stop`: the engine finishes its step and checkpoints first
KILL_AFTER_MS = 5_000  # after terminate


class EngineClient(QObject):
    """Starts, watches and stops one engine run; emits its events as they arrive."""

    sig_event_received = Signal(object)
    """An engine.api.protocol.Event (known types only)."""
    sig_log_received = Signal(str, str)
    """Level ("info" | "warning" | "error") and a message from the client or the engine's stderr."""
    sig_finished = Signal(str, int)
    """Status ("completed" | "stopped" | "failed" | "crashed" | "hung") and exit code; once per run."""

    def __init__(self, parent: QObject | None = None, command: list[str] | None = None,
                 watchdog_seconds: float = 600.0) -> None:
        super().__init__(parent)
        # The program and leading arguments; the config path (and --resume) are appended.
        self.command = command or engine_command("train")
        self.output_dir: str | None = None
        self._process = EngineProcess(self, terminate_after_ms=TERMINATE_AFTER_MS,
                                      kill_after_ms=KILL_AFTER_MS, silence_seconds=watchdog_seconds)
        self.stderr_tail = self._process.stderr_tail
        self._process.sig_event_received.connect(self._event)
        self._process.sig_log_received.connect(self.sig_log_received)
        self._process.sig_finished.connect(self._ended)

    def is_running(self) -> bool:
        return self._process.is_running()

    def start(self, config_path: str | Path, resume: bool = False) -> None:
        if self.is_running():
            raise RuntimeError("an engine run is already in progress")
        self.output_dir = None
        self._process.start([*self.command, str(config_path), "--protocol"] +
                            (["--resume"] if resume else []))

    def stop(self) -> None:
        """Ask for a graceful stop (checkpoint, done/stopped); escalate if the engine ignores it."""
        self._process.stop()

    def kill(self) -> None:
        """End the process now (window closing, a hung engine)."""
        self._process.kill()

    def _event(self, event) -> None:
        if event.type == "done":
            self.output_dir = event.data.get("output_dir") or self.output_dir
        self.sig_event_received.emit(event)

    def _ended(self, end: ProcessEnd) -> None:
        if end.status in ("crashed", "hung"):  # a failed run's error event says what happened
            self.sig_log_received.emit("error", end.message)
        self.sig_finished.emit(end.status, end.exit_code)
