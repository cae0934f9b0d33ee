"""Held-out accuracy against wall-clock training seconds: each estimator option alone, their
combination, MeZO and first-order LoRA, on SST-2 and AG News, each a real Trainer run with a time
budget (the code a user runs: `time_budget_minutes`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.api.errors import UserError
from engine.bench.accuracy import Variant, run_variant, write_rows, write_split
from engine.bench.common import REPO, environment, finish

SHARED = REPO.parent / "shared" / "data"


@dataclass
class Task:
    tsv: Path
    prompt: str
    label_words: list[str]
    labels: list[str]  # the TSV's label column values, in label_words order


TASKS = {
    "sst2": Task(SHARED / "sst2" / "train.tsv", "{text} It was", [" terrible", " great"], ["0", "1"]),
    "agnews": Task(SHARED / "agnews" / "train.tsv", "{text}\nTopic:",
                   [" world", " sports", " business", " science"],
                   ["World", "Sports", "Business", "Sci/Tech"]),
}

# Shared by every variant: the demo's adapter (LoRA-FA r=8, all seven projections) unless the
# variant says otherwise.
COMMON = ["task=classification", "max_seq_len=64", "lora.variant=lora-fa", "lora.rank=8",
          "lora.alpha=16", "checkpoint_every=0", "eval_rows=0", "device=cpu", "dtype=float32"]

TODAY = ["optimizer.name=prge", "optimizer.q=4", "batch_size=4", "optimizer.eps=1e-2",
         "optimizer.lr=1e-2"]
VARIANTS = {
    "prge today": TODAY,
    "+ cosine": [*TODAY, "optimizer.schedule=cosine"],
    "+ top 8 layers": [*TODAY, "lora.top_layers=8"],
    "+ cosine + top 8 layers": [*TODAY, "optimizer.schedule=cosine", "lora.top_layers=8"],
    "+ cosine + momentum 0.9": [*TODAY, "optimizer.schedule=cosine", "optimizer.momentum=0.9"],
    "+ one-sided q=7": [*TODAY, "optimizer.estimator=one-sided", "optimizer.q=7"],
    "+ rademacher": [*TODAY, "optimizer.directions=rademacher"],
    "+ bf16 base": [*TODAY, "dtype=bfloat16"],
    "one-sided q=7 rademacher cosine bf16": [*TODAY, "optimizer.estimator=one-sided", "optimizer.q=7",
                                             "optimizer.directions=rademacher",
                                             "optimizer.schedule=cosine", "dtype=bfloat16"],
    # Round 3 (docs/convergence.md): twice the directions per pass lower the noise floor.
    "one-sided q=15 rademacher cosine bf16": [*TODAY, "optimizer.estimator=one-sided",
                                              "optimizer.q=15", "optimizer.directions=rademacher",
                                              "optimizer.schedule=cosine", "dtype=bfloat16"],
    "+ loss-std": [*TODAY, "optimizer.normalize=loss-std", "optimizer.lr=1e-3"],
    "+ momentum 0.9": [*TODAY, "optimizer.momentum=0.9"],
    "+ cosine lr 3e-2": [*TODAY, "optimizer.schedule=cosine", "optimizer.lr=3e-2"],
    "fzoo + cosine": [*TODAY, "optimizer.estimator=one-sided", "optimizer.q=7",
                      "optimizer.directions=rademacher", "optimizer.normalize=loss-std",
                      "optimizer.schedule=cosine", "optimizer.lr=2e-2"],
    "last2 lora o,down q=31": [*TODAY, "lora.top_layers=2", "lora.targets=[o_proj, down_proj]",
                               "lora.variant=lora", "optimizer.estimator=one-sided", "optimizer.q=31",
                               "batch_size=8", "optimizer.directions=rademacher",
                               "optimizer.schedule=cosine", "optimizer.lr=0.3"],
    "combo": [*TODAY, "lora.top_layers=8", "optimizer.estimator=one-sided", "optimizer.q=7",
              "optimizer.directions=rademacher", "optimizer.schedule=cosine"],
    "combo loss-std": [*TODAY, "lora.top_layers=8", "optimizer.estimator=one-sided", "optimizer.q=7",
                       "optimizer.directions=rademacher", "optimizer.schedule=cosine",
                       "optimizer.normalize=loss-std", "optimizer.lr=2e-2"],
    "top4 o,down": [*TODAY, "lora.top_layers=4", "lora.targets=[o_proj, down_proj]"],
    "top4 o,down combo": [*TODAY, "lora.top_layers=4", "lora.targets=[o_proj, down_proj]",
                          "optimizer.estimator=one-sided", "optimizer.q=7",
                          "optimizer.directions=rademacher", "optimizer.schedule=cosine",
                          "optimizer.lr=3e-2"],
    "wide top4 o,down": [*TODAY, "lora.top_layers=4", "lora.targets=[o_proj, down_proj]",
                         "optimizer.estimator=one-sided", "optimizer.q=31", "batch_size=8",
                         "optimizer.directions=rademacher", "optimizer.schedule=cosine",
                         "optimizer.lr=0.3"],
    "wide top8": [*TODAY, "lora.top_layers=8", "optimizer.estimator=one-sided", "optimizer.q=31",
                  "batch_size=8", "optimizer.directions=rademacher", "optimizer.schedule=cosine",
                  "optimizer.lr=3e-2"],
    "mezo": ["optimizer.name=mezo", "optimizer.q=4", "batch_size=4", "optimizer.eps=1e-2",
             "optimizer.lr=1e-2"],
    "fo": ["optimizer.name=fo", "batch_size=16", "optimizer.lr=1e-3", "lora.targets=[q_proj, v_proj]"],
}


def write_topic_split(task: Task, tsv: Path, folder: Path, eval_rows: int, train_rows: int,
                      seed: int) -> tuple[Path, Path]:
    """AG News' text<TAB>label rows as a seeded held-out set and training sample (JSONL, integer
    labels in label_words order)."""
    if not tsv.exists():
        raise UserError(f"{tsv}: not found; pass --data PATH to a text<TAB>label file with a header row")
    rows = []
    with tsv.open(encoding="utf-8") as handle:
        handle.readline()
        for number, line in enumerate(handle, start=2):
            text, _, label = line.rstrip("\n").rpartition("\t")
            if label not in task.labels:
                raise UserError(f"{tsv}:{number}: label {label!r} is none of {task.labels}")
            rows.append({"text": text.strip(), "label": task.labels.index(label)})
    return write_rows(rows, tsv, folder / "topics", eval_rows, train_rows, seed)


def run(model: str, task_name: str, data: Path | None, variants: list[str], minutes: float,
        eval_every: int, eval_rows: int, train_rows: int, threads: int, folder: Path,
        seeds: list[int], extra: list[str], save: Callable[[dict], object],
        steps: int = 100_000) -> dict:
    """Each variant for each seed, `minutes` of training each (0: `steps` steps each)."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise UserError(f"--variants {unknown}: no such variant; choose from {sorted(VARIANTS)}")
    task = TASKS[task_name]
    tsv = data or task.tsv
    record = {"benchmark": "convergence", "task": task_name, "model": model, "minutes": minutes,
              "steps": steps,
              "dataset": str(tsv),
              "eval_rows": eval_rows, "train_rows": train_rows, "split_seed": 0, "seeds": seeds,
              "environment": environment(threads), "runs": []}
    if task_name == "sst2":
        train, held_out = write_split(tsv, folder / "data", eval_rows, train_rows, seed=0)
    else:
        train, held_out = write_topic_split(task, tsv, folder / "data", eval_rows, train_rows, seed=0)
    for seed in seeds:
        for name in variants:
            overrides = [*VARIANTS[name], f"time_budget_minutes={minutes}", *extra]
            result = run_variant(Variant(name, overrides, 1.0), model, train, held_out, steps,
                                 eval_every, threads, seed, folder, COMMON, task.prompt, task.label_words)
            result["extra"] = extra
            record["runs"].append(result)
            save(finish(record))
    return finish(record)


def step_costs(model: str, task_name: str, data: Path | None, variants: list[str], reps: int,
               warmup: int, threads: int, folder: Path) -> dict:
    """Seconds per optimiser step of each variant, interleaved in one process over the same
    training batches (what the accuracy runs' seconds cannot give on a shared machine: their
    steps ran at different times, under different loads)."""
    import torch

    from engine.api import config as config_io
    from engine.bench.common import interleaved
    from engine.train.events import EventBus
    from engine.train.trainer import Trainer

    task = TASKS[task_name]
    tsv = data or task.tsv
    split = write_split if task_name == "sst2" else lambda *a, **k: write_topic_split(task, *a, **k)
    train, held_out = split(tsv, folder / "data", 16, 512, seed=0)
    steppers, trainers = {}, []
    for name in variants:
        values = config_io.apply_overrides(
            {"prompt_template": task.prompt, "label_words": task.label_words},
            [*COMMON, *VARIANTS[name], f"model={model}", f"dataset={train}",
             f"eval_dataset={held_out}", f"threads={threads}",
             f"output_dir={folder / name.replace(' ', '_')}"])
        trainer = Trainer(config_io.validate(config_io.from_dict(values)), EventBus([]))
        trainer.setup(resume=False)
        trainers.append(trainer)
        counter = [0]

        def one_step(trainer=trainer, counter=counter) -> None:
            step = counter[0]
            batch = trainer.objective.encode(
                [trainer.train_data.examples[i] for i in trainer.batch_indices(step)])
            losses = lambda n, batch=batch, trainer=trainer: trainer.batch_losses(batch, n)
            with torch.inference_mode():
                trainer.optimizer.step(losses, step)
            counter[0] += 1

        steppers[name] = one_step
    timings = interleaved(steppers, reps, warmup)
    for trainer in trainers:
        trainer.cleanup()
    return {"benchmark": "step-costs", "task": task_name, "model": model, "reps": reps,
            "environment": environment(threads),
            "variants": [{"name": name, "timing": timings[name].as_dict()} for name in variants]}
