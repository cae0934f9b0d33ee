"""Kill -9 at a random point of a run, resume, compare with the uninterrupted run.

    .venv/bin/python tests/engine/fault_trials.py --trials 10 [--seed 0]

Each trial starts `python -m engine train … --protocol`, kills it with SIGKILL as soon as a seeded
random event of the stream arrives (after a step, while evaluating, while a checkpoint is being
written…), resumes with `--resume` until the run completes, and compares the resumed folder's
metrics.jsonl with an uninterrupted run's: every step's loss and every evaluation, bit for bit.
The default test suite runs two trials (tests/engine/test_faults.py); docs/reliability.md records a
full run of this script.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# As a script: the repository (engine/) and tests/ (conftest's helpers) on the path.
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from conftest import DEMO_DATA, Recorder, engine_process, make_tiny_llama  # noqa: E402

from engine.api.history import read_history  # noqa: E402
from engine.api.protocol import decode  # noqa: E402

# A run long enough to hold several checkpoints and evaluations between them.
TRIAL_OVERRIDES = ["steps=12", "checkpoint_every=3", "eval_every=4", "keep_checkpoints=2"]


def base_overrides(model: Path, dataset: Path, output_dir: Path) -> list[str]:
    return [
        f"model={model}", f"dataset={dataset}", "task=classification",
        "label_words=[' terrible', ' great']", f"output_dir={output_dir}", "batch_size=2",
        "max_seq_len=48", "eval_rows=16", "threads=1", "optimizer.q=2", "optimizer.lr=0.05",
        "lora.rank=4", *TRIAL_OVERRIDES,
    ]


def trajectory(output_dir: Path) -> list[tuple]:
    """What a user keeps of a run: the loss of every step and every evaluation, in order."""
    keep = []
    for record in read_history(output_dir / "metrics.jsonl"):
        if record["type"] == "metrics":
            keep.append(("metrics", record["step"], record["loss"]))
        elif record["type"] == "eval":
            keep.append(("eval", record["step"], record["loss"], record["accuracy"]))
    return keep


def run_to_end(args: list[str]) -> list:
    proc = engine_process(["train", *args, "--protocol"])
    out, err = proc.communicate(timeout=600)
    events = [decode(line) for line in out.splitlines()]
    if proc.returncode != 0 or events[-1].data.get("status") != "completed":
        raise RuntimeError(f"engine run failed ({proc.returncode}): {err[-2000:]}")
    return events


@dataclass
class Reference:
    """The uninterrupted run: its trajectory and the event numbers a kill may land on."""

    trajectory: list[tuple]
    first_checkpoint_seq: int
    done_seq: int


def train_in_process(args: list[str], resume: bool = False) -> list[tuple[str, dict]]:
    """The same run as `engine run ARGS` inside this process; returns its events."""

    from engine.api import config as config_io
    from engine.train.events import EventBus
    from engine.train.trainer import Trainer

    recorder = Recorder()
    trainer = Trainer(config_io.load(None, args), EventBus([recorder]))
    try:
        trainer.setup(resume=resume)
        trainer.train()
    finally:
        trainer.cleanup()
    return recorder.events


def reference_run(model: Path, dataset: Path, output_dir: Path) -> Reference:
    events = train_in_process(base_overrides(model, dataset, output_dir))
    # The engine process sends `hello` first, so its event i is this list's i - 1; after the
    # trainer's last event it plots and sends `done`.
    first_checkpoint = 1 + next(i for i, (t, _) in enumerate(events) if t == "checkpoint")
    return Reference(trajectory(output_dir), first_checkpoint, 1 + len(events))


@dataclass
class TrialResult:
    seed: int
    kill_seq: int
    killed_after: str  # the last event seen before the kill, e.g. "metrics step 7"
    resumed_from_step: int
    identical: bool
    seconds: float


def trial(seed: int, model: Path, dataset: Path, output_dir: Path, ref: Reference,
          resume_in_process: bool = False) -> TrialResult:
    """One kill and resume; the test suite resumes in-process (one process start less)."""
    started = time.monotonic()
    # Kill points start at the first checkpoint: before it there is nothing to resume, and the
    # engine says so (tested in test_faults.py).
    kill_seq = random.Random(seed).randrange(ref.first_checkpoint_seq, ref.done_seq)
    args = base_overrides(model, dataset, output_dir)
    proc = engine_process(["train", *args, "--protocol"])
    last = "nothing"
    for line in proc.stdout:
        event = decode(line)
        step = event.data.get("step")
        last = " ".join(str(part) for part in (event.type, event.data.get("state"),
                                               None if step is None else f"step {step}") if part)
        if event.seq >= kill_seq:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    if proc.returncode != -signal.SIGKILL:
        raise RuntimeError(f"seed {seed}: the run ended ({proc.returncode}) before the kill")
    if resume_in_process:
        logs = [d["message"] for t, d in train_in_process(args, resume=True) if t == "log"]
    else:
        logs = [e.data["message"] for e in run_to_end([*args, "--resume"]) if e.type == "log"]
    resumed = [m for m in logs if m.startswith("resumed from")]
    resumed_from = int(resumed[0].rsplit(" ", 1)[1]) if resumed else -1
    got = trajectory(output_dir)
    return TrialResult(seed, kill_seq, last, resumed_from, got == ref.trajectory,
                       time.monotonic() - started)


def prepare_inputs(folder: Path) -> tuple[Path, Path]:
    """The tiny model and sentiment rows of the test fixtures."""

    model = make_tiny_llama(folder / "tiny-llama")
    dataset = folder / "sentiment.jsonl"
    dataset.write_text("".join(line + "\n" for line in DEMO_DATA.read_text().splitlines()[:120]))
    return model, dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="first trial's seed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgetune-faults-") as tmp:
        folder = Path(tmp)
        model, dataset = prepare_inputs(folder)
        ref = reference_run(model, dataset, folder / "reference")
        results = []
        for seed in range(args.seed, args.seed + args.trials):
            result = trial(seed, model, dataset, folder / f"trial-{seed}", ref)
            results.append(result)
            print(f"seed {seed}: killed at event {result.kill_seq} (after {result.killed_after}), "
                  f"resumed from step {result.resumed_from_step}, "
                  f"{'identical' if result.identical else 'DIFFERENT'} ({result.seconds:.0f} s)",
                  flush=True)
    identical = sum(r.identical for r in results)
    print(f"{identical}/{len(results)} resumed runs match the uninterrupted run bit for bit")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0 if identical == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
