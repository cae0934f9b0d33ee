"""`python -m engine chat`: llama.cpp and transformers backends, the JSON event stream, the
chat session (one process, many requests)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO, engine_process
from lora_runs import make_random_adapter, make_run

from engine.api.protocol import QUIT_COMMAND, STOP_COMMAND, Event, decode
from engine.chat import resolve
from engine.cli import run_tool
from engine.data.dataset import load_dataset
from engine.export import gguf as gguf_export
from engine.export import gguf_writer
from engine.runtime.backend import Settings
from engine.runtime.hf import TransformersBackend
from engine.runtime.llamacpp import LlamaCppBackend

LABELS = [" terrible", " great"]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """The same adapter on a GGUF base and on the Hugging Face folder it was written from."""
    root = tmp_path_factory.mktemp("chat")
    base_gguf = root / "tiny.gguf"
    gguf_writer.write_model(tiny_model, base_gguf, "f32")
    adapter = make_random_adapter(tiny_model, root / "adapter", b_std=0.3)
    options = dict(label_words=LABELS, prompt_template="{text} It was")
    return (make_run(root / "gguf-run", base_gguf, adapter, **options),
            make_run(root / "folder-run", tiny_model, adapter, **options))


def _chat(*args: str, stdin: str = "") -> tuple[list, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "engine", "chat", *args], input=stdin,
                          capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    if "--protocol" not in args:
        return [], proc
    return [decode(line) for line in proc.stdout.splitlines() if line.strip()], proc


def test_json_stream_on_a_gguf_run(runs):
    events, proc = _chat("--adapter", str(runs[0]), "--prompt", "The food was",
                         "--max-tokens", "16", "--temperature", "0", "--protocol")
    assert proc.returncode == 0, proc.stderr[-2000:]
    types = [e.type for e in events]
    assert types[0] == "hello" and types[-1] == "done"
    assert [e.seq for e in events] == list(range(len(events)))
    assert "token" in types and "error" not in types
    assert events[-1].data["status"] == "completed"
    probs = next(e for e in events if e.type == "label_probs").data
    assert probs["words"] == LABELS
    assert sum(probs["probabilities"]) == pytest.approx(1.0)
    # The GGUF adapter was exported on first use, beside the run.
    assert (runs[0] / "export" / "adapter.gguf").is_file()


def test_backends_agree_on_label_probabilities(runs):
    """llama.cpp (GGUF base + GGUF adapter) and torch (folder + PEFT) score the same."""
    gguf_target, folder_target = resolve(None, runs[0]), resolve(None, runs[1])
    prompt = "The service was slow and the soup cold. It was"
    adapter_gguf = runs[0] / "export" / "adapter.gguf"
    if not adapter_gguf.is_file():
        gguf_export.export(runs[0], adapter_gguf, verify=False)
    cpp = LlamaCppBackend(Path(gguf_target.model), adapter_gguf, 1.0, seed=0)
    cpp_base = LlamaCppBackend(Path(gguf_target.model), None, 1.0, seed=0)
    torch_backend = TransformersBackend(Path(folder_target.model), folder_target.adapter_dir, 1.0)
    torch_base = TransformersBackend(Path(folder_target.model), folder_target.adapter_dir, 0.0)
    tuned = cpp.label_probs(prompt, LABELS)
    before = cpp_base.label_probs(prompt, LABELS)
    assert tuned == pytest.approx(torch_backend.label_probs(prompt, LABELS), abs=1e-3)
    assert before == pytest.approx(torch_base.label_probs(prompt, LABELS), abs=1e-3)
    assert abs(tuned[0] - before[0]) > 1e-3  # the adapter moves the answer

    # Greedy answers are the same run to run, and the stop flag ends a stream early.
    settings = Settings(temperature=0.0, max_tokens=20)
    messages = [{"role": "user", "content": "Hello"}]
    assert "".join(cpp.stream(messages, settings)) == "".join(cpp.stream(messages, settings))
    stopped = Settings(temperature=0.0, max_tokens=200)
    pieces = []
    for piece in torch_backend.stream(messages, stopped):
        pieces.append(piece)
        stopped.stop.set()
    assert 1 <= len(pieces) <= 3


def test_label_probabilities_score_the_prompt_training_scores(runs, tiny_model, tmp_path):
    """One renderer: `{{x}}` is the literal `{x}` in chat's label prompt, as in training."""
    template = "{{x}} {text} It was"
    run = make_run(tmp_path / "braces", tiny_model, runs[1] / "adapter", label_words=LABELS,
                   prompt_template=template)
    events, proc = _chat("--adapter", str(run), "--prompt", "The food was", "--max-tokens", "1",
                         "--temperature", "0", "--protocol")
    assert proc.returncode == 0, proc.stderr[-2000:]
    chat = next(e for e in events if e.type == "label_probs").data["probabilities"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "The food was", "label": 1}\n')
    trained = load_dataset(rows, prompt_template=template, label_words=LABELS).examples[0].prompt
    assert trained == "{x} The food was It was"
    backend = TransformersBackend(tiny_model, run / "adapter", 1.0)
    assert chat == pytest.approx(backend.label_probs(trained, LABELS), abs=1e-6)
    assert chat != pytest.approx(backend.label_probs("{{x}} The food was It was", LABELS), abs=1e-6)


def test_folder_run_streams_in_the_terminal(runs):
    _, proc = _chat("--adapter", str(runs[1]), "--max-tokens", "8", "--temperature", "0",
                    stdin="Hello\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


@pytest.mark.parametrize("args, message", [
    (["--adapter", "/nonexistent/run", "--prompt", "hi"], "no such run folder"),
    (["default", "--top-p", "1.5", "--prompt", "hi"], "--top-p 1.5"),
    (["--prompt", "hi"], "give a model"),
])
def test_bad_input_is_one_clear_line(args, message, capsys):
    assert run_tool("chat", args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


class Session:
    """A `chat --protocol` session process, its events read as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = engine_process(["chat", *args, "--protocol"])
        self.events: queue.Queue[Event | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.put(decode(line))
        self.events.put(None)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ask(self, messages: list[dict], **fields) -> None:
        self.send(json.dumps({"messages": messages, "temperature": 0, **fields}))

    def until(self, type: str, timeout: float = 180) -> list[Event]:
        """The events up to and with the next `type` (or done)."""
        got = []
        while True:
            event = self.events.get(timeout=timeout)
            assert event is not None, f"the session ended early: {self.proc.stderr.read()[-2000:]}"
            got.append(event)
            if event.type in (type, "done"):
                return got

    def end(self, command: str | None = None) -> tuple[list[Event], str]:
        """EOF (or `command`) on stdin: the events left, and stderr."""
        if command is not None:
            self.send(command)
        self.proc.stdin.close()
        rest = self.until("done")
        self.proc.wait(timeout=60)
        return rest, self.proc.stderr.read()


def _text(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.type == "token")


def test_a_session_answers_every_request_in_one_process(runs):
    session = Session("--adapter", str(runs[0]))
    question = {"role": "user", "content": "The food was"}
    # Sampled with the request's seed: the same request gets the same answer, and only what
    # the request carries can change it.
    sampled = dict(max_tokens=8, temperature=1.0, seed=3)
    session.ask([question], **sampled)
    first = session.until("answer")
    answer = first[-1].data
    assert first[0].type == "hello" and answer["status"] == "completed", answer
    assert (answer["template"], answer["messages"]) == ("chat", 1)
    session.ask([question], **sampled)
    again = session.until("answer")
    assert "hello" not in [e.type for e in again]  # the same process: loaded once
    assert _text(again) == _text(first)  # nothing of the first answer stayed behind
    history = [question, {"role": "assistant", "content": _text(first)}]
    session.ask([*history, question], **sampled)
    followed = session.until("answer")
    assert followed[-1].data["messages"] == 3
    assert _text(followed) != _text(first)  # the history reached the model
    session.ask([question], **sampled, system="Answer in one word.", template="raw")
    raw = session.until("answer")
    assert (raw[-1].data["template"], raw[-1].data["messages"]) == ("raw", 2)
    answers = [first, again, followed, raw]
    for events in answers:
        assert "label_probs" in [e.type for e in events]
        assert [e for e in events if e.type == "token"]
    rest, err = session.end()  # EOF
    assert [e.type for e in rest] == ["done"] and session.proc.returncode == 0
    assert rest[-1].data["status"] == "completed"
    assert rest[-1].data["tokens"] == sum(e.type == "token" for events in answers for e in events)
    assert first[0].data["pid"] == session.proc.pid
    assert "FutureWarning" not in err  # library deprecation notices stay off a protocol run


def test_stop_ends_the_answer_not_the_session(runs):
    # The stop follows its request at once: it is bound to that request (the latest read), so
    # the answer is stopped however fast the tiny model would reach its end of turn on its own
    # (waiting for a first token first let a loaded machine's answer finish before the stop).
    session = Session("--adapter", str(runs[1]))
    session.ask([{"role": "user", "content": "Tell me a long story"}], max_tokens=1500)
    session.send(STOP_COMMAND)
    stopped = session.until("answer")[-1].data
    assert stopped["status"] == "stopped" and stopped["tokens"] < 1500
    session.ask([{"role": "user", "content": "Hi"}], max_tokens=3)
    assert session.until("answer")[-1].data["status"] == "completed"
    session.send("not json")  # a refused request fails its answer only
    refused = session.until("answer")[-1].data
    assert refused["status"] == "failed" and "not JSON" in refused["message"]
    rest, _ = session.end(QUIT_COMMAND)
    assert rest[-1].type == "done" and rest[-1].data["status"] == "completed"
    assert session.proc.returncode == 0
