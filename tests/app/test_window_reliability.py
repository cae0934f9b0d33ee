"""Faults and bad inputs through the window: what the user sees, with real engine processes.

A sample of the bad-input corpus (tests/test_bad_inputs.py), at least one case per category,
goes through the entry points a user meets: a dataset dropped on the drop zone (inspection), a
model typed into the model field (probe), a config picked with Load…, a run folder resumed from
the Runs tab, settings started with Start. Each must show a message naming the file/line/field,
no traceback, and change no file. Then the engine dying, hanging or flooding, and a stopped export.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ENGINE_TIMEOUT_MS, REPO, drop_file, fake_engine, fill_tiny

pytest.importorskip("pytestqt")

import yaml  # noqa: E402
from bad_inputs import CASES, GOOD_ROWS, Ctx, snapshot
from PySide6.QtCore import QProcess, Qt, QTimer  # noqa: E402
from PySide6.QtGui import QTextDocument  # noqa: E402
from PySide6.QtWidgets import QFileDialog, QPushButton  # noqa: E402

from engine.api.history import read_history  # noqa: E402
from engine.train import checkpoint  # noqa: E402

CASE = {c.id: c for c in CASES}


def _plain(rich_text: str) -> str:
    """A label's text as the user reads it (rich text rendered, entities decoded)."""
    document = QTextDocument()
    document.setHtml(rich_text)
    return document.toPlainText()


def _check_shown(shown: str, expect: tuple[str, ...]) -> None:
    assert "Traceback" not in shown, shown
    for fragment in expect:
        assert fragment.lower() in shown.lower(), f"{fragment!r} not in what the window shows:\n{shown}"


# ---- the corpus through the window ---------------------------------------------------------

DATASET_SAMPLE = ["one_bad_jsonl_line", "missing_label_field", "not_utf8", "ragged_csv",
                  "corrupt_parquet", "binary_file", "folder_without_train_file",
                  "spaces_and_unicode_in_the_path"]


def test_bad_datasets_dropped_on_the_window_name_file_and_line(make_window, qtbot, ctx):
    window = make_window()
    for name in DATASET_SAMPLE:
        case = CASE[name]
        path = case.build.make_dataset(ctx)
        before = snapshot(ctx.dir)
        with qtbot.waitSignal(window.preview.sig_inspected, timeout=60_000) as inspected:
            drop_file(window.drop_zone, path)
        assert inspected.args[0]["errors"], name
        _check_shown(_plain(window.preview.summary.text()),
                     tuple(f for f in case.expect if f != "skip_bad_rows"))
        assert snapshot(ctx.dir) == before, name


MODEL_SAMPLE = ["model_folder_without_config", "gguf_truncated",
                "gguf_of_an_unsupported_architecture", "gguf_that_is_not_gguf",
                "hub_id_while_offline", "model_path_missing"]


def test_bad_models_typed_into_the_window_are_named_by_the_probe(make_window, qtbot, ctx):
    window = make_window()
    for name in MODEL_SAMPLE:
        case = CASE[name]
        reference = next(a.split("=", 1)[1] for a in case.build(ctx) if a.startswith("model="))
        before = snapshot(ctx.dir)
        window.model_edit.clear()
        qtbot.keyClicks(window.model_edit, reference)
        with qtbot.waitSignal(window.model_probe.sig_answered, timeout=ENGINE_TIMEOUT_MS):
            qtbot.keyClick(window.model_edit, Qt.Key.Key_Return)
        _check_shown(_plain(window.model_summary.text()), case.expect)
        assert snapshot(ctx.dir) == before, name


CONFIG_SAMPLE = ["unknown_key", "negative_lr", "q_zero", "eps_zero", "steps_not_a_number",
                 "section_given_a_value", "config_not_yaml", "config_is_a_list",
                 "config_not_utf8", "config_file_missing", "config_is_a_folder"]


def _as_yaml_file(ctx: Ctx, argv: list[str]) -> Path:
    """The case's config as the file a user would load: its YAML, or the overrides written out."""
    if "=" not in argv[1]:
        return Path(argv[1])
    config: dict = {}
    for override in argv[1:]:
        key, value = override.split("=", 1)
        *sections, field = key.split(".")
        target = config
        for section in sections:
            target = target.setdefault(section, {})
        target[field] = yaml.safe_load(value)
    path = ctx.dir / "loaded.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_bad_configs_loaded_in_the_window_name_the_field(make_window, ctx, monkeypatch):
    window = make_window()
    load = next(b for b in window.findChildren(QPushButton) if b.text() == "Load…")
    form_before = window.form.config()
    for name in CONFIG_SAMPLE:
        path = _as_yaml_file(ctx, CASE[name].build(ctx))
        before = snapshot(ctx.dir)
        monkeypatch.setattr(QFileDialog, "getOpenFileName",
                            staticmethod(lambda *args, p=path: (str(p), "YAML (*.yaml *.yml)")))
        load.click()
        box = window.setup.message_box
        assert box is not None and box.isVisible() and box.windowTitle() == "Config not loaded"
        _check_shown(box.text(), CASE[name].expect)
        box.close()
        assert snapshot(ctx.dir) == before, name
    assert window.form.config() == form_before  # a refused file changes no setting
    assert window.model_edit.text() == ""


def test_settings_the_engine_refuses_are_named_after_start(make_window, qtbot, tiny_model, ctx):
    """max_seq_len beyond the model's context: only the engine knows the model; the window shows
    its error event, and the engine's log file holds the traceback the window does not show."""
    window = make_window()
    fill_tiny(window, tiny_model, ctx.data, max_seq_len=1024)
    with qtbot.waitSignal(window.sig_run_finished, timeout=ENGINE_TIMEOUT_MS) as finished:
        window.start()
    assert finished.args == ["failed"]
    _check_shown(_plain(window.status_line.text()), CASE["max_seq_len_beyond_the_context"].expect)
    assert "Traceback" not in window.log.toPlainText()
    log = (window.run.output_dir / "engine.log").read_text()
    assert "Traceback" in log and "UserError" in log


@pytest.mark.parametrize("name", ["resume_a_run_folder_from_a_newer_version",
                                  "resume_a_checkpoint_from_a_newer_version"])
def test_foreign_run_folders_resumed_from_the_runs_tab_are_named(make_window, qtbot, tiny_model,
                                                                 tmp_path, name):
    runs = tmp_path / "runs"
    runs.mkdir()
    data = tmp_path / "good.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GOOD_ROWS))
    CASE[name].build(Ctx(runs, tiny_model, data))  # writes runs/run as that version left it
    before = snapshot(runs / "run")
    window = make_window()
    assert window.runs_list.count() == 1 and "[stopped]" in window.runs_list.item(0).text()
    window.runs_list.item(0).setSelected(True)
    with qtbot.waitSignal(window.sig_run_finished, timeout=ENGINE_TIMEOUT_MS) as finished:
        window.resume_selected_button.click()
    assert finished.args == ["failed"]
    _check_shown(_plain(window.status_line.text()), CASE[name].expect)
    after = snapshot(runs / "run")
    assert {p: d for p, d in after.items() if not p.endswith("engine.log")} == before


# ---- the engine dies, hangs or floods ------------------------------------------------------

def test_engine_killed_mid_run_is_reported_and_resume_finishes(make_window, qtbot, tiny_model,
                                                                classification_data):
    """kill -9 of the real engine right after its first checkpoint; Resume replays from it."""
    window = make_window()
    fill_tiny(window, tiny_model, classification_data, steps=60, eval_every=0,
               checkpoint_every=3)
    with qtbot.waitSignal(window.engine.sig_event_received, timeout=ENGINE_TIMEOUT_MS,
                          check_params_cb=lambda e: e.type == "checkpoint"):
        window.start()
    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000) as finished:
        os.kill(window.engine.findChild(QProcess).processId(), signal.SIGKILL)
    assert finished.args == ["crashed"]
    shown = _plain(window.status_line.text())
    assert "crashed (exit code 9)" in shown and "Resume continues from the last checkpoint" in shown
    assert window.resume_button.isEnabled() and window.start_button.isEnabled()
    kept = checkpoint.load_latest(window.run.output_dir / "checkpoints").step
    assert 3 <= kept < 60
    with qtbot.waitSignal(window.sig_run_finished, timeout=ENGINE_TIMEOUT_MS) as finished:
        qtbot.mouseClick(window.resume_button, Qt.MouseButton.LeftButton)
    assert finished.args == ["completed"], window.log.toPlainText()
    steps = [r["step"] for r in read_history(window.run.output_dir / "metrics.jsonl")
             if r["type"] == "metrics"]
    assert steps == list(range(1, 61))
    assert any(f"at step {kept}" in line for line in window.log.toPlainText().splitlines())


def test_engine_that_hangs_after_a_checkpoint_offers_resume(make_window, qtbot, tmp_path,
                                                            tiny_model, classification_data):
    command = fake_engine(tmp_path, "hang", """
        import pathlib, yaml
        output_dir = pathlib.Path(yaml.safe_load(open(sys.argv[1]))["output_dir"])
        (output_dir / "checkpoints").mkdir(parents=True)
        event(1, "checkpoint", step=2, path=str(output_dir / "checkpoints" / "step-00000002"))
        time.sleep(60)
    """)
    # Long enough for the fake engine's yaml import on a loaded machine: a watchdog that fires
    # before the checkpoint event leaves nothing to resume.
    window = make_window(engine_command=command, watchdog_seconds=5)
    fill_tiny(window, tiny_model, classification_data)
    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000) as finished:
        window.start()
    assert finished.args == ["hung"]
    assert "stopped answering" in _plain(window.status_line.text())
    assert window.resume_button.isEnabled()


FLOOD_EVENTS = 10_000


def test_window_stays_responsive_under_a_flood_of_10k_events(make_window, qtbot, tmp_path,
                                                             tiny_model, classification_data):
    total = FLOOD_EVENTS // 3
    # Written in one go, as fast as the pipe takes it (no flush per line).
    command = fake_engine(tmp_path, "flood", f"""
        def burst(seq, type, **data):
            sys.stdout.write(json.dumps({{"v": 1, "seq": seq, "time": time.time(),
                                         "run_id": "fake", "type": type, "data": data}}) + "\\n")
        total = {total}
        for step in range(1, total + 1):
            burst(3 * step - 2, "metrics", step=step, loss=1 / step, step_seconds=0.01,
                  tokens_per_second=1000.0, lr=0.01)
            burst(3 * step - 1, "progress", step=step, total_steps=total,
                  elapsed_seconds=step * 0.01, eta_seconds=(total - step) * 0.01)
            burst(3 * step, "memory", step=step, rss_bytes=2**28, peak_rss_bytes=2**28,
                  budget_bytes=None)
        burst(3 * total + 1, "done", status="completed", exit_code=0, output_dir=None)
        sys.stdout.flush()
    """)
    window = make_window(engine_command=command)
    fill_tiny(window, tiny_model, classification_data)
    received = []
    window.engine.sig_event_received.connect(received.append)
    ticks = []
    timer = QTimer(interval=20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    try:
        with qtbot.waitSignal(window.sig_run_finished, timeout=120_000) as finished:
            window.start()
    finally:
        timer.stop()
    assert finished.args == ["completed"]
    assert len(received) == 3 * total + 2  # every event handled, none dropped
    assert window.progress.value() == total
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) > 5 and max(gaps) < 1.0, f"the event loop stalled for {max(gaps):.2f} s"


# ---- a stopped export ----------------------------------------------------------------------

def test_stop_during_an_export_from_the_export_tab(make_window, qtbot, tiny_model, tmp_path):
    from lora_runs import make_random_adapter, make_run

    run = make_run(tmp_path / "run", tiny_model, make_random_adapter(tiny_model, tmp_path / "ad"))
    window = make_window()
    panel = window.export_panel
    panel.set_run(run)
    out = run / "export"
    with qtbot.waitSignal(panel.sig_export_finished, timeout=ENGINE_TIMEOUT_MS) as finished:
        panel.buttons["gguf"].click()
        assert panel.stop_button.isEnabled()
        # Stop once the engine writes its first file (its stop handler is installed by then).
        qtbot.waitUntil(lambda: out.is_dir() and any(out.iterdir()), timeout=ENGINE_TIMEOUT_MS)
        panel.stop_button.click()
    assert finished.args == ["gguf", 130, ""]
    text = panel.output.toPlainText()
    assert "export gguf stopped" in text and "no partial file is left" in text
    assert "Traceback" not in text
    assert not [p for p in out.iterdir() if p.suffix == ".partial" or p.suffix == ".Modelfile"]
    assert not panel.stop_button.isEnabled() and panel.buttons["gguf"].isEnabled()
    assert all(p.state() == QProcess.ProcessState.NotRunning for p in panel.findChildren(QProcess))


# ---- the window's own writes and child processes -----------------------------------------

def _save_button(window) -> QPushButton:
    return next(b for b in window.findChildren(QPushButton) if b.text() == "Save…")


def _save_to(window, monkeypatch, path: Path):
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        staticmethod(lambda *args: (str(path), "YAML (*.yaml)")))
    _save_button(window).click()
    box = window.setup.message_box
    assert box is not None and box.isVisible() and box.windowTitle() == "Config not saved"
    return box


def test_save_to_a_full_device_says_so(make_window, tiny_model, ctx, monkeypatch):
    window = make_window()
    fill_tiny(window, tiny_model, ctx.data)
    box = _save_to(window, monkeypatch, Path("/dev/full"))  # every write: ENOSPC
    _check_shown(box.text(), ("/dev/full", "No space left", "free disk space"))


@pytest.fixture
def unwritable(tmp_path):
    """(a read-only folder, a full one): a read-only bind mount and a filled 64 KiB tmpfs. Mounting
    needs root; skipped where it is not allowed."""
    read_only, full = tmp_path / "read-only", tmp_path / "full"
    read_only.mkdir()
    full.mkdir()
    mounted: list[Path] = []

    def mount(*args, target: Path) -> None:
        done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount here: {done.stderr.strip()}")
        mounted.append(target)

    try:
        mount("--bind", str(read_only), target=read_only)
        mount("-o", "remount,bind,ro", target=read_only)
        mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", target=full)
        with contextlib.suppress(OSError):
            (full / "filler").write_bytes(bytes(2**20))
        yield read_only, full
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_save_and_start_into_read_only_and_full_folders_say_so(make_window, tiny_model, ctx,
                                                               monkeypatch, unwritable):
    for folder, reason in zip(unwritable, ("Read-only file system", "No space left"), strict=True):
        window = make_window()
        window.runs_root = folder
        fill_tiny(window, tiny_model, ctx.data)
        box = _save_to(window, monkeypatch, folder / "saved.yaml")
        _check_shown(box.text(), (str(folder / "saved.yaml"), reason, "writable folder"))
        box.close()
        window.start()  # the run's config goes into the runs folder first
        assert window.run.state == "idle" and not window.engine.is_running()
        _check_shown(_plain(window.status_line.text()), (str(folder), reason, "nothing was started"))


def test_engine_tools_that_cannot_start_say_so(make_window, qtbot, tiny_model, ctx, tmp_path,
                                               monkeypatch):
    """A probe or an inspection whose process fails to start answers with the reason: the
    summaries never stay on "reading the model…" / "inspecting…"."""
    from app import json_tool

    monkeypatch.setattr(json_tool, "engine_command",
                        lambda *args: [str(tmp_path / "no-such-python"), "-m", "engine", *args])
    window = make_window()
    with qtbot.waitSignal(window.model_probe.sig_answered, timeout=10_000):
        window.model_picker.probe_model(str(tiny_model))
    with qtbot.waitSignal(window.preview.sig_inspected, timeout=10_000):
        window.setup.set_dataset(str(ctx.data))
    for label in (window.model_summary, window.preview.summary):
        shown = _plain(label.text())
        assert "the engine could not be started" in shown and "no-such-python" in shown
        assert "reading the model" not in shown and "inspecting" not in shown


def test_the_window_never_waits_for_a_process():
    """The GUI thread never blocks on a child: no waitForFinished/waitForStarted in app/."""
    blocking = [f"{path.relative_to(REPO)}:{number}" for path in sorted((REPO / "app").rglob("*.py"))
                for number, line in enumerate(path.read_text().splitlines(), 1)
                if "waitForFinished" in line or "waitForStarted" in line]
    assert not blocking, blocking


# ---- safe defaults in the window -----------------------------------------------------------

def test_run_folders_are_named_by_the_window_never_by_user_text(make_window, qtbot, tmp_path,
                                                                tiny_model, classification_data):
    """Run names become paths: the window makes them from the clock (run-YYYYmmdd-HHMMSS, then
    -2, -3… when taken), so no typed text reaches the file system and no run is overwritten."""
    command = fake_engine(tmp_path, "quick", """
        event(1, "done", status="completed", exit_code=0, output_dir=None)
    """)
    window = make_window(engine_command=command)
    odd = "../../{text} $(rm -rf ~) <b>"  # typed text stays data, never a path or a command
    fill_tiny(window, tiny_model, classification_data, prompt_template=odd)
    now = time.time()
    taken = [window.runs_root / time.strftime("run-%Y%m%d-%H%M%S", time.localtime(now + dt))
             for dt in range(30)]  # every name of the next 30 s is an earlier run's
    for folder in taken:
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("earlier run\n")
    with qtbot.waitSignal(window.sig_run_finished, timeout=30_000):
        window.start()
    folder = window.run.output_dir
    assert folder.parent == window.runs_root and folder not in taken
    assert re.fullmatch(r"run-\d{8}-\d{6}-2", folder.name), folder.name
    config = yaml.safe_load((window.runs_root / f"{folder.name}.yaml").read_text())
    assert config["output_dir"] == str(folder)
    assert config["prompt_template"] == odd
    assert all((f / "notes.txt").read_text() == "earlier run\n" for f in taken)
