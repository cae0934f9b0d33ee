"""The Export tab: a button per engine format, exports run as engine processes."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QProcess  # noqa: E402

from app.export_panel import ExportPanel, format_available  # noqa: E402
from engine.export import FORMATS  # noqa: E402


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
    assert panel.buttons["gguf"].isEnabled()
    for fmt, button in panel.buttons.items():
        assert button.isEnabled() == format_available(fmt)
        if not format_available(fmt):
            assert "not available" in button.toolTip()


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
