"""One run over several workers (torch.distributed, gloo over loopback) on the tiny model: real
processes started by torch's own launcher, compared with the one-process run of the same config."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import engine_process, train

from engine.api import config as config_io
from engine.api.history import read_history
from engine.api.protocol import decode
from engine.train import checkpoint, distributed
from engine.train.launch import main as launch_main


def _config_file(cfg, path: Path) -> Path:
    config_io.save(cfg, path)
    return path


def _history(output_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_history(output_dir / "metrics.jsonl") if r["type"] == kind]


@pytest.mark.parametrize("options", [
    ("workers=2",),
    ("workers=3", "optimizer.q=3", "optimizer.estimator=one-sided", "optimizer.directions=rademacher",
     "optimizer.normalize=loss-std", "optimizer.momentum=0.9", "optimizer.schedule=cosine",
     "optimizer.warmup_steps=2"),
    # Fewer directions than workers: the workers of a direction split the batch's rows.
    ("workers=2", "optimizer.q=1", "batch_size=4"),
    # Direction 0 on worker 0's 3 rows, direction 1 on workers 1 and 2 (1 and 2 rows).
    ("workers=3", "optimizer.q=2", "batch_size=3", "optimizer.mode=single"),
    pytest.param(("workers=2", "optimizer.q=1", "batch_size=3", "optimizer.estimator=one-sided",
                  "optimizer.directions=rademacher", "optimizer.momentum=0.9"), marks=pytest.mark.slow),
], ids=["dual", "one-sided-everything", "rows-q1", "rows-uneven-single", "rows-one-sided"])
def test_workers_give_the_one_worker_losses_and_the_same_theta(tiny_config, tmp_path, options):
    alone = tiny_config(*options, "workers=1", f"output_dir={tmp_path / 'alone'}")
    _, expected, _ = train(alone)
    cfg = tiny_config(*options, f"output_dir={tmp_path / 'spread'}")
    proc = engine_process(["train", str(_config_file(cfg, tmp_path / "spread.yaml"))])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    spread = tmp_path / "spread"
    metrics = _history(spread, "metrics")
    torch.testing.assert_close(torch.tensor([m["loss"] for m in metrics]),
                               torch.tensor([m["loss"] for m in expected.of("metrics")]),
                               atol=1e-5, rtol=0)
    evals = _history(spread, "eval")
    torch.testing.assert_close(torch.tensor([e["loss"] for e in evals]),
                               torch.tensor([e["loss"] for e in expected.of("eval")]), atol=1e-5, rtol=0)
    assert [e["accuracy"] for e in evals] == [e["accuracy"] for e in expected.of("eval")]
    # Every worker's θ checksum at every checkpoint equals worker 0's (the engine compares them
    # and would have stopped; the others' logs show it).
    written = [c["theta_checksum"] for c in _history(spread, "checkpoint")]
    assert len(written) == 2 and written[0] != written[1]  # θ moved between them
    workers = cfg.workers
    for rank in range(1, workers):
        log = (spread / f"worker-{rank}.log").read_text()
        assert re.findall(r"θ checksum ([0-9a-f]{64})", log) == written
    logs = sorted(p.name for p in spread.glob("worker-*.log"))
    assert logs == [f"worker-{r}.log" for r in range(1, workers)]
    # Payload each worker sends and receives (ring all-gathers: 2·(W − 1) pieces): the step's ±
    # losses, 2 float64 per direction a worker holds (padded to the largest share; 2 in all for
    # a block of the rows), the previous step's MAX vote on 3 int64 flags, and in steps 1 and 4
    # the evaluation before them (one 16-row batch: 2 float64) and step 4 the θ checksum at
    # step 3 (2 int64).
    q = cfg.optimizer.q
    ring = 2 * (workers - 1)
    losses = ring * 2 * 8 * (1 if q < workers else -(-q // workers))
    vote, evaluation, checksum = 2 * 3 * 8, ring * 2 * 8, ring * 2 * 8
    assert [m["workers"] for m in metrics] == [workers] * 6
    assert [m["exchanged_bytes"] for m in metrics] == [
        losses + evaluation, losses + vote, losses + vote,
        losses + vote + evaluation + checksum, losses + vote, losses + vote]
    assert losses + vote <= 64 * q + 64


def test_a_time_budgeted_cosine_run_keeps_every_worker_on_one_learning_rate(tiny_config, tmp_path):
    """The cosine over a time budget follows training seconds, which each worker measures for
    itself: the workers agree on them every step, so their lr (and θ) stay identical."""
    cfg = tiny_config("workers=2", "steps=100000", "time_budget_minutes=0.01", "eval_every=0",
                      "checkpoint_every=5", "optimizer.schedule=cosine", f"output_dir={tmp_path / 'spread'}")
    proc = engine_process(["train", str(_config_file(cfg, tmp_path / "spread.yaml"))])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    spread = tmp_path / "spread"
    metrics = _history(spread, "metrics")
    assert len(metrics) >= 6
    lrs = [m["lr"] for m in metrics]
    assert lrs[-1] < lrs[0] and all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    written = [c["theta_checksum"] for c in _history(spread, "checkpoint")]
    log = (spread / "worker-1.log").read_text()
    assert written and re.findall(r"θ checksum ([0-9a-f]{64})", log) == written
    # Ended by the budget, long before its step count, with the final checkpoint at its last step.
    assert _history(spread, "checkpoint")[-1]["step"] == len(metrics) < 100000


def test_a_killed_worker_ends_the_job_and_one_worker_resumes_it(tiny_config, tmp_path):
    overrides = ("steps=10", "checkpoint_every=4", "eval_every=4")
    _, expected, _ = train(tiny_config(*overrides, f"output_dir={tmp_path / 'straight'}"))
    out = tmp_path / "killed"
    cfg = tiny_config(*overrides, "workers=2", f"output_dir={out}")
    proc = engine_process(["train", str(_config_file(cfg, tmp_path / "killed.yaml")), "--protocol"])
    events = []
    for line in proc.stdout:
        events.append(decode(line))
        if events[-1].type == "metrics" and events[-1].data["step"] == 6:
            pid = int(re.search(r"pid (\d+)", (out / "worker-1.log").read_text()).group(1))
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            break
    rest, err = proc.communicate(timeout=60)
    ended_after = time.monotonic() - killed_at
    assert ended_after < 20, ended_after
    assert proc.returncode != 0
    assert "worker 1 failed (signal 9)" in err
    events += [decode(line) for line in rest.splitlines()]
    assert events[-1].type == "done" and events[-1].data["status"] == "failed"
    error = next(e for e in events if e.type == "error")
    assert "lost contact with the other workers" in error.data["message"]
    assert checkpoint.verify(out / "checkpoints" / "step-00000004") is None

    train(tiny_config(*overrides, "workers=1", f"output_dir={out}"), resume=True)
    metrics = _history(out, "metrics")
    assert [m["step"] for m in metrics] == list(range(1, 11))
    torch.testing.assert_close(torch.tensor([m["loss"] for m in metrics]),
                               torch.tensor([m["loss"] for m in expected.of("metrics")]), atol=1e-5, rtol=0)


def test_stop_on_worker_0s_stdin_stops_every_worker_at_the_same_step(tiny_config, tmp_path):
    """The app's stop line reaches worker 0 only; the MAX vote makes worker 1 stop with it."""
    out = tmp_path / "run"
    cfg = tiny_config("steps=100000", "eval_every=0", "checkpoint_every=0", "workers=2",
                      f"output_dir={out}")
    proc = engine_process(["train", str(_config_file(cfg, tmp_path / "run.yaml")), "--protocol"])
    for line in proc.stdout:
        if decode(line).type == "metrics" and decode(line).data["step"] == 5:
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    events = [decode(line) for line in rest.splitlines()]
    assert events[-1].type == "done" and events[-1].data["status"] == "stopped"
    written = next(e.data for e in events if e.type == "checkpoint")
    # Worker 1's log holds its events as protocol lines (the protocol escapes θ).
    said = [decode(line).data["message"] for line in (out / "worker-1.log").read_text().splitlines()
            if line.startswith('{"type":"log"')]
    assert f"checkpoint at step {written['step']}: θ checksum {written['theta_checksum']} " \
        "(worker 0 writes it)" in said


def test_a_worker_that_cannot_connect_is_named(tiny_config, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    cfg = tiny_config("workers=2", "worker_timeout_seconds=2", f"output_dir={tmp_path / 'run'}")
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    lonely = engine_process(["train", str(_config_file(cfg, tmp_path / "run.yaml"))], worker_env=env)
    lonely.communicate(timeout=120)
    assert lonely.returncode == 2
    log = (tmp_path / "run" / "worker-1.log").read_text()
    assert f"worker 1 of 2 (on {socket.gethostname()}) could not connect" in log
    assert f"127.0.0.1:{port}" in log


def test_diverged_theta_stops_every_worker_with_a_clear_error(monkeypatch):
    world = distributed.World(rank=0, size=2)
    monkeypatch.setattr(world, "_all_gather", lambda t, what: torch.stack([t, t + 1]))
    with pytest.raises(distributed.WorkersDiverged,
                       match=r"θ differs between workers at step 7: worker\(s\) 1"):
        world.checksum({"theta": torch.ones(3)}, 7)


def test_one_worker_makes_no_exchange():
    world = distributed.World()
    local = torch.tensor([[1.0, 2.0]])
    assert world.gather(local, 2) is local and world.agree(True, False) == (True, False)
    assert world.take_exchanged_bytes() == 0
    assert [list(distributed.block(10, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_fewer_directions_than_workers_split_the_rows_among_each_directions_workers():
    from engine.api import workers

    def shares(q, rows, size):
        return [(list(workers.directions(q, r, size)), list(workers.rows(q, rows, r, size)))
                for r in range(size)]

    assert shares(4, 4, 2) == [([0, 1], [0, 1, 2, 3]), ([2, 3], [0, 1, 2, 3])]
    assert shares(3, 4, 2) == [([0], [0, 1, 2, 3]), ([1, 2], [0, 1, 2, 3])]
    assert shares(1, 4, 2) == [([0], [0, 1]), ([0], [2, 3])]
    assert shares(2, 3, 3) == [([0], [0, 1, 2]), ([1], [0]), ([1], [1, 2])]
    # 2 directions × 3 rows over 6 workers: every worker one direction on one row.
    assert shares(2, 3, 6) == [([d], [r]) for d in (0, 1) for r in (0, 1, 2)]


def test_launch_prints_the_multi_machine_torchrun_command_and_a_skypilot_task(tiny_config, tmp_path,
                                                                              capsys):
    path = _config_file(tiny_config("optimizer.q=8"), tmp_path / "big.yaml")
    assert launch_main([str(path), "--nodes", "4", "--workers-per-node", "2", "--print"]) == 0
    text = capsys.readouterr().out
    command = next(line for line in text.splitlines() if line.startswith("torchrun "))
    assert command.split()[1:7] == ["--nnodes=4", "--nproc-per-node=2", "--rdzv-backend=c10d",
                                    "--rdzv-endpoint=$MASTER_ADDR:29500",
                                    command.split()[5], "--max-restarts=0"]
    assert command.endswith(f"-m engine train {path}")
    task = yaml.safe_load(text[text.index("# SkyPilot"):])
    assert task["num_nodes"] == 4 and task["workdir"] == "."
    assert "--node-rank=$SKYPILOT_NODE_RANK" in task["run"] and f"train {path}" in task["run"]
    from engine.api.errors import UserError

    # q = 8 directions × 2 rows: at most 16 workers.
    with pytest.raises(UserError, match=r"9 machines × 2 workers = 18 workers: .*"
                                        r"optimizer.q × batch_size is 8 × 2 = 16"):
        launch_main([str(path), "--nodes", "9", "--workers-per-node", "2", "--print"])


def test_workers_field_is_validated_and_free_on_resume(tiny_config):
    from engine.api.errors import UserError
    from engine.train.trainer import config_fingerprint

    with pytest.raises(UserError, match=r'"workers" is 5 but optimizer.q × batch_size is 2 × 2 = 4: '
                                        r".*lower workers to 4"):
        tiny_config("workers=5")
    assert tiny_config("workers=4").workers == 4  # each worker: one direction on one row
    with pytest.raises(UserError, match='"workers" is 2 but optimizer.name is .mezo'):
        tiny_config("workers=2", "optimizer.name=mezo")
    assert config_fingerprint(tiny_config("workers=2")) == config_fingerprint(tiny_config())
    assert json.dumps(config_io.to_dict(tiny_config()))  # the new fields serialise


@pytest.mark.parametrize("protocol", [True, False], ids=["bad-port-protocol", "log-dir-terminal"])
def test_a_launcher_that_cannot_start_says_what_to_do(tiny_config, tmp_path, protocol):
    """torch's launcher takes PET_* variables as its settings: a bad port (argparse's refusal)
    and a log folder that is a file (its own failure) end the command with one message, no
    traceback, and under --protocol a proper hello … error … done."""
    cfg = tiny_config("workers=2", f"output_dir={tmp_path / 'run'}")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    variable, value, reason = (
        ("PET_MASTER_PORT", "port-29500", "argument --master-port/--master_port: invalid int value: "
                                          "'port-29500'") if protocol else
        ("PET_LOG_DIR", str(not_a_folder), f"NotADirectoryError: log_dir: {not_a_folder}"))
    args = ["train", str(_config_file(cfg, tmp_path / "run.yaml")), *(["--protocol"] if protocol else [])]
    proc = engine_process(args, worker_env={variable: value})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "Traceback" not in err + out
    if protocol:
        events = [decode(line) for line in out.splitlines()]
        assert [e.type for e in events] == ["hello", "error", "done"]
        message = events[1].data["message"]
        assert events[1].data["kind"] == "user"
        assert events[2].data["status"] == "failed" and events[2].data["exit_code"] == 2
    else:
        assert out == ""
        message = err.strip().splitlines()[-1].removeprefix("error: ")
    assert message.startswith(f"torch's launcher could not start the 2 local workers: {reason}")
    assert f"({variable} set here)" in message
    assert message.endswith("Or set workers=1 to train in this one process")
