"""A run's life in the window: closing mid-run, what the runs list says is resumable, a status
line whose messages end with their cause, the time left through the final evaluation, the live
device indicator and the notice at the end. Real engine processes on the tiny model where a run
is needed; a scripted engine where the test needs events at chosen times."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import ENGINE_TIMEOUT_MS, fake_engine, fill_tiny, train

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QDesktopServices  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon  # noqa: E402

from app.runs import list_runs  # noqa: E402
from engine.api.checkpoints import resumable_step  # noqa: E402
from engine.api.history import read_history  # noqa: E402


def _metrics_steps(folder: Path) -> list[int]:
    return [r["step"] for r in read_history(folder / "metrics.jsonl") if r["type"] == "metrics"]


def _watch(window) -> list[tuple[object, str, str]]:
    """(event, status line, progress line) as the window shows them right after each event."""
    seen = []
    window.engine.sig_event_received.connect(  # after the window's own slot: what it made of it
        lambda e: seen.append((e, window.status_line.text(), window.controls.progress_text.text())))
    return seen


@pytest.fixture
def no_tray(monkeypatch):
    """A desktop without a system tray (as offscreen is): the notice is the window's banner."""
    monkeypatch.setattr(QSystemTrayIcon, "isSystemTrayAvailable", staticmethod(lambda: False))


# ---- closing mid-run -----------------------------------------------------------------------

def test_closing_mid_run_asks_then_stops_with_a_checkpoint_and_quits(
        make_window, qtbot, tiny_model, classification_data):
    window = make_window()
    fill_tiny(window, tiny_model, classification_data, steps=100000, eval_every=0,
              checkpoint_every=0)
    with qtbot.waitSignal(window.engine.sig_event_received, timeout=ENGINE_TIMEOUT_MS,
                          check_params_cb=lambda e: e.type == "progress" and e.data["step"] >= 2):
        window.start()

    assert not window.close()
    question = window.quit_question
    assert question.isVisible() and question.text() == "A run is in progress — stop and quit?"
    qtbot.mouseClick(question.button(QMessageBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    assert window.isVisible() and window.run.state == "running"
    step = window.run.progress.step
    with qtbot.waitSignal(window.engine.sig_event_received, timeout=ENGINE_TIMEOUT_MS,
                          check_params_cb=lambda e: e.type == "progress" and e.data["step"] > step):
        pass  # Cancel kept the run going

    assert not window.close()
    stop = next(b for b in question.buttons() if b.text() == "Stop and quit")
    qtbot.mouseClick(stop, Qt.MouseButton.LeftButton)
    assert window.isVisible() and window.run.state == "stopping"
    assert "Stopping the run" in window.status_line.text()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=ENGINE_TIMEOUT_MS)
    assert window.run.last_status == "stopped", window.log.toPlainText()

    folder = window.run.output_dir
    last = max(_metrics_steps(folder))
    assert resumable_step(folder) == last > step  # nothing run was lost
    text = window.runs_list.item(0).text()  # listed again as the run ended
    assert "[stopped]" in text and f"step {last} · resumable from {last}" in text


# ---- what the runs list says --------------------------------------------------------------

def _run_folder(root: Path, name: str, last_step: int, checkpoints: dict[int, str],
                adapter: bool = False) -> Path:
    """A run folder as the engine leaves it: metrics up to `last_step`, and checkpoints by step
    with the reason each was written for."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model: /models/tiny\ndataset: /data/reviews.jsonl\n")
    records = [{"type": "metrics", "step": s, "loss": 1.0 / s} for s in range(1, last_step + 1)]
    for step, reason in checkpoints.items():
        records.insert(step, {"type": "checkpoint", "step": step, "reason": reason,
                              "path": str(folder / "checkpoints" / f"step-{step:08d}")})
        written = folder / "checkpoints" / f"step-{step:08d}"
        written.mkdir(parents=True)
        (written / "state.safetensors").write_bytes(b"state")
        (written / "manifest.json").write_text(json.dumps(
            {"format": 1, "step": step, "files": {"state.safetensors": "0" * 64}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if adapter:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text("{}")
    return folder


def test_the_runs_list_says_where_resume_continues(make_window, tmp_path):
    root = tmp_path / "runs"
    killed = _run_folder(root, "killed", 522, {250: "interval", 500: "interval"})
    # Killed while writing the next one: a partial folder, and one without its manifest.
    (killed / "checkpoints" / ".step-00000522.partial").mkdir()
    (killed / "checkpoints" / "step-00000510").mkdir()
    _run_folder(root, "stopped", 300, {250: "interval", 300: "stop"}, adapter=True)
    _run_folder(root, "completed", 40, {20: "interval", 40: "end"}, adapter=True)
    _run_folder(root, "early", 7, {})

    runs = {info.path.name: info for info in list_runs(root)}
    assert {name: (info.status, info.resumable_step) for name, info in runs.items()} == {
        "killed": ("stopped", 500), "stopped": ("stopped", 300), "completed": ("completed", 40),
        "early": ("started", None)}
    window = make_window()
    texts = {window.runs_list.item(i).text().split()[0]: window.runs_list.item(i).text()
             for i in range(window.runs_list.count())}
    assert "step 522 · resumable from 500" in texts["killed"]
    assert "[stopped]" in texts["stopped"] and "step 300 · resumable from 300" in texts["stopped"]
    assert "[completed]" in texts["completed"] and "resumable" not in texts["completed"]
    assert "step 7 · no checkpoint to resume from" in texts["early"]


# ---- the engine's events ------------------------------------------------------------------

def test_the_trainer_names_its_device_and_reports_evaluation_rows(tiny_config):
    result, recorder, _ = train(tiny_config("steps=2", "eval_every=0", "checkpoint_every=0",
                                            "eval_fraction=0.5", "eval_rows=40"))
    assert result.status == "completed"
    statuses = recorder.of("status")
    assert statuses and all(s["device"] == "cpu" and s["threads"] == 1 for s in statuses)
    evaluating = [(s["step"], s["rows_done"], s["rows"]) for s in statuses
                  if s["state"] == "evaluating"]
    # 40 rows in batches of 16, at step 0 and at the end.
    assert evaluating == [(step, done, 40) for step in (0, 2) for done in (0, 16, 32, 40)]
    assert [c["reason"] for c in recorder.of("checkpoint")] == ["end"]


def test_status_messages_end_with_their_cause_and_the_run_ends_with_a_notice(
        make_window, qtbot, tiny_model, classification_data, no_tray, monkeypatch):
    beeps, opened = [], []
    monkeypatch.setattr(QApplication, "beep", staticmethod(lambda: beeps.append(1)))
    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(lambda url: opened.append(url)))
    window = make_window()
    assert not window.notifier.sound_action.isChecked()  # no sound unless asked for
    window.notifier.sound_action.setChecked(True)
    fill_tiny(window, tiny_model, classification_data, steps=6, eval_every=3, checkpoint_every=2,
              eval_fraction="0.5")
    window.form.base.eval_rows = 40
    seen = _watch(window)
    devices = []
    window.engine.sig_event_received.connect(
        lambda e: devices.append(window.controls.device_label.text()) if e.type == "progress" else None)
    with qtbot.waitSignal(window.sig_run_finished, timeout=ENGINE_TIMEOUT_MS) as finished:
        window.start()
    assert finished.args == ["completed"], window.log.toPlainText()

    checkpointing = [i for i, (e, text, _) in enumerate(seen)
                     if e.type == "status" and e.data["state"] == "checkpointing"]
    assert checkpointing and "writing checkpoint at step 2" in seen[checkpointing[0]][1]
    later = [text for e, text, _ in seen[checkpointing[0]:] if e.type == "progress"]
    assert later and not any("writing checkpoint" in text for text in later)
    evaluating = [progress for e, _, progress in seen if e.type == "status"
                  and e.data["state"] == "evaluating" and e.data["rows_done"] == 16]
    assert evaluating and all("evaluating 16/40 rows" in text for text in evaluating)
    assert devices and set(devices) == {"running on CPU · 1 thread"}
    assert window.controls.device_label.text() == ""  # live only while a run goes

    banner = window.controls.banner
    assert banner.isVisible() and "run finished" in banner.text()
    assert beeps == [1]
    qtbot.mouseClick(window.controls.open_folder_button, Qt.MouseButton.LeftButton)
    assert [Path(url.toLocalFile()) for url in opened] == [window.run.output_dir]
    assert "[completed]" in window.runs_list.item(0).text()


def test_the_device_indicator_shows_the_engine_s_device(make_window, qtbot, tmp_path,
                                                       tiny_model, classification_data):
    command = fake_engine(tmp_path, "device", """
        event(1, "status", state="loading", message="loading model", device="cpu", threads=2)
        sys.stdin.readline()  # until stopped
        event(2, "done", status="stopped", exit_code=0, output_dir=None)
    """)
    window = make_window(engine_command=command)
    fill_tiny(window, tiny_model, classification_data)
    with qtbot.waitSignal(window.engine.sig_event_received, timeout=30_000,
                          check_params_cb=lambda e: e.type == "status"):
        window.start()
    assert window.controls.device_label.text() == "running on CPU · 2 threads"
    assert window.status_line.text() == "loading model"
    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000):
        window.stop()
    assert window.controls.device_label.text() == ""


# ---- the time left ------------------------------------------------------------------------

def _timed_engine(tmp_path: Path, name: str, body: str) -> list[str]:
    """An engine whose events carry chosen times (seconds after a fixed start)."""
    return fake_engine(tmp_path, name, textwrap.dedent("""
        def at(seq, seconds, type, **data):
            print(json.dumps({"v": 1, "seq": seq, "time": 1e9 + seconds, "run_id": "fake",
                              "type": type, "data": data}), flush=True)
    """) + textwrap.dedent(body))


def test_the_eta_counts_the_final_evaluation(make_window, qtbot, tmp_path, tiny_model,
                                             classification_data):
    """A 35 s evaluation at step 0 predicts the final one: the last step's ETA is not 0:00, and
    during the final evaluation the time left follows its rows."""
    command = _timed_engine(tmp_path, "timed", """
        def evaluating(seq, seconds, step, done):
            at(seq, seconds, "status", state="evaluating", step=step, rows_done=done, rows=64,
               message=f"evaluating at step {step}: {done}/64 rows", device="cpu", threads=2)
        evaluating(1, 0, 0, 0)
        evaluating(2, 17.5, 0, 32)
        at(3, 35, "eval", step=0, loss=0.7, accuracy=0.5, rows=64)
        at(4, 35, "status", state="training", message="training with prge", device="cpu", threads=2)
        at(5, 36, "metrics", step=1, loss=0.6, step_seconds=1.0, tokens_per_second=100.0)
        at(6, 36, "progress", step=1, total_steps=2, elapsed_seconds=1, eta_seconds=1)
        at(7, 37, "metrics", step=2, loss=0.5, step_seconds=1.0, tokens_per_second=100.0)
        at(8, 37, "progress", step=2, total_steps=2, elapsed_seconds=2, eta_seconds=0)
        evaluating(9, 37, 2, 0)
        evaluating(10, 57, 2, 32)
        at(11, 77, "eval", step=2, loss=0.5, accuracy=0.7, rows=64)
        at(12, 77, "status", state="checkpointing", message="writing checkpoint at step 2",
           device="cpu", threads=2)
        at(13, 77, "done", status="completed", exit_code=0, output_dir=None)
    """)
    window = make_window(engine_command=command)
    fill_tiny(window, tiny_model, classification_data, steps=2)
    seen = _watch(window)
    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000):
        window.start()
    shown = {e.seq: progress for e, _, progress in seen}
    assert "evaluating 32/64 rows" in shown[2]
    assert "ETA 0:36" in shown[6]  # 1 s of steps and the 35 s evaluation
    assert "ETA 0:35" in shown[8]
    assert "evaluating 0/64 rows" in shown[9] and "ETA 0:35" in shown[9]
    assert "evaluating 32/64 rows" in shown[10] and "ETA 0:20" in shown[10]  # its own pace
    assert "ETA 0:00" in shown[11]


# ---- stale state --------------------------------------------------------------------------

def test_an_error_goes_once_its_cause_is_fixed(make_window, qtbot, tmp_path, tiny_model,
                                              classification_data, no_tray, monkeypatch):
    beeps = []
    monkeypatch.setattr(QApplication, "beep", staticmethod(lambda: beeps.append(1)))
    command = fake_engine(tmp_path, "refuses", """
        event(1, "error", kind="user", message='config field "max_seq_len" is 48 but the model '
              'reads at most 32 tokens; lower max_seq_len', log_path=None)
        event(2, "done", status="failed", exit_code=2, output_dir=None)
    """)
    window = make_window(engine_command=command)
    fill_tiny(window, tiny_model, classification_data)
    lr = window.form.widgets["optimizer.lr"]
    lr.setText("fast")
    window.start()
    assert "optimizer.lr" in window.status_line.text() and window.run.state == "idle"
    lr.setText("0.01")
    assert window.status_line.text() == "Ready"

    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000) as finished:
        window.start()
    assert finished.args == ["failed"]
    assert "max_seq_len" in window.status_line.text()
    banner = window.controls.banner
    assert banner.isVisible() and "run failed" in banner.text() and "max_seq_len" in banner.text()
    assert beeps == []  # the sound is off by default
    window.form.widgets["max_seq_len"].setValue(32)
    assert window.status_line.text() == "Ready"


def test_a_new_run_starts_with_empty_curves_on_their_own_axes(make_window, qtbot, tmp_path,
                                                             tiny_model, classification_data):
    old = _run_folder(tmp_path / "runs", "old", 30, {})
    command = fake_engine(tmp_path, "quiet", """
        sys.stdin.readline()
        event(1, "done", status="stopped", exit_code=0, output_dir=None)
    """)
    window = make_window(engine_command=command)
    window.open_runs([window.runs_list.item(0)])
    curves = window.curves
    assert curves.point_count("loss") == 30 and curves.runs[0].label == old.name
    plot = curves.plots["Training loss"]
    plot.vb.setRange(xRange=(10, 12))  # the user zoomed into the old run
    assert not all(plot.vb.autoRangeEnabled())
    fill_tiny(window, tiny_model, classification_data)
    window.start()
    assert curves.point_count("loss") == 0 and curves.runs[0].label == "live"
    assert all(plot.vb.autoRangeEnabled())
    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000):
        window.stop()
