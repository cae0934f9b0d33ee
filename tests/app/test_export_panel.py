"""The Export tab: a button per engine format, exports run as engine processes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import fake_engine, needs_adb, train_tiny_run, write_gguf
from lora_runs import make_random_adapter, make_run

pytest.importorskip("pytestqt")

from PySide6.QtCore import QProcess  # noqa: E402
from PySide6.QtGui import QDesktopServices, QGuiApplication  # noqa: E402

from app.widgets import export_panel  # noqa: E402
from app.widgets.export_panel import KILL_AFTER_MS, MERGED_OUTTYPES, ExportPanel  # noqa: E402
from engine.api.formats import FORMATS  # noqa: E402
from engine.export.gguf_writer import OUTTYPES  # noqa: E402


@pytest.fixture
def panel(qtbot):
    panel = ExportPanel()
    qtbot.addWidget(panel)
    panel.show()
    yield panel
    running = [p for p in panel.findChildren(QProcess) if p.state() != QProcess.ProcessState.NotRunning]
    panel.kill()
    assert not running, "an export process outlived its test"


def test_one_button_per_engine_format(panel):
    assert list(panel.buttons) == list(FORMATS)
    for fmt, button in panel.buttons.items():
        assert button.isEnabled() and button.toolTip() == FORMATS[fmt].help


def test_an_engine_that_cannot_start_ends_the_export(panel, qtbot, tmp_path, monkeypatch):
    monkeypatch.setattr(export_panel, "engine_command",
                        lambda *args: [str(tmp_path / "no-such-python"), "-m", "engine", *args])
    panel.set_run(tmp_path)
    with qtbot.waitSignal(panel.sig_export_finished, timeout=10_000) as finished:
        panel.buttons["gguf"].click()
    assert finished.args == ["gguf", -1, ""]
    assert "the engine could not be started" in panel.output.toPlainText()
    assert not panel.busy.isVisible() and panel.buttons["gguf"].isEnabled()
    assert not panel.is_running()


def test_closing_never_waits_for_an_export_that_ignores_sigterm(panel, qtbot, tmp_path,
                                                               monkeypatch):
    """kill() sends SIGTERM and returns; the engine is killed KILL_AFTER_MS later if still there."""
    stubborn = fake_engine(tmp_path, "stubborn", """
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        event(1, "log", level="info", message="ready")
        time.sleep(120)
    """)
    monkeypatch.setattr(export_panel, "engine_command", lambda *args: [*stubborn, *args])
    panel.set_run(tmp_path)
    with qtbot.waitSignal(panel.sig_export_finished, timeout=KILL_AFTER_MS + 30_000) as finished:
        panel.buttons["gguf"].click()
        qtbot.waitUntil(lambda: "ready" in panel.output.toPlainText(), timeout=30_000)
        started = time.monotonic()
        panel.kill()
        assert time.monotonic() - started < 0.5 and panel.is_running()
    assert finished.args[2] == "" and not panel.is_running()
    assert time.monotonic() - started >= KILL_AFTER_MS / 1000 * 0.9


def test_progress_and_the_path_come_from_events_never_from_text(panel, qtbot, tmp_path,
                                                               monkeypatch):
    """The bar follows progress events and the path is the artifact event's; the old stage
    lines as free text (stderr) and a path printed on stdout move nothing."""
    command = fake_engine(tmp_path, "export", """
        print("executorch: stage 1/6 load: free text", file=sys.stderr, flush=True)
        print("/printed/not/an/event.gguf", flush=True)
        event(1, "status", state="load", message="base model + adapter")
        event(2, "progress", stage=1, stages=2, name="load", seconds=None)
        event(3, "progress", stage=1, stages=2, name="load", seconds=0.25)
        event(4, "status", state="write", message="the adapter file")
        event(5, "progress", stage=2, stages=2, name="write", seconds=None)
        event(6, "progress", stage=2, stages=2, name="write", seconds=1.5)
        event(7, "artifact", kind="gguf", path="/exported/adapter.gguf")
        event(8, "done", status="completed", exit_code=0)
    """)
    monkeypatch.setattr(export_panel, "engine_command", lambda *args: [*command, *args])
    panel.set_run(tmp_path)
    shown = []
    panel.busy.valueChanged.connect(lambda value: shown.append((value, panel.busy.format())))
    with qtbot.waitSignal(panel.sig_export_finished, timeout=30_000) as finished:
        panel.buttons["gguf"].click()
    assert finished.args == ["gguf", 0, "/exported/adapter.gguf"]
    assert shown == [(0, "stage 1/2: load…"), (1, "stage 1/2: load done in 0.2 s"),
                     (2, "stage 2/2: write done in 1.5 s")]
    text = panel.output.toPlainText()
    assert "load: base model + adapter" in text and "write: the adapter file" in text
    assert "exported gguf: /exported/adapter.gguf" in text


def test_push_shows_the_percent_of_bytes_and_where_the_files_landed(panel, qtbot, tmp_path,
                                                                    monkeypatch):
    command = fake_engine(tmp_path, "push", """
        event(1, "status", state="pushing", message="3 files to 0A1B:/data/local/tmp/edgetune/run")
        event(2, "progress", percent=40.0, file="model.pte", file_percent=50)
        event(3, "artifact", kind="device", path="0A1B:/data/local/tmp/edgetune/run")
        event(4, "done", status="completed", exit_code=0)
    """)
    monkeypatch.setattr(export_panel, "engine_command", lambda *args: [*command, *args])
    export = tmp_path / "run" / "export" / "executorch"
    export.mkdir(parents=True)
    (export / "metadata.json").write_text(json.dumps({
        "export": {"quantize": "none"}, "program_bytes": 2**20,
        "verification": {"prompts": 1, "positions": 2, "max_abs_diff": 0.0, "top1_agreement": 1.0}}))
    panel.set_run(tmp_path / "run")
    panel.show_devices({"devices": [{"serial": "0A1B", "state": "device", "model": "Pixel",
                                     "free_bytes": None, "ready": True}]})
    shown = []
    panel.busy.valueChanged.connect(lambda value: shown.append((value, panel.busy.text())))
    with qtbot.waitSignal(panel.sig_push_finished, timeout=30_000) as finished:
        panel.push_button.click()
    assert finished.args == [0, "0A1B:/data/local/tmp/edgetune/run"]
    assert shown == [(40, "model.pte 50% (all files 40%)")]
    assert "pushed and verified: 0A1B:/data/local/tmp/edgetune/run" in panel.output.toPlainText()


def test_export_of_an_unfinished_run_reports_the_engine_message(panel, qtbot, tmp_path):
    run = tmp_path / "run-1"
    run.mkdir()
    (run / "config.yaml").write_text("model: x\ndataset: y\n")
    panel.set_run(run)
    assert "has none yet" in panel.adapter_label.text()
    with qtbot.waitSignal(panel.sig_export_finished, timeout=60_000) as finished:
        panel.buttons["gguf"].click()
        assert panel.busy.isVisible() and not panel.buttons["gguf"].isEnabled()
    fmt, code, path = finished.args
    assert (fmt, code, path) == ("gguf", 2, "")
    text = panel.output.toPlainText()
    assert "export gguf failed (exit code 2)" in text and "Traceback" not in text
    assert "adapter" in text  # the engine names what is missing
    assert not panel.busy.isVisible() and panel.buttons["gguf"].isEnabled()


def test_executorch_targets_and_push_needs_an_export_and_a_device(panel, tmp_path):
    assert [panel.target.itemData(i) for i in range(panel.target.count())] == ["none", "8da4w"]
    assert not panel.push_button.isEnabled()
    # The JSON `push --list --json` prints: a phone that is ready and one that is not.
    answer = {"devices": [
        {"serial": "0A1B", "state": "device", "model": "Pixel 4a", "product": "sunfish",
         "free_bytes": 3 * 2**30, "ready": True},
        {"serial": "R58M", "state": "unauthorized", "model": "", "product": "", "free_bytes": None,
         "ready": False}]}
    panel.show_devices(answer)
    assert panel.devices.currentData() == "0A1B" and "Pixel 4a (0A1B), 3.0 GiB free" in \
        panel.devices.currentText()
    assert not panel.push_button.isEnabled()  # no export yet
    export = tmp_path / "run" / "export" / "executorch"
    export.mkdir(parents=True)
    (export / "metadata.json").write_text(json.dumps({
        "export": {"quantize": "none"}, "program_bytes": 650 * 2**20,
        "verification": {"prompts": 4, "positions": 200, "max_abs_diff": 2.5e-4,
                         "top1_agreement": 1.0}}))
    panel.set_run(tmp_path / "run")
    assert panel.push_choice.currentData() == str(export) and panel.push_button.isEnabled()
    assert "max |Δlogit| 0.00025, top-1 agreement 100.0%" in panel.result_label.text()
    panel.devices.setCurrentIndex(1)  # the unauthorized one cannot take a push
    assert not panel.push_button.isEnabled()


def test_the_phone_is_offered_executorch_exports_and_merged_gguf_models_not_adapters(panel,
                                                                                     tmp_path):
    export = tmp_path / "run" / "export"
    export.mkdir(parents=True)
    panel.set_run(tmp_path / "run")
    assert panel.push_choice.currentData() is None and panel.push_choice.count() == 1
    assert "no ExecuTorch or merged GGUF export" in panel.push_choice.currentText()
    write_gguf(export / "adapter.gguf", "llama", kind="adapter")
    (export / "executorch").mkdir()
    (export / "executorch" / "metadata.json").write_text("{}")
    for age, name in enumerate(("merged-q4_k_m.gguf", "merged-q8_0.gguf")):  # q8_0 the newest
        write_gguf(export / name, "llama", kind="model")
        os.utime(export / name, (time.time() + age, time.time() + age))
    panel.set_run(tmp_path / "run")
    choices = [(panel.push_choice.itemData(i), panel.push_choice.itemText(i))
               for i in range(panel.push_choice.count())]
    assert [Path(path).name for path, _ in choices] == \
        ["merged-q8_0.gguf", "merged-q4_k_m.gguf", "executorch"]
    assert choices[0][1].startswith("merged GGUF Q8_0, ") and \
        choices[0][1].endswith("MiB → the phone's Download folder (PocketPal, ChatterUI)")
    assert choices[2][1].startswith("ExecuTorch executorch → ")


def test_a_merged_gguf_is_pushed_to_the_download_folder_and_the_next_step_shown(
        panel, qtbot, tmp_path, fake_phone):
    """The real engine's push, to tests/fake_adb.py's phone: the panel shows the bytes' percent,
    where the model landed and what to open on the phone, from the artifact event."""
    export = tmp_path / "run-7" / "export"
    export.mkdir(parents=True)
    write_gguf(export / "merged-q4_k_m.gguf", "llama", kind="model",
               file_type=15)  # gguf.LlamaFileType.MOSTLY_Q4_K_M, as llama.cpp's quantiser writes
    panel.set_run(tmp_path / "run-7")
    panel.show_devices({"devices": [{"serial": "FAKE0001", "state": "device", "model": "Fake Phone",
                                     "free_bytes": None, "ready": True}]})
    assert panel.push_button.isEnabled() and not panel.phone_label.isVisible()
    shown = []
    panel.busy.valueChanged.connect(lambda value: shown.append(panel.busy.text()))
    with qtbot.waitSignal(panel.sig_push_finished, timeout=60_000) as finished:
        panel.push_button.click()
    assert finished.args == [0, "FAKE0001:/sdcard/Download/run-7-Q4_K_M.gguf"], \
        panel.output.toPlainText()
    assert f"push {export / 'merged-q4_k_m.gguf'} --serial FAKE0001" in panel.output.toPlainText()
    assert shown[-1] == "run-7-Q4_K_M.gguf 100% (all files 100%)"
    assert panel.phone_label.isVisible()
    landed = panel.phone_label.text()
    assert landed.startswith("On the phone, checked: FAKE0001:/sdcard/Download/run-7-Q4_K_M.gguf\n")
    assert "PocketPal → Models → + → Add Local Model → pick run-7-Q4_K_M.gguf from Download" in landed
    assert (fake_phone / "sdcard" / "Download" / "run-7-Q4_K_M.gguf").read_bytes() == \
        (export / "merged-q4_k_m.gguf").read_bytes()
    panel.set_run(tmp_path)  # another run: the landing said is that run's no more
    assert not panel.phone_label.isVisible()


@needs_adb
def test_refresh_with_no_phone_keeps_push_disabled(panel, qtbot, own_adb_server):
    with qtbot.waitSignal(panel.device_tool.sig_answered, timeout=60_000):
        panel.refresh_button.click()
        assert not panel.refresh_button.isEnabled()
    assert panel.devices.currentText().startswith("no phone connected")
    assert panel.refresh_button.isEnabled() and not panel.push_button.isEnabled()


def test_executorch_export_shows_stages_and_verification(panel, qtbot, tiny_model,
                                                         classification_data, tmp_path,
                                                         own_adb_server):

    run = train_tiny_run(tiny_model, classification_data, tmp_path / "run")
    panel.set_run(run)
    stages = []
    panel.busy.valueChanged.connect(lambda value: stages.append((value, panel.busy.format())))
    with qtbot.waitSignal(panel.sig_export_finished, timeout=600_000) as finished:
        panel.buttons["executorch"].click()
    fmt, code, path = finished.args
    assert (fmt, code) == ("executorch", 0), panel.output.toPlainText()[-3000:]
    assert Path(path) == run / "export" / "executorch" == Path(panel.push_choice.currentData())
    assert [value for value, _ in stages] == [0, 1, 2, 3, 4, 5, 6]  # each stage's start, then done
    assert stages[4][1].startswith("stage 4/6: lower done in")
    text = panel.result_label.text()
    assert "ExecuTorch export (none, model.pte" in text and "top-1 agreement 100.0%" in text
    assert "+ foundation.ptd" in text  # both sizes of the default (adapter) layout
    assert str(run / "export" / "executorch") in text
    with qtbot.waitSignal(panel.device_tool.sig_answered, timeout=60_000):
        pass  # the device list refreshes after an export; no phone here
    assert not panel.push_button.isEnabled()


def test_the_merged_model_weights_are_chosen_in_the_panel(panel, qtbot, tmp_path, monkeypatch):
    """Q4_K_M (what phone apps run) unless another is picked; each is the engine's --outtype."""
    assert [data for _, data in MERGED_OUTTYPES] == ["q4_k_m", "q8_0", "f16"]
    assert set(data for _, data in MERGED_OUTTYPES) <= set(OUTTYPES)
    command = fake_engine(tmp_path, "export", """
        event(1, "log", level="info", message="argv: " + " ".join(sys.argv[1:]))
        event(2, "done", status="completed", exit_code=0)
    """)
    monkeypatch.setattr(export_panel, "engine_command", lambda *args: [*command, *args])
    panel.set_run(tmp_path)
    for index, outtype in ((0, "q4_k_m"), (1, "q8_0")):
        panel.outtype.setCurrentIndex(index)
        with qtbot.waitSignal(panel.sig_export_finished, timeout=30_000):
            panel.buttons["merged-gguf"].click()
        assert f"argv: export {tmp_path} --format merged-gguf --outtype {outtype} --protocol" in \
            panel.output.toPlainText()
    with qtbot.waitSignal(panel.sig_export_finished, timeout=30_000):
        panel.buttons["gguf"].click()  # the adapter has no weights of its own to choose
    assert panel.output.toPlainText().splitlines()[-2].endswith("--format gguf --protocol")


def test_stderr_is_shown_only_as_a_failures_tail(panel, qtbot, tmp_path, monkeypatch):
    """Library chatter on stderr never floods the output; after a failure its last lines do
    say what happened."""
    script = """
        for n in range(40):
            print(f"lib.py:{n}: FutureWarning: deprecated", file=sys.stderr, flush=True)
        print("Error in cpuinfo: failed to parse", file=sys.stderr, flush=True)
        event(1, "status", state="merge", message="merging")
    """
    ok = fake_engine(tmp_path, "ok", script + """
        event(2, "artifact", kind="gguf", path="/exported/merged.gguf")
        event(3, "done", status="completed", exit_code=0)
    """)
    crash = fake_engine(tmp_path, "crash", script + """
        print("the last words", file=sys.stderr, flush=True)
        sys.exit(1)
    """)
    panel.set_run(tmp_path)
    monkeypatch.setattr(export_panel, "engine_command", lambda *args: [*ok, *args])
    with qtbot.waitSignal(panel.sig_export_finished, timeout=30_000) as finished:
        panel.buttons["merged-gguf"].click()
    text = panel.output.toPlainText()
    assert finished.args[1] == 0 and "merge: merging" in text
    assert "FutureWarning" not in text and "cpuinfo" not in text
    panel.output.clear()
    monkeypatch.setattr(export_panel, "engine_command", lambda *args: [*crash, *args])
    with qtbot.waitSignal(panel.sig_export_finished, timeout=30_000) as finished:
        panel.buttons["merged-gguf"].click()
    text = panel.output.toPlainText()
    assert finished.args[1] == 1 and "merge: merging" in text
    tail = text[text.index("the engine's last lines on stderr"):]
    assert "the last words" in tail and "cpuinfo" in tail
    assert tail.count("FutureWarning") == export_panel.STDERR_TAIL_LINES - 2


def test_a_merged_gguf_export_shows_its_verification_and_loads_into_ollama(
        panel, qtbot, tiny_model, tmp_path, monkeypatch):
    run = make_run(tmp_path / "my run", tiny_model,
                   make_random_adapter(tiny_model, tmp_path / "adapter", b_std=0.3))
    panel.set_run(run)
    assert not panel.open_folder_button.isEnabled() and not panel.ollama_button.isEnabled()
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    with qtbot.waitSignal(panel.sig_export_finished, timeout=300_000) as finished:
        panel.buttons["merged-gguf"].click()  # Q4_K_M, the default
    fmt, code, path = finished.args
    assert (fmt, code) == ("merged-gguf", 0), panel.output.toPlainText()[-3000:]
    assert Path(path) == run / "export" / "merged-q4_k_m.gguf"
    verdict = panel.result_label.text()
    assert path in verdict and "verified in llama.cpp" in verdict
    report = json.loads((run / "export" / "merged-q4_k_m.verification.json").read_text())
    assert f"top-1 {report['top1_agreement']:.1%}" in verdict
    assert f"LoRA-change correlation {report['delta_correlation']:.5f}" in verdict
    assert f"q4_k_m vs f16: top-1 {report['quantised']['top1_agreement_with_f16']:.1%}" in verdict
    assert "FutureWarning" not in panel.output.toPlainText()

    panel.open_folder_button.click()
    assert [url.toLocalFile() for url in opened] == [str(run / "export")]
    panel.ollama_button.click()
    modelfile = run / "export" / "merged-q4_k_m.Modelfile"
    assert QGuiApplication.clipboard().text() == \
        f"ollama create my-run-merged-q4_k_m -f '{modelfile}'"
    assert modelfile.read_text().startswith("FROM ./merged-q4_k_m.gguf")

    panel.set_run(tmp_path)  # no run: nothing to open
    assert not panel.open_folder_button.isEnabled() and not panel.ollama_button.isEnabled()
    panel.set_run(run)  # the newest export is found again on disk
    assert panel.result_label.text() == verdict and panel.ollama_button.isEnabled()
