"""How every engine subcommand ends and speaks: exit codes, the error boundary, and the
protocol stream (stdout reserved for JSON-lines events, `stop` read from stdin)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable

from engine.api.errors import UserError
from engine.api.protocol import STOP_COMMAND

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_STOPPED = 0, 1, 2, 130

log = logging.getLogger("engine")


def print_error(kind: str, message: str) -> None:
    """How a terminal command says what ended it: one paragraph on stderr (and, for a bug, the
    traceback above it: there is no log file to keep it in)."""
    if kind == "internal":
        traceback.print_exc(file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)


def guarded(body: Callable[[], int | None],
            report: Callable[[str, str], None] = print_error) -> int:
    """`body()`'s exit code, or the error boundary's (`failed`) for what escaped it."""
    try:
        return int(body() or 0)
    except (Exception, KeyboardInterrupt) as exc:
        return failed(exc, report)


def failed(exc: BaseException, report: Callable[[str, str], None]) -> int:
    """The error boundary of every subcommand: the exit code for an exception that ended it, and
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


def reserve_stdout():
    """The protocol stream: a private copy of fd 1; fd 1 itself now points at stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    return os.fdopen(protocol_fd, "w", buffering=1, encoding="utf-8")


def watch_stdin(stop: threading.Event) -> None:
    def read() -> None:
        for line in sys.stdin:
            if line.strip() == STOP_COMMAND:
                stop.set()
                return
    threading.Thread(target=read, name="stdin-commands", daemon=True).start()
