"""The desktop app with real widgets (offscreen), real engine processes and real drop events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import ENGINE_TIMEOUT_MS, REPO, drop_file, fake_engine, fill_tiny

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF, QProcess, Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication  # noqa: E402

from app.main_window import MainWindow  # noqa: E402
from app.runs import list_runs  # noqa: E402
from engine.api.history import read_history  # noqa: E402

SCREENSHOTS = REPO / "tests" / "screenshots"


def test_app_never_imports_torch():
    code = ("import sys; import app.main_window, app.__main__, app.widgets.curves, app.bench_startup; "
            "bad = [m for m in ('torch', 'transformers', 'peft', 'executorch', 'llama_cpp') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_signals_do_not_leak_references():
    """PySide6 6.12.0 dropped a reference to True on every Signal.emit; on Python 3.11 the
    window aborted (bool_dealloc) a few thousand engine events into a run."""
    code = textwrap.dedent("""
        import sys
        from PySide6.QtCore import QCoreApplication, QObject, Signal
        class Source(QObject):
            sig = Signal(str, dict)
        app = QCoreApplication([])
        source, got = Source(), []
        source.sig.connect(lambda kind, data: got.append(kind))
        before = sys.getrefcount(True)
        for _ in range(5000):
            source.sig.emit("metrics", {"step": 1})
        print(len(got), sys.getrefcount(True) - before)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    received, leaked = map(int, result.stdout.split())
    assert received == 5000 and abs(leaked) < 50


def _screenshot(window: MainWindow, name: str) -> None:
    """PNGs of the main states for a person to look at (tests/screenshots/ is not in git)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    window.curves.redraw()
    path = SCREENSHOTS / f"{QGuiApplication.platformName()}-{name}.png"
    assert window.grab().save(str(path))
    assert path.stat().st_size > 10_000


def test_end_to_end_training_from_the_window(make_window, qtbot, tiny_model, classification_data):
    window = make_window()
    _screenshot(window, "1-empty")
    with qtbot.waitSignal(window.preview.sig_inspected, timeout=60_000):
        drop_file(window.drop_zone, classification_data)
    _screenshot(window, "2-dataset")
    fill_tiny(window, tiny_model, classification_data)
    with qtbot.waitSignal(window.engine.sig_event_received, timeout=ENGINE_TIMEOUT_MS,
                          check_params_cb=lambda e: e.type == "progress" and e.data["step"] >= 2):
        qtbot.mouseClick(window.start_button, Qt.MouseButton.LeftButton)
        assert not window.start_button.isEnabled() and window.stop_button.isEnabled()
    _screenshot(window, "3-training")
    with qtbot.waitSignal(window.sig_run_finished, timeout=ENGINE_TIMEOUT_MS) as finished:
        pass
    assert finished.args == ["completed"], window.log.toPlainText()
    _screenshot(window, "4-finished")
    window.curves.redraw()
    assert window.curves.point_count("loss") == 4
    assert window.curves.point_count("accuracy") >= 2  # step 0 (zero-shot) and later evals
    assert window.curves.runs[0].get("accuracy")[0][0] == 0.0
    assert window.curves.point_count("rss") >= 1
    output_dir = window.run.output_dir
    assert (output_dir / "adapter" / "adapter_config.json").is_file()
    assert window.progress.value() == 4 and window.start_button.isEnabled()
    assert str(output_dir / "adapter") in window.export_panel.adapter_label.text()
    runs = list_runs(window.runs_root)
    assert [r.path for r in runs] == [output_dir] and runs[0].status == "completed"
    assert window.runs_list.count() == 1
    # The config the engine got sits beside the run; recent models remember the choice.
    assert (window.runs_root / f"{output_dir.name}.yaml").is_file()
    assert window.model_picker.recent_models() == [str(tiny_model)]
    # Reopening the run from history redraws the same curves from metrics.jsonl.
    window.open_runs([window.runs_list.item(0)])
    assert window.curves.point_count("loss") == 4


def test_train_for_n_minutes_from_the_window(make_window, qtbot, tiny_model, classification_data):
    """"Train for N minutes": the run ends on its time budget, long before its step count, and
    finishes like a completed run (final evaluation, adapter)."""
    window = make_window()
    fill_tiny(window, tiny_model, classification_data, steps=100000, eval_every=0,
               time_budget_minutes="0.003")
    assert window.form.config().time_budget_minutes == pytest.approx(0.003)
    with qtbot.waitSignal(window.sig_run_finished, timeout=ENGINE_TIMEOUT_MS) as finished:
        qtbot.mouseClick(window.start_button, Qt.MouseButton.LeftButton)
    assert finished.args == ["completed"], window.log.toPlainText()
    assert 1 <= window.progress.value() < 100000
    assert "time budget of 0.003 min reached" in window.log.toPlainText()
    assert (window.run.output_dir / "adapter" / "adapter_config.json").is_file()


def test_drop_dataset_file_shows_preview_and_inspection(make_window, qtbot, classification_data):
    window = make_window()
    with qtbot.waitSignal(window.preview.sig_inspected, timeout=60_000) as inspected:
        drop = drop_file(window.drop_zone, classification_data)
    assert drop.isAccepted()
    assert window.dataset_edit.text() == str(classification_data)
    table = window.preview.table
    assert table.rowCount() == 20
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert set(headers) == {"text", "label"}
    first = json.loads(classification_data.read_text().splitlines()[0])
    assert table.item(0, headers.index("text")).text() == first["text"]
    assert inspected.args[0]["schema"] == "classification"
    assert "120 rows" in window.preview.summary.text()


def test_drop_broken_dataset_names_the_line(make_window, qtbot, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 1}\n{"text": oops}\n')
    window = make_window()
    with qtbot.waitSignal(window.preview.sig_inspected, timeout=60_000) as inspected:
        drop_file(window.drop_zone, bad)
    assert "bad.jsonl:2" in window.preview.summary.text()
    assert inspected.args[0]["errors"]


def test_drop_model_folder_and_gguf(make_window, qtbot, tiny_model, tmp_path):
    window = make_window()
    with qtbot.waitSignal(window.model_probe.sig_answered, timeout=ENGINE_TIMEOUT_MS):
        drop = drop_file(window.model_edit, tiny_model)
    assert drop.isAccepted()
    assert window.model_edit.text() == str(tiny_model)
    summary = window.model_summary.text()
    assert "LlamaForCausalLM" in summary and "context 256" in summary and "0.1 M" in summary
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    drop_file(window.model_edit, gguf)
    assert window.model_edit.text() == str(gguf)
    window.model_probe.kill()  # reading a fake GGUF is not what this test is about


def test_settings_yaml_and_presets(make_window, tiny_model, classification_data, tmp_path):
    window = make_window()
    fill_tiny(window, tiny_model, classification_data)
    dialog = window.setup.show_yaml()
    assert "steps: 4" in dialog.yaml_text and "- ' terrible'" in dialog.yaml_text
    dialog.close()
    window.form.apply_preset("Train for 10 minutes")
    assert window.setup.current_config().time_budget_minutes == 10
    optimizer = window.setup.current_config().optimizer
    assert (optimizer.schedule, optimizer.estimator, optimizer.directions, optimizer.q) == (
        "cosine", "one-sided", "rademacher", 15)
    window.form.apply_preset("Quick demo")
    assert window.setup.current_config().optimizer.q == 4
    window.form.apply_preset("Quality")
    assert window.setup.current_config().steps == 1000 and window.setup.current_config().optimizer.q == 15
    assert window.setup.current_config().time_budget_minutes == 0  # a step preset clears the budget
    window.form.widgets["optimizer.lr"].setText("fast")
    window.start()
    assert "optimizer.lr" in window.status_line.text() and window.run.state == "idle"
    window.form.widgets["optimizer.lr"].setText("0.01")
    window.form.widgets["backend"].setCurrentText("executorch")
    assert window.setup.current_config().backend == "executorch"
    window.form.widgets["optimizer.name"].setCurrentText("fo")
    window.start()
    assert "backend&quot; is executorch" in window.status_line.text() and window.run.state == "idle"


def test_engine_that_crashes_is_reported_and_resume_offered(
        make_window, qtbot, tmp_path, tiny_model, classification_data):
    command = fake_engine(tmp_path, "crash", """
        import pathlib, yaml
        output_dir = pathlib.Path(yaml.safe_load(open(sys.argv[1]))["output_dir"])
        (output_dir / "checkpoints").mkdir(parents=True)
        event(1, "progress", step=1, total_steps=4, elapsed_seconds=0.1, eta_seconds=0.3)
        print("Traceback: something broke badly", file=sys.stderr, flush=True)
        sys.exit(3)
    """)
    window = make_window(engine_command=command)
    fill_tiny(window, tiny_model, classification_data)
    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000) as finished:
        window.start()
    assert finished.args == ["crashed"]
    assert "crashed" in window.status_line.text()
    assert "something broke badly" in window.status_line.text()
    assert "something broke badly" in window.log.toPlainText()
    assert window.start_button.isEnabled() and window.progress.value() == 1
    assert window.resume_button.isEnabled()  # a checkpoint folder exists to resume from


def test_malformed_and_unknown_events_are_logged_and_skipped(
        make_window, qtbot, tmp_path, tiny_model, classification_data):
    command = fake_engine(tmp_path, "odd", """
        print("this is not json", flush=True)
        event(1, "telemetry_v9", whatever=1)
        event(2, "metrics", step=1, loss=0.7, step_seconds=0.1, tokens_per_second=100.0)
        event(3, "done", status="completed", exit_code=0, output_dir=None)
    """)
    window = make_window(engine_command=command)
    fill_tiny(window, tiny_model, classification_data)
    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000) as finished:
        window.start()
    assert finished.args == ["completed"]
    log = window.log.toPlainText()
    assert "malformed" in log and "this is not json" in log
    assert "telemetry_v9" in log
    window.curves.redraw()
    assert window.curves.point_count("loss") == 1  # the stream went on after both
    assert window.start_button.isEnabled()
    # The next window (same QSettings) starts with this model and dataset.
    again = make_window()
    assert again.model_edit.text() == str(tiny_model)
    assert again.dataset_edit.text() == str(classification_data)
    assert again.settings.value("schema_version") in (1, "1")


def test_engine_that_hangs_is_ended_by_the_watchdog(
        make_window, qtbot, tmp_path, tiny_model, classification_data):
    command = fake_engine(tmp_path, "hang", """
        time.sleep(60)
    """)
    window = make_window(engine_command=command, watchdog_seconds=1.0)
    fill_tiny(window, tiny_model, classification_data)
    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000) as finished:
        window.start()
    assert finished.args == ["hung"]
    assert "sent nothing for 1 s" in window.log.toPlainText()
    assert window.start_button.isEnabled()
    # Killed, not waited for: it ends as the event loop turns.
    qtbot.waitUntil(lambda: all(p.state() == QProcess.ProcessState.NotRunning
                                for p in window.engine.findChildren(QProcess)), timeout=5000)


def test_stop_mid_run_then_resume_continues(make_window, qtbot, tiny_model, classification_data):
    window = make_window()
    fill_tiny(window, tiny_model, classification_data, steps=40, eval_every=20)
    with qtbot.waitSignal(window.engine.sig_event_received, timeout=ENGINE_TIMEOUT_MS,
                          check_params_cb=lambda e: e.type == "progress" and e.data["step"] >= 2):
        window.start()
    with qtbot.waitSignal(window.sig_run_finished, timeout=ENGINE_TIMEOUT_MS) as stopped:
        qtbot.keyClick(window, Qt.Key.Key_Period, Qt.KeyboardModifier.ControlModifier)
    assert stopped.args == ["stopped"], window.log.toPlainText()
    assert window.resume_button.isEnabled()
    stopped_at = window.progress.value()
    assert 2 <= stopped_at < 40
    with qtbot.waitSignal(window.sig_run_finished, timeout=ENGINE_TIMEOUT_MS) as finished:
        qtbot.mouseClick(window.resume_button, Qt.MouseButton.LeftButton)
    assert finished.args == ["completed"], window.log.toPlainText()
    steps = [r["step"] for r in read_history(window.run.output_dir / "metrics.jsonl")
             if r["type"] == "metrics"]
    assert steps == list(range(1, 41))
    window.curves.redraw()
    assert window.curves.point_count("loss") == 40  # history replayed, then live points


def test_curves_redraw_in_batches_and_hover_reads_values(qtbot):
    from app.widgets.curves import CurvesWidget

    curves = CurvesWidget()
    qtbot.addWidget(curves)
    curves.resize(1000, 700)
    curves.show()
    for step in range(1, 201):
        curves.add_event("metrics", {"step": step, "loss": 1.0 / step, "step_seconds": 0.1,
                                     "tokens_per_second": 900.0 + step})
    curves.add_event("memory", {"step": 200, "rss_bytes": 2**30, "peak_rss_bytes": 2**30,
                                "device_allocated_bytes": None, "budget_bytes": 2 * 2**30})
    assert not curves._items  # 201 events, no redraw yet: the 100 ms timer batches them
    qtbot.waitUntil(lambda: bool(curves._items), timeout=2000)
    xs, ys = curves._items[(0, "loss")].getData()
    assert len(xs) == 200 and ys[99] == pytest.approx(0.01)
    assert len(curves._items[(0, "tokens_per_second")].getData()[0]) == 200
    assert curves.budget_line.isVisible() and curves.budget_line.value() == 2.0
    curves.graphics.grab()  # lay the plots out so view coordinates map to the scene
    plot = curves.plots["Training loss"]
    plot.vb.setRange(xRange=(1, 200), yRange=(0, 1), padding=0)
    curves._mouse_moved(plot.vb.mapViewToScene(QPointF(100, 0.5)))
    assert "step 100" in curves.hover.text() and "raw = 0.01 " in curves.hover.text()


def test_history_overlays_two_runs(make_window, tmp_path):
    root = tmp_path / "runs"
    for name, accuracy in (("a", 0.6), ("b", 0.8)):
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("model: tiny\ndataset: /data/x.jsonl\n")
        records = [{"type": "metrics", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
        records.append({"type": "eval", "step": 3, "loss": 0.5, "accuracy": accuracy, "rows": 8})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "{torn")
    window = make_window()
    assert window.runs_list.count() == 2
    texts = [window.runs_list.item(i).text() for i in range(2)]
    assert any("80.0%" in t for t in texts) and all("stopped" not in t for t in texts)
    window.runs_list.selectAll()
    window.open_runs(window.runs_list.selectedItems())
    assert len(window.curves.runs) == 2
    assert [len(r.get("loss")[0]) for r in window.curves.runs] == [3, 3]


def test_startup_benchmark_measures_a_shown_window():
    from app.bench_startup import measure_once

    shown, plots_ready = measure_once()
    # Loose bound: the CPUs are shared; the target (1.5 s) is checked by running the benchmark.
    assert 0 < shown <= plots_ready < 15


@pytest.mark.skipif(shutil.which("xvfb-run") is None,
                    reason="Xvfb is not installed (make test-system installs it)")
def test_main_states_on_a_real_x_server():
    """The end-to-end test again, on Xvfb through Qt's xcb platform (what a Linux desktop runs)."""
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "QT_XCB_GL_INTEGRATION": "none"}
    result = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", sys.executable, "-X", "faulthandler",
         "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{__file__}::test_end_to_end_training_from_the_window"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for state in ("1-empty", "2-dataset", "3-training", "4-finished"):
        assert (SCREENSHOTS / f"xcb-{state}.png").stat().st_size > 10_000
