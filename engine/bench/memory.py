"""Peak memory of each optimiser, each in a fresh process, next to an inference-only process.

The benchmarks run on the CPU, where RSS holds everything (no CUDA/MPS allocator to read).
Peak RSS is a high-water mark for the whole process, so every variant gets its own: a process
that ran the first-order step would lend its peak to every variant measured after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from engine.bench.common import REPO, environment, finish

VARIANTS = ["inference", "prge dual", "prge single", "mezo", "fo"]


def measure(reference: str, variant: str, q: int, b: int, seq_len: int, steps: int) -> dict:
    """In this process: load, run `variant` for `steps` steps (or forwards), read the peaks."""
    from engine.bench.speed import LABEL_WORDS, load, variants_for
    from engine.model import memory
    from engine.train.objective import Objective

    model, tokenizer = load(reference)
    loaded_rss = memory.rss_bytes()
    objective = Objective(tokenizer, "classification", seq_len, LABEL_WORDS)
    runs = variants_for(model, objective, len(tokenizer), q, b, seq_len, only=variant)
    # inference: one plain forward over the 2q·b rows a prge dual step evaluates.
    run = runs["forward 2qb" if variant == "inference" else variant]
    for _ in range(steps):
        run()
    return {"variant": variant, "pid": os.getpid(), "rss_after_load_bytes": loaded_rss,
            "peak_rss_bytes": memory.peak_rss_bytes()}


def run(reference: str, q: int, b: int, seq_len: int, steps: int, threads: int,
        variants: list[str] = VARIANTS) -> dict:
    record = {"benchmark": "memory", "model": reference, "q": q, "b": b, "seq_len": seq_len,
              "steps": steps, "environment": environment(threads), "variants": []}
    for variant in variants:
        code = ("import json, torch; from engine.bench.memory import measure; "
                f"torch.set_num_threads({threads}); "
                f"print(json.dumps(measure({reference!r}, {variant!r}, {q}, {b}, {seq_len}, {steps})))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=REPO, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"memory probe {variant} failed:\n{done.stderr[-2000:]}")
        record["variants"].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  memory: {variant} done", flush=True)
    peaks = {v["variant"]: v["peak_rss_bytes"] for v in record["variants"]}
    for key, top, bottom in (("prge_dual_over_inference", "prge dual", "inference"),
                             ("fo_over_prge_dual", "fo", "prge dual")):
        record[key] = peaks[top] / peaks[bottom] if top in peaks and bottom in peaks else None
    record["estimate"] = estimates(reference, q, b, seq_len, variants)
    return finish(record)


def estimates(reference: str, q: int, b: int, seq_len: int, variants: list[str]) -> dict | None:
    """engine/estimate.py's predicted peak per optimiser, for the same shapes (None for `tiny`)."""
    if reference == "tiny":
        return None
    from engine.api import estimate
    from engine.api.config import OptimizerConfig, TrainConfig
    from engine.model import loading as model

    config = json.loads((model.local_folder(reference) / "config.json").read_text(encoding="utf-8"))
    shape = estimate.Shape.from_config(config)
    predicted = {}
    for variant in variants:
        if variant == "inference":
            continue
        name, _, mode = variant.partition(" ")
        train = TrainConfig(task="classification", batch_size=b, max_seq_len=seq_len,
                            optimizer=OptimizerConfig(name=name, q=q, mode=mode or "dual"))
        predicted[variant] = estimate.estimate(shape, train).total_bytes
    return predicted
