"""A corpus of bad inputs, each through the CLI: a clear message, no traceback, nothing lost.

Every case builds its files in its own folder and runs `python -m engine train …` (in-process
through `engine.cli.main`, so the corpus runs in seconds; a sample also runs as real
subprocesses in both terminal and protocol mode). Each must:
- exit with the user-error code (2), never the internal-error code;
- print a message naming the file/line/field (the case's expected fragments) and what to do;
- show no traceback (the full one goes to the run folder's engine.log where one exists);
- leave every file that existed before untouched (contents and presence).
Dataset cases also go through `python -m engine inspect-dataset`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
from bad_inputs import CASES, DATASET_CASES, GOOD_ROWS, Ctx, config_json, encoder, snapshot
from conftest import REPO

from engine.api.protocol import PROTOCOL_VERSION, ProtocolError, decode
from engine.cli import main
from engine.session import EXIT_USER


@pytest.fixture
def isolated_cli(monkeypatch, tmp_path):
    """Undo what an in-process `main` installs (log handlers, signal handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EDGETUNE_CACHE_DIR", str(tmp_path / "cache"))
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    signal.signal(signal.SIGINT, sigint)
    signal.signal(signal.SIGTERM, sigterm)


def _check_message(message: str, expect: tuple[str, ...]) -> None:
    assert "Traceback" not in message, message
    for fragment in expect:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in:\n{message}"
    assert len(message) < 4000, "the message quotes too much of the input"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_through_the_cli(case, ctx, isolated_cli, capfd):
    argv = case.build(ctx)
    before = snapshot(ctx.dir, ctx.model, ctx.data)
    code = main(argv)
    out, err = capfd.readouterr()
    assert code == EXIT_USER, f"exit code {code}:\n{err[-3000:]}"
    _check_message(out + err, case.expect)
    after = snapshot(ctx.dir, ctx.model, ctx.data)
    changed = [path for path, digest in before.items() if after.get(path) != digest]
    assert not changed, f"files changed or deleted: {changed}"
    log = ctx.dir / "run" / "engine.log"
    if log.is_file():  # a run folder exists: the full traceback is kept for a bug report
        text = log.read_text()
        assert "Traceback" in text and "UserError" in text


@pytest.mark.parametrize("case", DATASET_CASES, ids=[c.id for c in DATASET_CASES])
def test_bad_dataset_through_inspect_dataset(case, ctx, isolated_cli, capfd):
    path = case.build.make_dataset(ctx)
    before = snapshot(ctx.dir)
    code = main(["inspect-dataset", str(path), *case.inspect_args])
    out, err = capfd.readouterr()
    assert code != 0
    # The message names the file (inspect-dataset reports it by name).
    _check_message(out + err, tuple(f for f in case.expect if f != "skip_bad_rows"))
    assert main(["inspect-dataset", str(path), "--json", *case.inspect_args]) != 0
    report = json.loads(capfd.readouterr().out)
    assert report["errors"] and case.expect[0].lower() in report["errors"][0]["message"].lower()
    assert snapshot(ctx.dir) == before


def test_corpus_is_large_enough():
    assert len(CASES) >= 40 and len(DATASET_CASES) >= 12


# A sample of the corpus as real processes: what a user at a terminal or the app would see.
SUBPROCESS_SAMPLE = ["one_bad_jsonl_line", "gguf_of_an_unsupported_architecture", "q_zero",
                     "max_seq_len_beyond_the_context", "resume_a_checkpoint_from_a_newer_version",
                     "template_with_another_field", "model_is_an_encoder"]


def test_a_sample_as_real_processes_shows_no_traceback(ctx, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    runs = []
    for name in SUBPROCESS_SAMPLE:
        bad = next(c for c in CASES if c.id == name)
        sub = Ctx(tmp_path / name, ctx.model, ctx.data)
        sub.dir.mkdir()
        argv = bad.build(sub)
        # Terminal mode for half the sample, protocol mode (what the app reads) for the rest.
        if len(runs) % 2:
            argv = [*argv, "--protocol"]
        proc = subprocess.Popen([sys.executable, "-m", "engine", *argv], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append((bad, argv, proc))
    for bad, argv, proc in runs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == EXIT_USER, err[-3000:]
        assert "Traceback" not in out + err
        if "--protocol" in argv:
            events = [decode(line) for line in out.splitlines()]
            assert [e.type for e in events][-2:] == ["error", "done"]
            assert events[-2].data["kind"] == "user"
            _check_message(events[-2].data["message"], bad.expect)
        else:
            _check_message(err, bad.expect)


# Every subcommand ends through the one error boundary (engine.session.failed): real processes,
# each with one bad input. (id, argv, fragments the message must hold.)
TOOL_CASES: list[tuple[str, Callable[[Ctx], list[str]], tuple[str, ...]]] = [
    ("inspect_label_words_not_json",
     lambda ctx: ["inspect-dataset", str(ctx.data), "--label-words", "nope"],
     ("--label-words 'nope'", "not a JSON list", "e.g.")),
    ("inspect_template_with_another_field",
     lambda ctx: ["inspect-dataset", str(ctx.data), "--prompt-template", "{text} {label}"],
     ('"prompt_template"', "{label}", "{{")),
    ("probe_config_not_json",
     lambda ctx: ["probe", str(config_json(ctx, lambda _: "{ this is not json"))],
     ("config.json", "not valid JSON", "restore")),
    ("probe_an_encoder", lambda ctx: ["probe", str(config_json(ctx, encoder))],
     ("BertForMaskedLM", "not a decoder-only", "causal language model")),
    ("train_template_with_another_field",
     lambda ctx: ctx.train(prompt_template="'{text} {label}'"), ('"prompt_template"', "{label}")),
    ("export_a_folder_that_is_no_run",
     lambda ctx: ["export", str(ctx.dir / "nowhere"), "--format", "gguf"],
     ("nowhere", "no such run folder", "output_dir")),
    ("push_a_folder_that_is_no_export", lambda ctx: ["push", str(ctx.dir)],
     ("not an export to push", "--format executorch")),
    ("chat_a_missing_model", lambda ctx: ["chat", str(ctx.dir / "absent.gguf"), "--prompt", "hi"],
     ("absent.gguf", "not found")),
    ("chat_protocol_a_missing_model",
     lambda ctx: ["chat", str(ctx.dir / "absent.gguf"), "--prompt", "hi", "--protocol"],
     ("absent.gguf", "not found")),
    ("bench_an_encoder",
     lambda ctx: ["bench", "step", "--model", str(config_json(ctx, encoder)), "--qs", "1",
                  "--reps", "1", "--warmup", "0", "--results", str(ctx.dir / "results"),
                  "--plots", str(ctx.dir / "plots")],
     ("BertForMaskedLM", "not a decoder-only")),
]


def test_every_subcommand_ends_bad_input_with_a_message_and_exit_2(ctx, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    runs = []
    for name, build, expect in TOOL_CASES:
        sub = Ctx(tmp_path / name, ctx.model, ctx.data)
        sub.dir.mkdir()
        argv = build(sub)
        proc = subprocess.Popen([sys.executable, "-m", "engine", *argv], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        runs.append((name, argv, expect, proc))
    failures = []
    for name, argv, expect, proc in runs:
        out, err = proc.communicate(timeout=240)
        message = err
        if "--protocol" in argv:  # the app's stream: the message is the error event's
            events = [decode(line) for line in out.splitlines() if line.strip()]
            assert [e.type for e in events][-2:] == ["error", "done"], (name, out)
            assert events[-2].data["kind"] == "user" and events[-1].data["exit_code"] == 2
            message = events[-2].data["message"]
        try:
            assert proc.returncode == EXIT_USER, f"exit code {proc.returncode}"
            assert "internal error" not in (out + err).lower()
            _check_message(message, expect)
            assert "Traceback" not in out + err
        except AssertionError as exc:
            failures.append(f"{name} ({' '.join(argv)}): {exc}\n{err[-1500:]}")
    assert not failures, "\n\n".join(failures)


def test_an_event_from_a_newer_protocol_is_refused_with_a_clear_message():
    line = json.dumps({"v": PROTOCOL_VERSION + 1, "seq": 0, "type": "hello", "data": {}})
    with pytest.raises(ProtocolError, match="newer than this client's.*update EdgeTune"):
        decode(line)


def test_spaces_unicode_and_symlinks_in_paths_just_work(tiny_model, tmp_path, isolated_cli, capfd):
    """The good counterpart of the path cases: such paths train, and nothing is renamed."""
    folder = tmp_path / "my runs ü" / "ünïcode – data"
    folder.mkdir(parents=True)
    data = folder / "good rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in GOOD_ROWS))
    (tmp_path / "data link.jsonl").symlink_to(data)
    (tmp_path / "model link").symlink_to(tiny_model, target_is_directory=True)
    ctx = Ctx(folder, tmp_path / "model link", tmp_path / "data link.jsonl")
    code = main(ctx.train(output_dir=folder / "run – 1"))
    assert code == 0, capfd.readouterr().err[-3000:]
    assert (folder / "run – 1" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "data link.jsonl").is_symlink() and data.is_file()
