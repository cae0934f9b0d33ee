"""One engine process of the window, started, watched and stopped the same way for every command.

Training, probe, inspect-dataset, export, push and chat all run as `python -m engine COMMAND …
--protocol` through EngineProcess: one command line (engine_command), one environment, stdout
read as protocol events only (engine.api.protocol; anything else there is logged and skipped),
stderr kept as a log tail, one stop sequence (`stop` on stdin, then terminate, then kill), and
exactly one `sig_finished` however the process ends: its `done` event, an exit without one, a
failed start, or the silence watchdog.
"""

from __future__ import annotations

import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import shiboken6
from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from engine.api.protocol import EVENT_TYPES, STOP_COMMAND, Event, ProtocolError, decode

REPO_ROOT = Path(__file__).resolve().parent.parent
STDERR_LINES = 50
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


def engine_environment() -> QProcessEnvironment:
    """The user's environment, with the engine package findable whatever PYTHONPATH holds (the
    engine itself quiets its libraries' chatter: engine.cli)."""
    environment = QProcessEnvironment.systemEnvironment()
    paths = [str(REPO_ROOT), environment.value("PYTHONPATH", "")]
    environment.insert("PYTHONPATH", ":".join(p for p in paths if p))
    return environment


@dataclass(frozen=True)
class ProcessEnd:
    """How an engine process ended."""

    # done's status ("completed" | "stopped" | "failed"); "crashed": it exited without `done`
    # or never started; "hung": silent past the watchdog, killed.
    status: str
    exit_code: int  # -1 when it never started or the watchdog ended it
    message: str  # what went wrong, for a person: the error event's, or ours; "" when nothing


class EngineProcess(QObject):
    """Starts, watches and stops engine processes, one at a time; emits their events."""

    sig_event_received = Signal(object)
    """An engine.api.protocol.Event of a known type, in order."""
    sig_log_received = Signal(str, str)
    """Level ("info" | "warning" | "error" | "stderr") and a line: the engine's stderr, or ours."""
    sig_finished = Signal(object)
    """A ProcessEnd; exactly once per start (not for an abandoned process)."""

    def __init__(self, parent: QObject | None = None, *, terminate_after_ms: int = 3000,
                 kill_after_ms: int = 3000, silence_seconds: float | None = None) -> None:
        super().__init__(parent)
        self.terminate_after_ms = terminate_after_ms  # after `stop`
        self.kill_after_ms = kill_after_ms  # after terminate
        self.silence_seconds = silence_seconds  # no stdout line for this long: hung
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._process: QProcess | None = None
        self._stdout = b""
        self._stderr = b""
        self._pending: deque[bytes] = deque()
        self._drain_queued = False
        self._done: Event | None = None
        self._error = ""
        self._finished = True
        self._watchdog = QTimer(self, singleShot=True)
        self._watchdog.timeout.connect(self._hung)

    def is_running(self) -> bool:
        """Started and not finished yet."""
        return not self._finished

    def start(self, command: list[str]) -> None:
        """Run `command` (from engine_command, or a stand-in engine in tests)."""
        if self.is_running():
            raise RuntimeError("an engine process is already running")
        process = QProcess(self)
        process.setProcessEnvironment(engine_environment())
        process.setWorkingDirectory(str(REPO_ROOT))
        process.readyReadStandardOutput.connect(lambda: self._read_stdout(process))
        process.readyReadStandardError.connect(lambda: self._read_stderr(process))
        process.finished.connect(lambda code, _status: self._exited(process, code))
        process.errorOccurred.connect(lambda error: self._failed_to_start(process, error))
        self._process = process
        self._stdout = self._stderr = b""
        self._pending.clear()
        self._done, self._error, self._finished = None, "", False
        self.stderr_tail.clear()
        self._arm_watchdog()
        process.start(command[0], command[1:])

    def send(self, line: str) -> None:
        """One line to the engine's stdin: a command or a request (chat's JSON requests)."""
        if self._process is not None:
            self._process.write(f"{line}\n".encode())

    def stop(self) -> None:
        """Ask for a clean stop (`stop` on stdin, then EOF: a session such as chat ends after its
        answer); terminate, then kill, if it does not end."""
        process = self._process
        if process is None or process.state() == QProcess.ProcessState.NotRunning:
            return
        process.write(f"{STOP_COMMAND}\n".encode())
        process.closeWriteChannel()
        # Bound to the process: the timer goes with it, and a late one finds it ended.
        QTimer.singleShot(self.terminate_after_ms, process,
                          lambda: self._escalate(process, kill=False))

    def kill(self) -> None:
        """End the process now. No wait: Qt reaps it from the event loop, and `sig_finished`
        follows as for any exit."""
        process = self._process
        if process is not None and process.state() != QProcess.ProcessState.NotRunning:
            process.kill()

    def abandon(self) -> None:
        """Kill the process and never report it (a newer request replaces it)."""
        self.kill()
        self._process = None
        self._finished = True
        self._watchdog.stop()

    def _escalate(self, process: QProcess, kill: bool) -> None:
        if process.state() == QProcess.ProcessState.NotRunning:
            return
        if kill:
            process.kill()
            return
        self.sig_log_received.emit("warning", "the engine did not stop in time; terminating it")
        process.terminate()
        QTimer.singleShot(self.kill_after_ms, process, lambda: self._escalate(process, kill=True))

    def _arm_watchdog(self) -> None:
        if self.silence_seconds is not None:
            self._watchdog.start(int(self.silence_seconds * 1000))

    def _read_stdout(self, process: QProcess) -> None:
        if process is not self._process:
            return
        self._stdout += bytes(process.readAllStandardOutput())
        *lines, self._stdout = self._stdout.split(b"\n")
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
            self.sig_log_received.emit("warning",
                                       f"ignored a malformed engine line ({exc}): {line[:200]}")
            return
        if event.type not in EVENT_TYPES:
            self.sig_log_received.emit("info", f"ignored an unknown engine event type {event.type!r}")
            return
        if event.type == "done":
            self._done = event
        elif event.type == "error":
            self._error = str(event.data.get("message", ""))
        self.sig_event_received.emit(event)

    def _read_stderr(self, process: QProcess) -> None:
        if process is not self._process:
            return
        self._stderr += bytes(process.readAllStandardError())
        *lines, self._stderr = self._stderr.split(b"\n")
        for raw in lines:
            self._stderr_line(raw)

    def _stderr_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip()
        if text:
            self.stderr_tail.append(text)
            self.sig_log_received.emit("stderr", text)

    def _exited(self, process: QProcess, exit_code: int) -> None:
        if not shiboken6.isValid(process) or not shiboken6.isValid(self):
            return  # its owner is being destroyed (the window closed): nobody is left to tell
        process.deleteLater()
        if process is not self._process:
            return  # abandoned
        self._read_stdout(process)
        self._drain(len(self._pending))  # `done` must be seen before the process is judged
        self._read_stderr(process)
        self._stderr_line(self._stderr)  # last lines without their newline
        if self._stdout.strip():
            self._handle_line(self._stdout.decode("utf-8", errors="replace"))
        self._process = None
        if self._done is not None:
            self._end(str(self._done.data.get("status", "failed")), exit_code, self._error)
        else:
            last = f": {self.stderr_tail[-1]}" if self.stderr_tail else ""
            self._end("crashed", exit_code,
                      self._error or f"the engine exited (code {exit_code}) without finishing{last}")

    def _failed_to_start(self, process: QProcess, error: QProcess.ProcessError) -> None:
        # No `finished` follows a process that never started: end here.
        if process is not self._process or error != QProcess.ProcessError.FailedToStart:
            return
        self._process = None
        process.deleteLater()
        self._end("crashed", -1, f"the engine could not be started ({process.program()}: "
                                 f"{process.errorString()})")

    def _hung(self) -> None:
        if self._finished:
            return
        self._end("hung", -1, f"the engine sent nothing for {self.silence_seconds:g} s; it was killed")
        self.kill()

    def _end(self, status: str, exit_code: int, message: str) -> None:
        if self._finished:
            return
        self._finished = True
        self._watchdog.stop()
        self.sig_finished.emit(ProcessEnd(status, exit_code, message))
