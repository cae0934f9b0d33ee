"""Forward throughput and optimiser step time, on fixed-length synthetic rows.

Rows are random token ids of one length, so every variant sees exactly the same shapes and a
curve point is a function of (rows, length) alone. The forwards are the engine's own
(`Objective.logits`: left-padded batch, `logits_to_keep=1`, `inference_mode`).
"""

from __future__ import annotations

import copy

import torch

from engine.api.config import LoraConfig, OptimizerConfig
from engine.bench.common import environment, finish, interleaved
from engine.model import device as devices
from engine.model import loading as models
from engine.model.tiny import SHAPES, random_model, shape_config
from engine.train import lora as engine_lora
from engine.train import optim as engine_optim
from engine.train.objective import Batch, Objective

LABEL_WORDS = [" terrible", " great"]


def load(reference: str, dtype: str = "float32"):
    """(model, tokenizer) on the CPU with a `dtype` base (float32 | bfloat16 | int8: weight-only,
    computing in float32, as the trainer makes it); a name of engine.model.tiny.SHAPES (`tiny`:
    the test suite's 2-layer Llama) is a random-init model of that shape, with SmolLM2's
    tokenizer."""
    compute = devices.resolve_dtype(dtype, torch.device("cpu"))
    if reference in SHAPES:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(models.local_folder("default")))
        model = random_model(reference, len(tokenizer), compute)
    else:
        loaded = models.load(reference, torch.device("cpu"), compute)
        model, tokenizer = loaded.model, loaded.tokenizer
    if dtype == "int8":
        models.quantize_int8(model)
    return model, tokenizer


def model_config(reference: str) -> dict:
    """The config.json fields of what `load(reference)` builds (the memory estimate's input)."""
    if reference in SHAPES:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(models.local_folder("default")))
        return shape_config(reference, len(tokenizer)).to_dict()
    return models.read_config(models.local_folder(reference))


def synthetic_batch(rows: int, seq_len: int, vocab: int, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, vocab, (rows, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    positions = torch.arange(seq_len).expand(rows, seq_len).contiguous()
    targets = torch.randint(0, 2, (rows,), generator=generator)
    return Batch(ids, mask, positions, targets, keep=1, tokens=rows * seq_len)


def _forward(model, objective: Objective, batch: Batch):
    def run() -> None:
        with torch.inference_mode():
            objective.logits(model, batch, 1)
    return run


def throughput(reference: str, seq_lens: list[int], rows: list[int], reps: int, warmup: int,
               threads: int) -> dict:
    model, tokenizer = load(reference)
    objective = Objective(tokenizer, "classification", max(seq_lens), LABEL_WORDS)
    record = {"benchmark": "throughput", "model": reference, "environment": environment(threads),
              "reps": reps, "warmup": warmup, "curves": []}
    for seq_len in seq_lens:
        batches = {n: synthetic_batch(n, seq_len, len(tokenizer)) for n in rows}
        timings = interleaved({str(n): _forward(model, objective, b) for n, b in batches.items()},
                              reps, warmup)
        seconds = {n: timings[str(n)].median_seconds for n in rows}
        record["curves"].append({
            "seq_len": seq_len,
            "points": [{"rows": n, "timing": timings[str(n)].as_dict()} for n in rows],
            "ideal_speedups": ideal_speedups(seconds),
        })
    return finish(record)


def ideal_speedups(seconds: dict[int, float]) -> list[dict]:
    """S* = 2q·t(b)/t(2q·b) for every (q, b) the measured row counts allow."""
    out = []
    for b in sorted(seconds):
        for q in (1, 2, 4, 8, 16):
            if 2 * q * b in seconds:
                out.append({"q": q, "b": b, "ideal_speedup": 2 * q * seconds[b] / seconds[2 * q * b]})
    return out


def _clone(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree that shares every weight: one adapter per variant, one model."""
    return copy.deepcopy(model, memo={id(p): p for p in model.parameters()})


def stepper(model, objective: Objective, batch: Batch, config: OptimizerConfig,
             implementation: tuple | None = None, losses_of=None):
    """(one optimiser step per call, its optimizer), on its own adapter over a weight-sharing
    clone of `model`; `implementation` is another revision's (lora, optim) modules
    (engine/bench/baseline.py); `losses_of(clone, adapter)` replaces the eager losses."""
    lora, optim = implementation or (engine_lora, engine_optim)
    clone = _clone(model)
    adapter = lora.inject(clone, LoraConfig(), optim.copies_needed(config), seed=0)
    optimizer = optim.build(config, adapter.store, seed=0)
    step = [0]

    def eager_losses(n: int) -> torch.Tensor:
        with lora.active_copies(adapter, n):
            return objective.losses(clone, batch, n)

    losses = losses_of(clone, adapter) if losses_of else eager_losses

    def run() -> None:
        with torch.inference_mode(config.name != "fo"):
            optimizer.step(losses, step[0])
        step[0] += 1
    return run, optimizer


def variants_for(model, objective: Objective, vocab: int, q: int, b: int, seq_len: int,
                 only: str | None = None, baseline: tuple[str, tuple] | None = None) -> dict:
    """Every optimiser's step and the two plain forwards S* and L are taken against, at (q, b);
    with `only`, just that optimiser's step (and the forwards); with `baseline` (revision,
    (lora, optim)), also that revision's prge dual and mezo steps ("prge dual @REV")."""
    batch = synthetic_batch(b, seq_len, vocab)
    configs = {
        "prge dual": OptimizerConfig(name="prge", q=q, mode="dual"),
        "prge single": OptimizerConfig(name="prge", q=q, mode="single"),
        "mezo": OptimizerConfig(name="mezo", q=q),
        "fo": OptimizerConfig(name="fo", q=q, lr=1e-3),
    }
    runs = {name: stepper(model, objective, batch, config)[0] for name, config in configs.items()
            if only in (None, name)}
    if baseline:
        revision, implementation = baseline
        for name in ("prge dual", "mezo"):
            if only in (None, name):
                runs[f"{name} @{revision}"] = stepper(model, objective, batch, configs[name],
                                                       implementation)[0]
    runs["forward 2qb"] = _forward(model, objective, synthetic_batch(2 * q * b, seq_len, vocab))
    runs["forward b"] = _forward(model, objective, batch)
    return runs


def step_times(reference: str, seq_len: int, qs: list[int], effective_batch: int, fixed_b: int,
               fixed_b_max_q: int, reps: int, warmup: int, threads: int, profile: bool,
               baseline: str | None = None) -> dict:
    model, tokenizer = load(reference)
    old = None
    if baseline:
        from engine.bench import baseline as baselines

        old = (baseline, baselines.load(baseline))
    objective = Objective(tokenizer, "classification", seq_len, LABEL_WORDS)
    vocab = len(tokenizer)
    record = {"benchmark": "step", "model": reference, "seq_len": seq_len,
              "lora": "lora-fa r=8 on all 7 projections (the demo's)", "eps": 1e-2,
              "environment": environment(threads), "reps": reps, "warmup": warmup,
              "baseline": baseline, "sweeps": [], "profiles": []}
    sweeps = [(f"q·b = {effective_batch}", [(q, effective_batch // q) for q in qs
                                             if effective_batch % q == 0]),
              (f"b = {fixed_b}", [(q, fixed_b) for q in qs if q <= fixed_b_max_q])]
    for name, pairs in sweeps:
        if not pairs:  # e.g. --fixed-b-max-q 0: only the q·b sweep was asked for
            continue
        rows = []
        for q, b in pairs:
            runs = variants_for(model, objective, vocab, q, b, seq_len, baseline=old)
            timings = {k: t.as_dict() for k, t in interleaved(runs, reps, warmup).items()}
            med = {k: t["median_s"] for k, t in timings.items()}
            rows.append({
                "q": q, "b": b, "timings": timings,
                "speedup": med["mezo"] / med["prge dual"],
                "ideal_speedup": 2 * q * med["forward b"] / med["forward 2qb"],
                "limit_ratio": med["prge dual"] / med["forward 2qb"],
            })
            if baseline:
                # How much faster the working tree is than the baseline (>1: faster now).
                rows[-1]["gain_over_baseline"] = {
                    name: med[f"{name} @{baseline}"] / med[name] for name in ("prge dual", "mezo")}
            if profile:
                record["profiles"] += profiles(runs, q, b)
            print(f"  {name}: q={q} b={b} done", flush=True)
        record["sweeps"].append({"name": name, "rows": rows})
    return finish(record)


def profiles(runs: dict, q: int, b: int, top: int = 10) -> list[dict]:
    """Where one prge dual step and one plain forward over the same rows spend their time."""
    from torch.profiler import ProfilerActivity, profile

    out = []
    for what in ("prge dual", "forward 2qb"):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            runs[what]()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        out.append({"q": q, "b": b, "what": what, "total_self_ms": sum(
            e.self_cpu_time_total for e in events) / 1e3, "top": [
            {"name": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3}
            for e in events[:top]]})
    return out
