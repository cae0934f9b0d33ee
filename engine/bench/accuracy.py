"""Accuracy against budget: SST-2 prompt classification, every optimiser, one shared held-out set.

Each variant is a full training run through the real Trainer (the code a user runs), so the
curves include everything a step costs. Seconds are summed step times, evaluation excluded.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.api.errors import UserError
from engine.bench.common import REPO, environment, finish

SST2 = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
LABEL_WORDS = [" terrible", " great"]
PROMPT = "{text} It was"


@dataclass
class Variant:
    name: str
    overrides: list[str]
    steps_share: float  # of --steps: slower variants get fewer steps to fit the time budget


VARIANTS = [
    # Most informative per second first, so a sweep stopped part-way keeps the most: the
    # calibration setting, then the cheapest steps (q=16 b=1 never pads, fo), then the slowest.
    Variant("prge q=4 b=4", ["optimizer.name=prge", "optimizer.q=4", "batch_size=4"], 1.0),
    Variant("prge q=16 b=1", ["optimizer.name=prge", "optimizer.q=16", "batch_size=1"], 1.0),
    Variant("fo b=16", ["optimizer.name=fo", "batch_size=16", "optimizer.lr=1e-3"], 0.5),
    # Same directions and batches as prge q=4, so the same curve per step; it is here for seconds.
    Variant("mezo q=4 b=4", ["optimizer.name=mezo", "optimizer.q=4", "batch_size=4"], 0.5),
    Variant("prge q=1 b=16", ["optimizer.name=prge", "optimizer.q=1", "batch_size=16"], 1.0),
]

# Zeroth-order settings of the earlier calibration run (see docs/benchmarks.md); shared by all.
COMMON = [
    "task=classification", "max_seq_len=64",
    "optimizer.eps=1e-2", "optimizer.lr=1e-2", "lora.variant=lora-fa", "lora.rank=8",
    "lora.alpha=16", "lora.targets=[q_proj, v_proj]", "checkpoint_every=0", "eval_rows=0",
    "device=cpu", "dtype=float32",
]


def write_split(tsv: Path, folder: Path, eval_rows: int, train_rows: int, seed: int) -> tuple[Path, Path]:
    """A seeded held-out set and training sample of SST-2, as JSONL files the trainer reads."""
    if not tsv.exists():
        raise UserError(f"{tsv}: SST-2 not found; pass --sst2 PATH to a train.tsv "
                        "(sentence<TAB>label with a header row)")
    rows = []
    with tsv.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if header[:2] != ["sentence", "label"]:
            raise UserError(f"{tsv}:1: header is {header}; expected sentence<TAB>label")
        for number, line in enumerate(handle, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or parts[1] not in ("0", "1"):
                raise UserError(f"{tsv}:{number}: expected sentence<TAB>0 or 1, got {line[:80]!r}")
            rows.append({"text": parts[0].strip(), "label": int(parts[1])})
    return write_rows(rows, tsv, folder / "sst2", eval_rows, train_rows, seed)


def write_rows(rows: list[dict], source: Path, stem: Path, eval_rows: int, train_rows: int,
               seed: int) -> tuple[Path, Path]:
    """Shuffle `rows` (seeded); the first `eval_rows` become STEM-eval.jsonl, the next
    `train_rows` STEM-train.jsonl."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if len(order) < eval_rows + 16:
        raise UserError(f"{source}: {len(order)} rows; need at least {eval_rows + 16}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = stem.with_name(f"{stem.name}-train.jsonl"), stem.with_name(f"{stem.name}-eval.jsonl")
    for path, chosen in zip(paths, (order[eval_rows:eval_rows + train_rows], order[:eval_rows]), strict=True):
        path.write_text("".join(json.dumps(rows[i]) + "\n" for i in chosen), encoding="utf-8")
    return paths


class _Progress:
    """One line on stderr per evaluation, so a background run's log shows where it is."""

    def __init__(self, name: str) -> None:
        self.name = name

    def emit(self, type: str, data: dict) -> None:
        if type == "eval":
            print(f"[{time.strftime('%H:%M:%S')}] {self.name}: step {data['step']} "
                  f"accuracy {data['accuracy']:.3f} loss {data['loss']:.4f}", file=sys.stderr, flush=True)


def run_variant(variant: Variant, model: str, train: Path, held_out: Path, steps: int,
                eval_every: int, threads: int, seed: int, folder: Path, common: list[str] = COMMON,
                prompt: str = PROMPT, label_words: list[str] = LABEL_WORDS) -> dict:
    from engine.api import config as config_io
    from engine.train.events import EventBus
    from engine.train.trainer import Trainer

    out = folder / f"{variant.name.replace(' ', '_').replace('=', '')}-seed{seed}"
    overrides = [*common, f"seed={seed}", *variant.overrides, f"model={model}", f"dataset={train}",
                 f"eval_dataset={held_out}", f"steps={steps}", f"eval_every={eval_every}",
                 f"threads={threads}", f"output_dir={out}"]
    # Set directly: the prompt's braces and the words' leading spaces would not survive key=value.
    values = config_io.apply_overrides({"prompt_template": prompt, "label_words": label_words},
                                       overrides)
    config = config_io.validate(config_io.from_dict(values))
    trainer = Trainer(config, EventBus([_Progress(f"{variant.name} seed {seed}")]))
    try:
        trainer.setup(resume=False)
        result = trainer.train()
    finally:
        trainer.cleanup()
    return {"name": variant.name, "seed": seed, "config": config_io.to_dict(config),
            "curve": curve(out / "metrics.jsonl"), "reason": result.reason,
            "adapter_step": result.adapter_step, "steps_run": result.step}


def curve(metrics: Path) -> list[dict]:
    """(step, training seconds so far, accuracy, loss) at each evaluation."""
    seconds, points = 0.0, []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["type"] == "metrics":
            seconds += record["step_seconds"]
        elif record["type"] == "eval":
            points.append({"step": record["step"], "train_seconds": seconds,
                           "accuracy": record["accuracy"], "loss": record["loss"]})
    return points


def run(model: str, sst2: Path, steps: int, eval_every: int, eval_rows: int, train_rows: int,
        threads: int, folder: Path, only: list[str] | None, seeds: list[int],
        save: Callable[[dict], object]) -> dict:
    """Every variant for each training seed (the held-out split is always seed 0's).

    `save` gets the record after each run, so a long sweep stopped part-way keeps what finished.
    """
    record = {"benchmark": "accuracy", "model": model, "dataset": str(sst2),
              "eval_rows": eval_rows, "train_rows": train_rows, "split_seed": 0, "seeds": seeds,
              "environment": environment(threads), "runs": []}
    known = {v.name for v in VARIANTS} | {v.name.split()[0] for v in VARIANTS}
    unknown = sorted(set(only or []) - known)
    if unknown:
        raise UserError(f"--only {unknown}: no such run; choose from {sorted(known)}")
    train, held_out = write_split(sst2, folder / "data", eval_rows, train_rows, seed=0)
    for seed in seeds:
        for variant in VARIANTS:
            if only and variant.name.split()[0] not in only and variant.name not in only:
                continue
            n = max(1, round(steps * variant.steps_share))
            every = max(1, round(eval_every * variant.steps_share))
            record["runs"].append(run_variant(variant, model, train, held_out, n, every, threads,
                                              seed, folder))
            # Every adapter starts at B = 0, so each run's step-0 evaluation is the zero-shot model.
            record["zero_shot_accuracy"] = record["runs"][0]["curve"][0]["accuracy"]
            save(finish(record))
    return finish(record)
