"""app.process.EngineProcess with real child processes under a real (offscreen) Qt event loop:
one `sig_finished` however a process ends, the stop sequence, and stdout read as events only."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest
from conftest import REPO, fake_engine

pytest.importorskip("pytestqt")

from PySide6.QtCore import QProcess  # noqa: E402

from app.process import EngineProcess, ProcessEnd  # noqa: E402

GRACE_MS = 300


class Watched:
    """An EngineProcess and everything it emitted."""

    def __init__(self, qtbot, **options) -> None:
        self.process = EngineProcess(**options)
        self.events, self.logs, self.ends = [], [], []
        self.process.sig_event_received.connect(self.events.append)
        self.process.sig_log_received.connect(lambda level, line: self.logs.append((level, line)))
        self.process.sig_finished.connect(self.ends.append)
        self.qtbot = qtbot

    def run(self, command: list[str], timeout_ms: int = 30_000) -> ProcessEnd:
        with self.qtbot.waitSignal(self.process.sig_finished, timeout=timeout_ms):
            self.process.start(command)
        return self.ended_once()

    def ended_once(self) -> ProcessEnd:
        # A late second report (errorOccurred after finished, a timer, the reaped process)
        # would arrive within a few turns of the event loop.
        self.qtbot.wait(GRACE_MS * 3)
        assert len(self.ends) == 1, self.ends
        assert not self.process.is_running()
        assert all(p.state() == QProcess.ProcessState.NotRunning
                   for p in self.process.findChildren(QProcess))
        return self.ends[0]


@pytest.fixture
def watched(qtbot):
    watched = Watched(qtbot, terminate_after_ms=GRACE_MS, kill_after_ms=GRACE_MS)
    yield watched
    watched.process.kill()  # a failed test's child must not outlive the object that owns it
    qtbot.waitUntil(lambda: all(p.state() == QProcess.ProcessState.NotRunning
                                for p in watched.process.findChildren(QProcess)), timeout=5000)


def test_a_normal_exit_finishes_once_with_the_done_status(watched, tmp_path):
    command = fake_engine(tmp_path, "ok", """
        event(1, "status", state="loading", message="loading")
        event(2, "done", status="completed", exit_code=0)
    """)
    end = watched.run(command)
    assert end == ProcessEnd("completed", 0, "")
    assert [e.type for e in watched.events] == ["hello", "status", "done"]


def test_an_error_event_is_the_message_of_the_end(watched, tmp_path):
    command = fake_engine(tmp_path, "refused", """
        event(1, "error", kind="user", message="dataset x.jsonl not found; check the path")
        event(2, "done", status="failed", exit_code=2)
        sys.exit(2)
    """)
    assert watched.run(command) == ProcessEnd("failed", 2, "dataset x.jsonl not found; check the path")


def test_a_program_that_cannot_start_finishes_once(watched, tmp_path):
    end = watched.run([str(tmp_path / "no-such-python"), "-m", "engine", "probe"])
    assert (end.status, end.exit_code) == ("crashed", -1)
    assert "the engine could not be started" in end.message and "no-such-python" in end.message
    # The object is ready for the next start.
    assert watched.process.is_running() is False


def test_an_exit_without_done_is_a_crash_with_the_last_stderr_line(watched, tmp_path):
    command = fake_engine(tmp_path, "crash", """
        print("Traceback: something broke badly", file=sys.stderr, flush=True)
        sys.exit(3)
    """)
    end = watched.run(command)
    assert (end.status, end.exit_code) == ("crashed", 3)
    assert "without finishing" in end.message and "something broke badly" in end.message
    assert ("stderr", "Traceback: something broke badly") in watched.logs
    assert list(watched.process.stderr_tail) == ["Traceback: something broke badly"]


def test_stdout_is_read_as_events_only(watched, tmp_path):
    """Free text on stdout (a stray print, the old `executorch: stage …` lines) is no event."""
    command = fake_engine(tmp_path, "chatty", """
        print("executorch: stage 1/6 load: base model", flush=True)
        event(1, "telemetry_v9", whatever=1)
        event(2, "done", status="completed", exit_code=0)
    """)
    watched.run(command)
    assert [e.type for e in watched.events] == ["hello", "done"]
    warnings = [line for level, line in watched.logs if level == "warning"]
    assert any("malformed" in line and "executorch: stage" in line for line in warnings)
    assert any("telemetry_v9" in line for level, line in watched.logs if level == "info")


def test_stop_is_a_line_on_stdin(watched, tmp_path):
    command = fake_engine(tmp_path, "polite", """
        assert sys.stdin.readline().strip() == "stop"
        event(1, "done", status="stopped", exit_code=0)
    """)
    with watched.qtbot.waitSignal(watched.process.sig_finished, timeout=30_000):
        watched.process.start(command)
        watched.qtbot.waitUntil(lambda: bool(watched.events), timeout=30_000)  # up: hello
        watched.process.stop()
    assert watched.ended_once() == ProcessEnd("stopped", 0, "")
    assert not any("terminating" in line for _, line in watched.logs)


def test_stop_escalates_to_terminate_then_kill(watched, tmp_path):
    """A child that ignores `stop` and SIGTERM is killed kill_after_ms after the terminate."""
    script = tmp_path / "stubborn.py"
    script.write_text(textwrap.dedent("""
        import signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", file=sys.stderr, flush=True)
        time.sleep(120)
    """))
    with watched.qtbot.waitSignal(watched.process.sig_finished, timeout=30_000):
        watched.process.start([sys.executable, str(script)])
        watched.qtbot.waitUntil(lambda: ("stderr", "ready") in watched.logs, timeout=30_000)
        started = time.monotonic()
        watched.process.stop()
        assert time.monotonic() - started < 0.2  # stop never waits
    assert time.monotonic() - started >= 2 * GRACE_MS / 1000 * 0.9
    end = watched.ended_once()
    assert end.status == "crashed" and end.exit_code != 0
    assert ("warning", "the engine did not stop in time; terminating it") in watched.logs


def test_silence_past_the_watchdog_is_hung_and_killed(qtbot, tmp_path):
    watched = Watched(qtbot, silence_seconds=0.5)
    end = watched.run(fake_engine(tmp_path, "silent", "time.sleep(60)\n"))
    assert end == ProcessEnd("hung", -1, "the engine sent nothing for 0.5 s; it was killed")


def test_abandon_never_reports_and_a_new_start_goes_on(watched, tmp_path):
    watched.process.start(fake_engine(tmp_path, "slow", "time.sleep(60)\n"))
    watched.process.abandon()
    assert not watched.process.is_running()
    end = watched.run(fake_engine(tmp_path, "quick", """
        event(1, "done", status="completed", exit_code=0)
    """))
    assert end.status == "completed"  # the one report: the abandoned process gave none


def test_the_app_makes_its_processes_in_one_place():
    """Every process the window starts is an EngineProcess: QProcess is made in app/process.py."""
    makers = [str(path.relative_to(REPO)) for path in sorted((REPO / "app").rglob("*.py"))
              if "QProcess(" in path.read_text() and path.name != "process.py"]
    assert not makers, makers
