"""Faults a laptop run meets: kill -9, torn checkpoints, a full or read-only disk (checkpoint
and export), the memory guard, stop at awkward moments, a diverging loss, and the safe defaults
(no pickle, no shell, no remote code unless asked). Real processes, real files. The same faults
seen through the window are in tests/test_app_reliability.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fault_trials
import pytest
import torch
from conftest import REPO, engine_process, train

from engine.api.errors import UserError
from engine.api.history import read_history
from engine.api.protocol import decode
from engine.train import checkpoint
from engine.train.trainer import NonFiniteLoss


def _losses(output_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_history(output_dir / "metrics.jsonl")
            if r["type"] == "metrics"]


# ---- kill -9 --------------------------------------------------------------------------------

def test_kill_9_at_random_points_then_resume_is_bit_identical(tiny_model, classification_data,
                                                              tmp_path):
    """Two seeded trials of tests/fault_trials.py (the script runs ten; docs/reliability.md)."""
    ref = fault_trials.reference_run(tiny_model, classification_data, tmp_path / "reference")
    assert [t[1] for t in ref.trajectory if t[0] == "metrics"] == list(range(1, 13))
    for seed in (0, 1):
        result = fault_trials.trial(seed, tiny_model, classification_data, tmp_path / f"t{seed}",
                                    ref, resume_in_process=True)
        assert result.resumed_from_step > 0, result
        assert result.identical, result


def test_kill_before_the_first_checkpoint_says_so(tiny_config, tmp_path):
    cfg = tiny_config("steps=50", "checkpoint_every=40", "eval_every=0")
    proc = engine_process(["train", *fault_trials_overrides(cfg), "--protocol"])
    for line in proc.stdout:
        if decode(line).type == "metrics":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    with pytest.raises(UserError, match="has no checkpoint yet.*without --resume"):
        train(cfg, resume=True)
    assert (Path(cfg.output_dir) / "config.yaml").is_file()  # nothing was deleted


def fault_trials_overrides(cfg) -> list[str]:
    from engine.api import config as config_io

    flat = []
    for key, value in config_io.to_dict(cfg).items():
        if isinstance(value, dict):
            flat += [f"{key}.{k}={json.dumps(v)}" for k, v in value.items()]
        else:
            flat.append(f"{key}={json.dumps(value)}")
    return flat


# ---- torn and corrupt checkpoints -----------------------------------------------------------

def _truncate(path: Path) -> None:
    data = (path / "state.safetensors").read_bytes()
    (path / "state.safetensors").write_bytes(data[: len(data) // 2])


def _flip_bytes(path: Path) -> None:
    file = path / "state.safetensors"
    data = bytearray(file.read_bytes())
    data[-100:-90] = bytes(b ^ 0xFF for b in data[-100:-90])
    file.write_bytes(bytes(data))


DAMAGE = {
    "truncated": (_truncate, "does not match its checksum"),
    "bad bytes": (_flip_bytes, "does not match its checksum"),
    "state file missing": (lambda p: (p / "state.safetensors").unlink(), "state.safetensors missing"),
    "manifest missing": (lambda p: (p / "manifest.json").unlink(), "manifest.json missing"),
    "manifest garbage": (lambda p: (p / "manifest.json").write_text("{\x00"), "manifest.json unreadable"),
}


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, tiny_model, classification_data):
    """A run with checkpoints at steps 2, 4 and 6, and the losses of the same run to step 8."""
    from engine.api import config as config_io

    root = tmp_path_factory.mktemp("torn")

    def config(output_dir, *extra):
        return config_io.load(None, [
            f"model={tiny_model}", f"dataset={classification_data}", "task=classification",
            "label_words=[' terrible', ' great']", f"output_dir={output_dir}", "batch_size=2",
            "max_seq_len=48", "eval_every=0", "eval_rows=16", "checkpoint_every=2",
            "keep_checkpoints=3", "threads=1", "optimizer.q=2", "optimizer.lr=0.05",
            "lora.rank=4", *extra])

    train(config(root / "run", "steps=6"))
    train(config(root / "straight", "steps=8"))
    return root, config, _losses(root / "straight")


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(
        three_checkpoints, tmp_path, damage):
    root, config, expected = three_checkpoints
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    spoil, problem = DAMAGE[damage]
    spoil(run / "checkpoints" / "step-00000006")
    result, recorder, _ = train(config(run, "steps=8"), resume=True)
    warnings = recorder.warnings()
    assert any("step-00000006" in w and problem in w for w in warnings), warnings
    resumed = [d["message"] for d in recorder.of("log") if d["message"].startswith("resumed")]
    assert resumed and resumed[0].endswith("step-00000004 at step 4")
    assert result.status == "completed" and result.step == 8
    assert _losses(run) == expected  # steps 5-8 replayed exactly, 1-4 kept from before


def test_every_checkpoint_damaged_is_a_clear_error_not_a_silent_restart(three_checkpoints,
                                                                        tmp_path):
    root, config, _ = three_checkpoints
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    for path, (spoil, _) in zip(sorted((run / "checkpoints").glob("step-*")),
                                list(DAMAGE.values()), strict=False):
        spoil(path)
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(UserError, match="every checkpoint .* is damaged.*step-00000002: "):
        train(config(run, "steps=8"), resume=True)
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing deleted or started anew
    assert [s for s, _ in _losses(run)] == list(range(1, 7))


# ---- disk full, read-only folder ------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class AfterFirstCheckpoint:
    """Runs `action` once, right after the first checkpoint is written."""

    def __init__(self, action):
        self.action, self.fired = action, False

    def emit(self, type, data):
        if type == "checkpoint" and not self.fired:
            self.fired = True
            self.action(Path(data["path"]))


def _fill(filler: Path, leave_bytes: int) -> None:
    """Fill the filesystem holding `filler`, then free `leave_bytes` of it again."""
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
    with filler.open("r+b") as handle:
        handle.truncate(filler.stat().st_size - leave_bytes)


def _fill_disk(checkpoint_path: Path) -> None:
    # Hand back less room than one checkpoint needs but enough for the metrics lines still to
    # come: the next checkpoint write is the one that meets a full disk.
    size = (checkpoint_path / "state.safetensors").stat().st_size
    assert size // 2 >= 32 * 1024
    _fill(checkpoint_path.parent.parent / "filler.bin", size // 2)


def _read_only(checkpoint_path: Path) -> None:
    folder = checkpoint_path.parent
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)


@pytest.mark.parametrize("fault", ["disk full", "read-only checkpoints folder"])
def test_disk_full_or_read_only_while_checkpointing(small_disk, tiny_config, fault):
    out = small_disk / "run"
    cfg = tiny_config(f"output_dir={out}", "steps=6", "checkpoint_every=2", "eval_every=0",
                      "lora.rank=16")
    sink = AfterFirstCheckpoint(_fill_disk if fault == "disk full" else _read_only)
    try:
        with pytest.raises(UserError) as raised:
            train(cfg, sinks=[sink])
    finally:
        if fault != "disk full":
            subprocess.run(["umount", str(out / "checkpoints")], check=False)
    message = str(raised.value)
    assert "cannot write checkpoint" in message and "step-00000004" in message
    assert "free disk space or pick a writable output_dir" in message
    assert "previous checkpoint is intact" in message
    first = out / "checkpoints" / "step-00000002"
    assert checkpoint.verify(first) is None
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert checkpoint.load_latest(out / "checkpoints").step == 2


# ---- disk full, read-only folder, stop: while exporting ----------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model):
    from lora_runs import make_random_adapter, make_run

    root = tmp_path_factory.mktemp("export")
    return make_run(root / "run", tiny_model, make_random_adapter(tiny_model, root / "adapter"))


def _export(run: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "engine", "export", str(run), "--format", "gguf",
                             "--out", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


@pytest.mark.parametrize("fault", ["disk full", "read-only out folder"])
def test_disk_full_or_read_only_while_exporting(small_disk, finished_run, fault):
    out = small_disk / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    if fault == "disk full":
        # Leave 64 KiB: the base model's GGUF (about 220 KiB for the tiny model) meets a full disk.
        _fill(small_disk / "filler.bin", 65536)
    else:
        subprocess.run(["mount", "--bind", str(out), str(out)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=True)
    try:
        proc = _export(finished_run, out / "adapter.gguf")
        _, err = proc.communicate(timeout=300)
    finally:
        if fault != "disk full":
            subprocess.run(["umount", str(out)], check=False)
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    reason = "the disk is full (0.1 MiB free)" if fault == "disk full" else "Read-only file system"
    assert f"error: cannot write {out / 'base-f16.gguf'}: {reason}; " in err
    assert "pick a writable folder with --out" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing half-written
    assert (out / "notes.txt").read_text() == "mine\n"


def test_stop_during_an_export_ends_cleanly(finished_run, tmp_path):
    """SIGTERM (what the app's Stop sends) as soon as the export's first file is being written."""
    import gguf

    out = tmp_path / "export"
    proc = _export(finished_run, out / "adapter.gguf")
    deadline = time.monotonic() + 180
    while not (out.is_dir() and any(out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.001)
    seen = sorted(p.name for p in out.iterdir())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "export stopped" in err and "Traceback" not in err
    left = sorted(p.name for p in out.iterdir())
    assert not [name for name in left if name.endswith(".partial")], (seen, left)
    assert "adapter.Modelfile" not in left  # the export does not look finished
    for name in left:  # what is left is whole: a finished base model at most
        assert name == "base-f16.gguf", (seen, left)
        assert len(gguf.GGUFReader(out / name).tensors) > 0
    # Exporting again finishes (reusing a base written before the stop).
    again = _export(finished_run, out / "adapter.gguf", "--no-verify")
    printed, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert printed.strip() == str(out / "adapter.gguf") and (out / "adapter.Modelfile").is_file()


def test_the_apps_stop_during_an_export_ends_cleanly(finished_run, tmp_path):
    """`stop` on stdin of `export --protocol` (the Export tab's Stop) as soon as the first file
    is being written: interrupted as by SIGTERM, and the stream still ends with done."""
    out = tmp_path / "export"
    proc = engine_process(["export", str(finished_run), "--format", "gguf", "--out",
                           str(out / "adapter.gguf"), "--protocol"])
    deadline = time.monotonic() + 180
    while not (out.is_dir() and any(out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.001)
    printed, err = proc.communicate("stop\n", timeout=120)
    events = [decode(line) for line in printed.splitlines()]
    assert proc.returncode == 130, err[-3000:]
    assert events[-1].data == {"status": "stopped", "exit_code": 130} and "Traceback" not in err
    assert any(e.type == "log" and "export stopped" in e.data["message"] for e in events)
    assert not [e for e in events if e.type == "artifact"]
    left = sorted(p.name for p in out.iterdir())
    assert not [name for name in left if name.endswith(".partial")] and "adapter.Modelfile" not in left


# ---- memory budget --------------------------------------------------------------------------

def test_memory_guard_checkpoints_and_names_the_settings_to_lower(tiny_config, tmp_path):
    """RSS crosses the budget after the pre-flight estimate passed: the estimate leaves out the
    dataset, and 110 MB of rows held in memory push the process past 0.55 GiB."""
    big = tmp_path / "big.jsonl"
    rows = [json.dumps({"text": f"row {i} " + "it was fine " * 400, "label": i % 2})
            for i in range(25_000)]
    big.write_text("\n".join(rows) + "\n")
    cfg = tiny_config(f"dataset={big}", "steps=3", "eval_rows=8", "eval_every=0",
                      "checkpoint_every=0", "memory_budget_gb=0.55")
    proc = engine_process(["train", *fault_trials_overrides(cfg), "--protocol"])
    out, err = proc.communicate(timeout=300)
    events = [decode(line) for line in out.splitlines()]
    assert proc.returncode == 2, err[-2000:]
    error = next(e.data for e in events if e.type == "error")
    assert error["kind"] == "user"
    assert "crossed memory_budget_gb" in error["message"] and "checkpoint was written" in error["message"]
    for setting in ("batch_size", "optimizer.q", "max_seq_len"):
        assert setting in error["message"]
    assert "estimated peak memory" in " ".join(e.data.get("message", "") for e in events)
    saved = [e.data for e in events if e.type == "checkpoint"]
    assert saved and saved[0]["step"] == 1
    assert checkpoint.verify(Path(saved[0]["path"])) is None
    assert events[-1].type == "done" and events[-1].data["status"] == "failed"
    assert "Traceback" not in out + err
    result, *_ = train(tiny_config(f"dataset={big}", "steps=3", "eval_rows=8", "eval_every=0",
                                   "checkpoint_every=0", "memory_budget_gb=0"), resume=True)
    assert result.status == "completed"


# ---- stop at awkward moments ----------------------------------------------------------------

@pytest.mark.parametrize("state", ["evaluating", "checkpointing"])
def test_stop_during_an_eval_or_a_checkpoint_write_ends_cleanly(tiny_config, tmp_path, state):
    cfg = tiny_config("steps=200", "eval_every=4", "checkpoint_every=4", "eval_rows=64",
                      f"output_dir={tmp_path / 'run'}")
    proc = engine_process(["train", *fault_trials_overrides(cfg), "--protocol"])
    events, sent_at = [], None
    for line in proc.stdout:
        event = decode(line)
        events.append(event)
        if (sent_at is None and event.type == "status" and event.data["state"] == state
                and "step 0" not in event.data["message"]):
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            sent_at = event.data["message"]
    proc.wait(timeout=120)
    assert sent_at, f"no {state} status seen"
    assert proc.returncode == 0 and events[-1].type == "done"
    assert events[-1].data["status"] == "stopped"
    stopped_at = max(e.data["step"] for e in events if e.type == "metrics")
    assert stopped_at <= int(re.search(r"step (\d+)", sent_at).group(1)) + 1
    last = [e.data for e in events if e.type == "checkpoint"][-1]
    assert last["step"] == stopped_at and checkpoint.verify(Path(last["path"])) is None
    assert not list((tmp_path / "run" / "checkpoints").glob(".*partial"))
    # Resumable, and the resumed steps are those of an uninterrupted run.
    more = stopped_at + 2
    result, *_ = train(tiny_config("steps=200", "eval_every=4", "checkpoint_every=4",
                                   "eval_rows=64", f"output_dir={tmp_path / 'run'}",
                                   f"steps={more}"), resume=True)
    assert result.status == "completed"
    train(tiny_config("eval_every=4", "checkpoint_every=4", "eval_rows=64",
                       f"output_dir={tmp_path / 'straight'}", f"steps={more}"))
    assert _losses(tmp_path / "run") == _losses(tmp_path / "straight")


# ---- a loss that turns non-finite -----------------------------------------------------------

def test_non_finite_loss_is_reported_and_the_last_good_checkpoint_kept(tmp_path,
                                                                       classification_data):
    """One training row holds a token whose embedding is infinite: the step that first meets it
    turns the loss NaN. Earlier steps and their checkpoints stay good, and fixing the row lets
    the run resume from the last one with a lower lr."""
    from conftest import make_tiny_llama
    from safetensors.torch import load_file, save_file

    from engine.api import config as config_io

    model = make_tiny_llama(tmp_path / "model", tie_word_embeddings=False)
    from transformers import AutoTokenizer

    poison = AutoTokenizer.from_pretrained(str(model))("\u03a9", add_special_tokens=False)["input_ids"]
    weights = load_file(str(model / "model.safetensors"))
    weights["model.embed_tokens.weight"][poison] = float("inf")
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})

    rows = [json.loads(line) for line in classification_data.read_text().splitlines()]
    train_rows, held_out = rows[:40], rows[40:60]
    # The seeded epoch order puts this row in the batch of step 4 (rows 6-7 of the order).
    order = list(range(len(train_rows)))
    random.Random("0:epoch:0").shuffle(order)
    bad_row = order[6]
    train_rows[bad_row] = {"text": "\u03a9 " + train_rows[bad_row]["text"],
                           "label": train_rows[bad_row]["label"]}
    data, eval_data = tmp_path / "train.jsonl", tmp_path / "held-out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    eval_data.write_text("".join(json.dumps(r) + "\n" for r in held_out))

    def config(*extra):
        return config_io.load(None, [
            f"model={model}", f"dataset={data}", f"eval_dataset={eval_data}",
            "task=classification", "label_words=[' terrible', ' great']",
            f"output_dir={tmp_path / 'run'}", "steps=8", "batch_size=2", "max_seq_len=48",
            "eval_every=0", "eval_rows=16", "checkpoint_every=1", "keep_checkpoints=2",
            "threads=1", "optimizer.q=2", "optimizer.lr=0.05", "lora.rank=4", *extra])

    with pytest.raises(NonFiniteLoss, match="non-finite at step 4; lower optimizer.lr") as raised:
        train(config())
    assert "last good checkpoint is kept" in str(raised.value)
    run = tmp_path / "run"
    assert [s for s, _ in _losses(run)] == [1, 2, 3]
    good = checkpoint.load_latest(run / "checkpoints")
    assert good.step == 3 and all(torch.isfinite(t).all() for t in good.state.values())

    train_rows[bad_row]["text"] = train_rows[bad_row]["text"].removeprefix("\u03a9 ")
    data.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    result, recorder, _ = train(config("optimizer.lr=0.02"), resume=True)
    assert result.status == "completed"
    assert [s for s, _ in _losses(run)] == list(range(1, 9))
    assert any(m["message"].endswith("at step 3") for m in recorder.of("log"))


# ---- safe defaults --------------------------------------------------------------------------

def _sources(*folders: str) -> dict[Path, str]:
    return {path: path.read_text(encoding="utf-8") for folder in folders
            for path in (REPO / folder).rglob("*.py")}


def test_weights_never_come_from_pickle():
    for path, text in _sources("engine", "app").items():
        assert not re.search(r"^\s*(import|from) (dill|cloudpickle)\b", text, re.M), path
        assert not re.search(r"\b(pickle\.loads?|Unpickler)\(", text), path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"


class _TouchOnUnpickle:
    """Unpickling this creates a file: the smallest stand-in for code hidden in a .bin."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_and_their_code_never_runs(tiny_model, tmp_path):
    from engine.model.loading import load

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "code-ran"
    torch.save({"model.embed_tokens.weight": _TouchOnUnpickle(marker)}, folder / "pytorch_model.bin")
    torch.load(folder / "pytorch_model.bin", weights_only=False)  # the payload is live ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match=r"pickled Python objects.*safetensors"):
        load(str(folder), torch.device("cpu"), torch.float32)
    assert not marker.exists()  # ... and the engine never ran it


def test_trust_remote_code_when_configured_says_so(tiny_model, caplog):
    from engine.model.loading import load

    with caplog.at_level("WARNING", logger="engine.model.loading"):
        load(str(tiny_model), torch.device("cpu"), torch.float32, trust_remote_code=True)
    assert any("trust_remote_code is on" in r.getMessage() for r in caplog.records)


def test_no_shell_strings_in_subprocess_calls():
    for path, text in _sources("engine", "app", "tests").items():
        if path.name == Path(__file__).name:
            continue
        assert "shell=True" not in text, path
        assert not re.search(r"\bos\.(system|popen)\(", text), path


def test_remote_code_is_off_unless_configured():
    from engine.api.config import TrainConfig

    assert TrainConfig().trust_remote_code is False
    for path, text in _sources("engine").items():
        for match in re.finditer(r"trust_remote_code\s*=\s*(\w+)", text):
            assert match.group(1) in ("trust_remote_code", "False", "bool"), \
                f"{path}: trust_remote_code={match.group(1)}"


def test_no_network_when_hf_hub_offline(tmp_path):
    """A hub id that is not cached fails fast with HF_HUB_OFFLINE=1, without a connection
    attempt (the socket layer refuses any connect in the child)."""
    guard = tmp_path / "sitecustomize.py"
    guard.write_text(textwrap.dedent("""
        import socket
        def refuse(*args, **kwargs):
            raise RuntimeError("network access attempted")
        socket.socket.connect = refuse
        socket.create_connection = refuse
    """))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=f"{tmp_path}:{REPO}",
               HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run([sys.executable, "-m", "engine", "probe", "someone/some-model"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "HF_HUB_OFFLINE" in done.stderr and "network access attempted" not in done.stderr
    assert "Traceback" not in done.stderr
