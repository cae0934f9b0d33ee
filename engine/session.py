"""How every engine command runs and speaks: exit codes, the error boundary, and the session.

A command runs as this process's one session (`run`). At a terminal it prints for a person. With
`--protocol` it speaks engine.api.protocol: stdout is reserved for events from the first line
(anything else that writes to file descriptor 1 goes to stderr), `hello` comes first, a `stop`
line on stdin (or SIGTERM) asks it to stop, an exception becomes one `error` event, and `done`
always comes last. Engine code reports its work through `emit` (and `Stages`), which serves both.
A command that serves requests (chat) reads the other stdin lines through `requests`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import __version__
from engine.api.errors import UserError
from engine.api.protocol import PROTOCOL_VERSION, QUIT_COMMAND, STOP_COMMAND, EventWriter

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_STOPPED = 0, 1, 2, 130
ANSWERS = ("result", "artifact")  # at a terminal, their line is the command's answer: stdout

log = logging.getLogger("engine")
REQUEST_POLL_SECONDS = 0.1  # how soon a stop of the whole command (SIGTERM) ends a wait for requests


@dataclass
class Request:
    """One request line from stdin, and the stop of its answer: a `stop` line read after it."""

    text: str
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class Session:
    """The command this process runs: where its reports go, its stop request, and what its
    `done` event says besides status and exit code."""

    writer: EventWriter | None = None  # the protocol stream; None at a terminal
    # Set by `stop` on stdin or SIGTERM (protocol mode); a command that polls it ends cleanly.
    stop: threading.Event = field(default_factory=threading.Event)
    log_path: Path | None = None  # where an internal error's traceback went (the run's log)
    status: str = "completed"  # done's status when the command returns 0 ("stopped" too)
    done: dict[str, Any] = field(default_factory=dict)  # done's other fields (output_dir, …)
    # The stdin lines that are no command, in order; None once they end (EOF or `quit`).
    requests: queue.Queue[Request | None] = field(default_factory=queue.Queue)


_current = Session()


def current() -> Session:
    return _current


def emit(type: str, line: str | None = None, /, **data: Any) -> None:
    """Report work, the one way: with --protocol the event `type` with `data`; at a terminal
    `line` (when given) for the person reading it."""
    if _current.writer is not None:
        _current.writer.emit(type, **data)
    elif line is not None:
        print(line, file=sys.stdout if type in ANSWERS else sys.stderr, flush=True)


def requests() -> Iterator[Request]:
    """The requests on stdin (protocol mode), each as it arrives; the iteration ends at EOF, at
    `quit`, or when the command is stopped (SIGTERM)."""
    while not _current.stop.is_set():
        try:
            request = _current.requests.get(timeout=REQUEST_POLL_SECONDS)
        except queue.Empty:
            continue
        if request is None:
            return
        yield request


def say(message: str, level: str = "info") -> None:
    """A line for whoever watches: a `log` event with --protocol, else the line on stderr."""
    emit("log", message, level=level, message=message)


@dataclass
class Stages:
    """A command's work in named stages. Each start is a `status` event (state = the stage) and
    a `progress` event (stage I of `stages`, seconds null), each end a `progress` event with its
    seconds; at a terminal `PREFIX: stage I/N NAME: what` and `… done in S s` lines."""

    prefix: str
    names: tuple[str, ...]
    seconds: dict[str, float] = field(default_factory=dict)  # each finished stage's duration

    @contextlib.contextmanager
    def stage(self, name: str, message: str) -> Iterator[None]:
        index, count = self.names.index(name) + 1, len(self.names)
        label = f"{self.prefix}: stage {index}/{count} {name}"
        emit("status", f"{label}: {message}", state=name, message=message)
        emit("progress", stage=index, stages=count, name=name, seconds=None)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 3)
        emit("progress", f"{label} done in {self.seconds[name]:.1f} s", stage=index,
             stages=count, name=name, seconds=self.seconds[name])


def run(argv: list[str], body: Callable[[], int | None], *, protocol: bool,
        polls_stop: bool = False) -> int:
    """`body()` as this process's command, inside the error boundary; its exit code.

    polls_stop: the body watches `current().stop` and ends cleanly when it is set; otherwise a
    stop interrupts it as Ctrl+C does (KeyboardInterrupt, exit 130).
    """
    global _current
    _current = Session()
    interrupt = signal.getsignal(signal.SIGINT)
    if protocol:
        _current.writer = EventWriter(_reserve_stdout(), uuid.uuid4().hex[:12])
        # A stop is a SIGINT to the main thread: it must raise here even when this process was
        # started with SIGINT ignored (a parent that ignores it passes that on to its children).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    code = EXIT_INTERNAL
    try:
        if protocol:
            emit("hello", protocol=PROTOCOL_VERSION, engine_version=__version__,
                 pid=os.getpid(), argv=argv)
            _listen_for_stop(polls_stop)
        code = int(body() or 0)
    except SystemExit as exc:  # argparse: it has printed the usage and the problem on stderr
        code = exc.code if isinstance(exc.code, int) else EXIT_USER
        if code:
            emit("error", kind="user", message="the command line was refused (see stderr)",
                 log_path=None)
    except (Exception, KeyboardInterrupt) as exc:
        code = failed(exc, _report)
    finally:
        if protocol:
            # A stop that lands now must not cut `done` short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        status = _current.status if code == EXIT_OK else \
            "stopped" if code == EXIT_STOPPED else "failed"
        emit("done", status=status, exit_code=code, **_current.done)
        if protocol:
            signal.signal(signal.SIGINT, interrupt)  # a caller in this process keeps its own
    return code


def failed(exc: BaseException, report: Callable[[str, str], None]) -> int:
    """The error boundary of every command: the exit code for an exception that ended it, and
    its one message through `report(kind, message)`. Call it from the `except` clause.

    UserError (bad input, with what to do): kind "user", exit 2. Ctrl+C or SIGTERM (a command
    that stops on it raises KeyboardInterrupt): exit 130, nothing to report. Anything else is a
    bug: kind "internal", exit 1. The traceback goes to the log (the run's engine.log where one
    is open), never into the message.
    """
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_STOPPED
    if isinstance(exc, UserError):
        log.error("user error", exc_info=exc)
        report("user", str(exc))
        return EXIT_USER
    log.error("internal error", exc_info=exc)
    report("internal", f"internal error ({type(exc).__name__}: {exc})")
    return EXIT_INTERNAL


def _report(kind: str, message: str) -> None:
    log_path = _current.log_path
    where = f"; details in {log_path}" if kind == "internal" and log_path else ""
    if kind == "internal" and log_path is None:
        traceback.print_exc(file=sys.stderr)  # no log file to keep it in
    emit("error", f"error: {message}{where}", kind=kind, message=message + where,
         log_path=str(log_path) if log_path else None)


def _reserve_stdout():
    """The protocol stream: a private copy of fd 1; fd 1 itself now points at stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    return os.fdopen(protocol_fd, "w", buffering=1, encoding="utf-8")


def _listen_for_stop(polls_stop: bool) -> None:
    latest: Request | None = None  # the newest request read: a `stop` after it ends its answer

    def request_stop() -> None:
        _current.stop.set()
        if latest is not None:
            latest.stop.set()
        if not polls_stop:
            # A real SIGINT to the main thread, as Ctrl+C: it also cuts a blocking call short
            # (sleep, a read), which _thread.interrupt_main's flag alone waits out.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    signal.signal(signal.SIGTERM, lambda *_: request_stop())

    def read() -> None:
        nonlocal latest
        for line in sys.stdin:
            text = line.strip()
            if text == STOP_COMMAND and latest is not None:
                latest.stop.set()  # a command serving requests: that answer, not the command
            elif text == STOP_COMMAND:
                request_stop()
                if not polls_stop:
                    return
            elif text == QUIT_COMMAND:
                break
            elif text:
                latest = Request(text)
                _current.requests.put(latest)
        _current.requests.put(None)

    # No stdin (a windowed bundle) or a terminal's (reading it would stop a background job).
    if sys.stdin is not None and not sys.stdin.closed and not sys.stdin.isatty():
        threading.Thread(target=read, name="stdin-commands", daemon=True).start()
