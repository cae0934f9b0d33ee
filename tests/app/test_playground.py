"""The Playground tab, driven by pytest-qt with real engine processes on the tiny model."""

from __future__ import annotations

import subprocess
import sys

import pytest
from lora_runs import make_random_adapter, make_run
from PySide6.QtCore import Qt

from app.widgets.playground import PlaygroundWidget
from engine.export import gguf as gguf_export

LABELS = [" terrible", " great"]


@pytest.fixture(scope="module")
def gguf_run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    base_gguf = root / "tiny.gguf"
    gguf_export.write_model(tiny_model, base_gguf, "f32")
    adapter = make_random_adapter(tiny_model, root / "adapter", b_std=0.3)
    run = make_run(root / "run", base_gguf, adapter, label_words=LABELS)
    # Exported up front, as `python -m engine export` would; the chat processes then only load.
    gguf_export.export(run, None, verify=False)
    return run


@pytest.fixture(scope="module")
def folder_run(tiny_model, gguf_run):
    """The same adapter on the Hugging Face folder: transformers generates, slowly enough to stop."""
    return make_run(gguf_run.parent / "folder-run", tiny_model, gguf_run / "adapter")


@pytest.fixture
def playground(qtbot):
    widget = PlaygroundWidget()
    qtbot.addWidget(widget)
    yield widget
    assert not widget.is_generating(), "an engine process was left running"


def test_base_and_fine_tuned_answers_stream_side_by_side(playground, gguf_run, qtbot):
    playground.set_run(gguf_run)
    playground.prompt.setPlainText("The food was")
    playground.temperature.setValue(0.0)
    playground.max_tokens.setValue(24)
    tokens = []
    playground._sides[1][1].sig_token_received.connect(tokens.append)
    with qtbot.waitSignal(playground.sig_generation_finished, timeout=120_000):
        qtbot.mouseClick(playground.send_button, Qt.MouseButton.LeftButton)
        assert not playground.send_button.isEnabled() and playground.stop_button.isEnabled()
    assert len(tokens) > 1  # streamed in pieces, not as one block
    for pane in (playground.base, playground.tuned):
        assert pane.answer.toPlainText()  # greedy on a random model: may be all newlines
        assert pane.status.text() == "completed"
        assert "P('terrible')" in pane.probabilities.text()
    # The adapter changes the label-word probabilities: before ≠ after.
    assert playground.base.probabilities.text() != playground.tuned.probabilities.text()
    assert playground.send_button.isEnabled() and not playground.stop_button.isEnabled()


def test_stop_ends_both_processes(playground, folder_run, qtbot):
    # llama.cpp writes the tiny model's 1500 tokens in well under a second; transformers takes
    # long enough that Stop lands mid-answer.
    playground.set_run(folder_run)
    playground.prompt.setPlainText("Tell me a long story")
    playground.temperature.setValue(0.0)
    playground.max_tokens.setValue(1500)
    with qtbot.waitSignal(playground._sides[1][1].sig_token_received, timeout=120_000):
        playground.send()
    with qtbot.waitSignal(playground.sig_generation_finished, timeout=30_000):
        playground.stop()
    statuses = {playground.base.status.text(), playground.tuned.status.text()}
    assert statuses <= {"stopped", "completed"}
    assert "stopped" in statuses


def test_broken_run_is_reported_not_hung(playground, tmp_path, qtbot):
    playground.set_run(tmp_path / "no-run-here")
    playground.prompt.setPlainText("hello")
    with qtbot.waitSignal(playground.sig_generation_finished, timeout=60_000):
        playground.send()
    assert playground.tuned.status.text().startswith("failed: ")
    assert "no such run folder" in playground.tuned.status.text()


def test_widget_module_never_imports_torch():
    code = ("import sys; import app.widgets.playground; "
            "assert 'torch' not in sys.modules and 'llama_cpp' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
