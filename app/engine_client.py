"""One engine training process (`python -m engine run CONFIG --protocol`) seen through its events.

The engine and the app meet only at engine.api.protocol: this module parses stdout line by line,
keeps the tail of stderr for crash reports, and turns every way a process can end (done event,
exit without done, silence past the watchdog) into exactly one `sig_finished`.
"""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from engine.api.protocol import EVENT_TYPES, STOP_COMMAND, Event, ProtocolError, decode

REPO_ROOT = Path(__file__).resolve().parent.parent
STDERR_LINES = 50
TERMINATE_AFTER_MS = 10_000  # after `stop`: the engine finishes its step and checkpoints first
KILL_AFTER_MS = 5_000  # after terminate
# A burst of events (a flood, or a backlog after the window was busy) is handled in slices with
# the event loop turning between them, so the window keeps painting and answering clicks.
LINES_PER_TURN = 200


def engine_command(*args: str) -> list[str]:
    """The program and arguments that run `python -m engine ARGS…` here.

    A frozen bundle (PyInstaller) has no Python to run `-m` with: its one executable is
    re-invoked with `engine` as first argument (packaging/edgetune.py dispatches on it).
    """
    if getattr(sys, "frozen", False):
        return [sys.executable, "engine", *args]
    return [sys.executable, "-m", "engine", *args]


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
        self.command = command or engine_command("run")
        self.watchdog_seconds = watchdog_seconds
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self.output_dir: str | None = None
        self._process: QProcess | None = None
        self._stdout_buffer = b""
        self._stderr_buffer = b""
        self._pending: deque[bytes] = deque()
        self._drain_queued = False
        self._done: Event | None = None
        self._finished = True
        self._watchdog = QTimer(self, singleShot=True)
        self._watchdog.timeout.connect(self._hung)

    def is_running(self) -> bool:
        return not self._finished

    def start(self, config_path: str | Path, resume: bool = False) -> None:
        if self.is_running():
            raise RuntimeError("an engine run is already in progress")
        process = QProcess(self)
        environment = QProcessEnvironment.systemEnvironment()
        # The child must find the engine package whatever the user's PYTHONPATH holds.
        paths = [str(REPO_ROOT), environment.value("PYTHONPATH", "")]
        environment.insert("PYTHONPATH", ":".join(p for p in paths if p))
        process.setProcessEnvironment(environment)
        process.setWorkingDirectory(str(REPO_ROOT))
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._process_finished)
        process.errorOccurred.connect(self._process_error)
        self._process = process
        self._stdout_buffer = self._stderr_buffer = b""
        self._pending.clear()
        self._done = None
        self._finished = False
        self.stderr_tail.clear()
        self.output_dir = None
        args = [*self.command[1:], str(config_path), "--protocol"] + (["--resume"] if resume else [])
        self._arm_watchdog()
        process.start(self.command[0], args)

    def stop(self) -> None:
        """Ask for a graceful stop (checkpoint, done/stopped); escalate if the engine ignores it."""
        process = self._process
        if process is None or self._finished:
            return
        process.write(f"{STOP_COMMAND}\n".encode())
        QTimer.singleShot(TERMINATE_AFTER_MS, lambda: self._escalate(process, kill=False))

    def kill(self) -> None:
        """End the process now (window closing, a hung engine). SIGKILL needs no wait: Qt reaps
        the process from the event loop, or when the QProcess is destroyed."""
        process = self._process
        if process is not None and process.state() != QProcess.ProcessState.NotRunning:
            process.kill()

    def _escalate(self, process: QProcess, kill: bool) -> None:
        if process is not self._process or process.state() == QProcess.ProcessState.NotRunning:
            return
        if kill:
            process.kill()
            return
        self.sig_log_received.emit("warning", "the engine did not stop in time; terminating it")
        process.terminate()
        QTimer.singleShot(KILL_AFTER_MS, lambda: self._escalate(process, kill=True))

    def _arm_watchdog(self) -> None:
        self._watchdog.start(int(self.watchdog_seconds * 1000))

    def _read_stdout(self) -> None:
        if self._process is None:
            return
        self._stdout_buffer += bytes(self._process.readAllStandardOutput())
        *lines, self._stdout_buffer = self._stdout_buffer.split(b"\n")
        self._pending.extend(raw for raw in lines if raw.strip())
        self._drain(LINES_PER_TURN)

    def _drain(self, limit: int) -> None:
        for _ in range(min(limit, len(self._pending))):
            self._handle_line(self._pending.popleft().decode("utf-8", errors="replace"))
        if self._pending and not self._drain_queued:
            self._drain_queued = True
            QTimer.singleShot(0, self._drain_next_slice)

    def _drain_next_slice(self) -> None:
        self._drain_queued = False
        self._drain(LINES_PER_TURN)

    def _handle_line(self, line: str) -> None:
        if self._finished:
            return
        self._arm_watchdog()
        try:
            event = decode(line)
        except ProtocolError as exc:
            self.sig_log_received.emit("warning", f"ignored a malformed engine line ({exc}): {line[:200]}")
            return
        if event.type not in EVENT_TYPES:
            self.sig_log_received.emit("info", f"ignored an unknown engine event type {event.type!r}")
            return
        if event.type == "done":
            self._done = event
            self.output_dir = event.data.get("output_dir") or self.output_dir
        self.sig_event_received.emit(event)

    def _read_stderr(self) -> None:
        if self._process is None:
            return
        self._stderr_buffer += bytes(self._process.readAllStandardError())
        *lines, self._stderr_buffer = self._stderr_buffer.split(b"\n")
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").rstrip()
            if text:
                self.stderr_tail.append(text)
                self.sig_log_received.emit("stderr", text)

    def _process_finished(self, exit_code: int, _status: QProcess.ExitStatus) -> None:
        self._read_stdout()
        self._drain(len(self._pending))  # `done` must be seen before the run is judged
        self._read_stderr()
        if self._stdout_buffer.strip():  # a last line without its newline
            self._handle_line(self._stdout_buffer.decode("utf-8", errors="replace"))
        if self._finished:  # already reported (watchdog)
            return
        if self._done is not None:
            self._finish(str(self._done.data.get("status", "failed")), exit_code)
        else:
            tail = "\n".join(list(self.stderr_tail)[-10:]) or "(no output on stderr)"
            self.sig_log_received.emit(
                "error", f"the engine exited (code {exit_code}) without finishing the run; "
                f"last lines of its stderr:\n{tail}")
            self._finish("crashed", exit_code)

    def _process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.sig_log_received.emit("error", f"the engine could not be started: {self.command[0]}")
            self._finish("crashed", -1)

    def _hung(self) -> None:
        if self._finished:
            return
        self.sig_log_received.emit(
            "error", f"the engine sent nothing for {self.watchdog_seconds:g} s; it was killed")
        self._finish("hung", -1)
        self.kill()

    def _finish(self, status: str, exit_code: int) -> None:
        if self._finished:
            return
        self._finished = True
        self._watchdog.stop()
        self.sig_finished.emit(status, exit_code)
