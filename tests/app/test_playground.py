"""The Playground tab, driven by pytest-qt with real engine processes on the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from lora_runs import make_random_adapter, make_run
from PySide6.QtCore import QProcess, Qt

from app.process import EngineProcess
from app.widgets.playground import PlaygroundWidget
from engine.export import gguf as gguf_export
from engine.export import gguf_writer

LABELS = [" terrible", " great"]


@pytest.fixture(scope="module")
def gguf_run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    base_gguf = root / "tiny.gguf"
    gguf_writer.write_model(tiny_model, base_gguf, "f32")
    adapter = make_random_adapter(tiny_model, root / "adapter", b_std=0.3)
    run = make_run(root / "run", base_gguf, adapter, label_words=LABELS)
    # Exported up front, as `python -m engine export` would; the chat processes then only load.
    gguf_export.export(run, None, verify=False)
    return run


@pytest.fixture(scope="module")
def folder_run(tiny_model, gguf_run):
    """The same adapter on the Hugging Face folder: transformers generates, slowly enough to stop."""
    return make_run(gguf_run.parent / "folder-run", tiny_model, gguf_run / "adapter")


def _running(widget) -> list[QProcess]:
    return [p for p in widget.findChildren(QProcess) if p.state() != QProcess.ProcessState.NotRunning]


@pytest.fixture
def playground(qtbot):
    widget = PlaygroundWidget()  # not qtbot's: it would close the widget before its sessions end
    yield widget
    generating = widget.is_generating()
    widget.stop()  # the chat sessions outlive their answers: end them as the window does
    qtbot.waitUntil(lambda: not _running(widget), timeout=15_000)
    widget.deleteLater()
    assert not generating, "an engine process was left running"


def test_base_and_fine_tuned_answers_stream_side_by_side(playground, gguf_run, qtbot):
    playground.set_run(gguf_run)
    playground.prompt.setPlainText("The food was")
    playground.temperature.setValue(0.0)
    playground.max_tokens.setValue(24)
    tokens = []
    playground._sides[1].process.sig_token_received.connect(tokens.append)
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
    with qtbot.waitSignal(playground._sides[1].process.sig_token_received, timeout=120_000):
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


def _send(playground, qtbot, question: str) -> list[dict]:
    """Send `question`; each side's `answer` event once both have answered."""
    answers: list[dict] = [{}, {}]
    keep = [lambda answer, index=index: answers.__setitem__(index, answer) for index in (0, 1)]
    for side, slot in zip(playground._sides, keep, strict=True):
        side.process.sig_answer_finished.connect(slot)
    playground.prompt.setPlainText(question)
    with qtbot.waitSignal(playground.sig_generation_finished, timeout=120_000):
        qtbot.mouseClick(playground.send_button, Qt.MouseButton.LeftButton)
    for side, slot in zip(playground._sides, keep, strict=True):
        side.process.sig_answer_finished.disconnect(slot)
    return answers


def test_a_conversation_keeps_its_chat_sessions(playground, gguf_run, qtbot, monkeypatch):
    starts = []
    start = EngineProcess.start
    monkeypatch.setattr(EngineProcess, "start",
                        lambda self, command: (starts.append(command), start(self, command)))
    playground.set_run(gguf_run)
    assert playground.template.currentData() == "raw"  # a classification run: its raw prompts
    playground.temperature.setValue(0.0)
    playground.max_tokens.setValue(8)
    first = _send(playground, qtbot, "The food was")
    assert [a["status"] for a in first] == ["completed", "completed"]
    assert [(a["template"], a["messages"]) for a in first] == [("raw", 1), ("raw", 1)]
    pids = sorted(p.processId() for p in _running(playground))
    assert len(starts) == len(pids) == 2  # base and fine-tuned, loaded once
    assert [len(side.history) for side in playground._sides] == [2, 2]
    assert playground._sides[1].history[0] == {"role": "user", "content": "The food was"}

    playground.system_prompt.setText("Answer in one word.")
    playground.template.setCurrentIndex(playground.template.findData("chat"))
    second = _send(playground, qtbot, "And the service?")
    # The system prompt, the template and the whole conversation reached the engine.
    assert [(a["template"], a["messages"]) for a in second] == [("chat", 4), ("chat", 4)]
    assert len(starts) == 2 and sorted(p.processId() for p in _running(playground)) == pids
    assert [len(side.history) for side in playground._sides] == [4, 4]
    assert "You: And the service?" in playground.tuned.answer.toPlainText()

    qtbot.mouseClick(playground.new_chat_button, Qt.MouseButton.LeftButton)
    assert [side.history for side in playground._sides] == [[], []]
    assert playground.base.answer.toPlainText() == playground.tuned.answer.toPlainText() == ""
    third = _send(playground, qtbot, "Hello")
    assert [a["messages"] for a in third] == [2, 2]  # the system prompt and the new question
    assert len(starts) == 2


def test_the_run_list_offers_runs_with_an_adapter_newest_first(qtbot, tmp_path):
    root = tmp_path / "runs"
    runs = {}
    for age, (name, config, adapter) in enumerate([
            ("sft", "task: sft\n", True), ("unfinished", "task: sft\n", False),
            ("classify", "task: classification\nlabel_words: [' no', ' yes']\n", True)]):
        folder = runs[name] = root / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(f"model: m\ndataset: d\n{config}")
        if adapter:
            (folder / "adapter").mkdir()
            (folder / "adapter" / "adapter_config.json").write_text("{}")
        os.utime(folder / "config.yaml", (1000 + age, 1000 + age))
    widget = PlaygroundWidget(runs_root=root)
    qtbot.addWidget(widget)
    listed = [widget.runs.itemText(i) for i in range(widget.runs.count())]
    assert listed == [str(runs["classify"]), str(runs["sft"])]
    widget.runs.setCurrentIndex(0)
    assert widget.run_dir.text() == str(runs["classify"]) and widget.template.currentData() == "raw"
    widget.runs.setCurrentIndex(1)
    assert widget.run_dir.text() == str(runs["sft"]) and widget.template.currentData() == "chat"


def test_widget_module_never_imports_torch():
    code = ("import sys; import app.widgets.playground; "
            "assert 'torch' not in sys.modules and 'llama_cpp' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
