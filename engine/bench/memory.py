"""Peak memory of each optimiser, each in a fresh process, next to an inference-only process.

The benchmarks run on the CPU, where RSS holds everything (no CUDA/MPS allocator to read).
Peak RSS is a high-water mark for the whole process, so every variant gets its own: a process
that ran the first-order step would lend its peak to every variant measured after it. The mark
is started afresh once the model is loaded (engine.model.memory.reset_peak_rss), so the peak is
the steps' own, what engine/api/estimate.py predicts; the load's own peak is recorded beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

from engine.bench.common import REPO, environment, finish, git_revision

VARIANTS = ["inference", "prge dual", "prge single", "mezo", "fo"]
DTYPES = ["float32", "bfloat16", "int8"]


def measure(reference: str, dtype: str, variant: str, q: int, b: int, seq_len: int,
            steps: int) -> dict:
    """In this process: load, run `variant` for `steps` steps (or forwards), read the peaks."""
    from engine.bench.speed import LABEL_WORDS, load, variants_for
    from engine.model import memory
    from engine.train.objective import Objective

    model, tokenizer = load(reference, dtype)
    loaded_rss, load_peak = memory.rss_bytes(), memory.peak_rss_bytes()
    since_load = memory.reset_peak_rss()
    objective = Objective(tokenizer, "classification", seq_len, LABEL_WORDS)
    runs = variants_for(model, objective, len(tokenizer), q, b, seq_len, only=variant)
    # inference: one plain forward over the 2q·b rows a prge dual step evaluates.
    run = runs["forward 2qb" if variant == "inference" else variant]
    for _ in range(steps):
        run()
    return {"variant": variant, "pid": os.getpid(), "weights_bytes": weights_bytes(model),
            "rss_after_load_bytes": loaded_rss, "load_peak_rss_bytes": load_peak,
            "peak_rss_bytes": memory.peak_rss_bytes(), "peak_since_load": since_load}


def weights_bytes(model) -> int:
    """The bytes of the model's parameters and buffers, each once (tied ones share); an int8
    weight (torchao) counts its int8 data and its scales."""
    total = 0
    for tensor in (*model.parameters(), *model.buffers()):
        parts = [getattr(tensor, name) for name in getattr(tensor, "tensor_data_names", ())]
        total += sum(part.nbytes for part in parts or [tensor])
    return total


def run(reference: str, q: int, b: int, seq_lens: list[int], steps: int, threads: int,
        variants: list[str] = VARIANTS, dtypes: list[str] = DTYPES[:1],
        save: Callable[[dict], object] | None = None) -> dict:
    """Every variant at every (base dtype, sequence length), one fresh process each; `save`
    gets the record after each variant, so a long run keeps what it measured (a variant of
    Llama-3.2-1B's shape at 512 tokens takes minutes)."""
    record = {"benchmark": "memory", "model": reference, "q": q, "b": b, "steps": steps,
              "environment": environment(threads), "points": []}
    for dtype in dtypes:
        for seq_len in seq_lens:
            point = {"dtype": dtype, "seq_len": seq_len, "variants": []}
            record["points"].append(point)
            predicted = estimates(reference, dtype, q, b, seq_len, variants)
            for variant in variants:
                point["variants"].append(_in_fresh_process(reference, dtype, variant, q, b, seq_len,
                                                           steps, threads))
                _compared(point, predicted)
                print(f"  memory: {dtype} {seq_len} tokens {variant} done", flush=True)
                if save:
                    save(record)
    return finish(record)


def reestimate(record: dict) -> dict:
    """The record's estimates (and their errors) from engine/api/estimate.py as it is now: the
    measurement takes hours at Llama-3.2-1B's shape, the estimate is arithmetic."""
    variants = [v["variant"] for v in record["points"][0]["variants"]]
    for point in record["points"]:
        _compared(point, estimates(record["model"], point["dtype"], record["q"], record["b"],
                                   point["seq_len"], variants))
    record["estimate_revision"] = git_revision()
    return record


def _in_fresh_process(reference: str, dtype: str, variant: str, q: int, b: int, seq_len: int,
                      steps: int, threads: int) -> dict:
    code = ("import json, torch; from engine.bench.memory import measure; "
            f"torch.set_num_threads({threads}); print(json.dumps(measure("
            f"{reference!r}, {dtype!r}, {variant!r}, {q}, {b}, {seq_len}, {steps})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=3 * 3600)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {dtype} {seq_len} {variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _compared(point: dict, predicted: dict[str, int]) -> dict:
    """The point with its ratios and the estimate's error against each measured peak."""
    peaks = {v["variant"]: v["peak_rss_bytes"] for v in point["variants"]}
    weights = point["variants"][0]["weights_bytes"]
    point["prge_dual_over_inference"] = _ratio(peaks, "prge dual", "inference")
    point["fo_over_prge_dual"] = _ratio(peaks, "fo", "prge dual")
    # The regression floor: what fo needs beyond the frozen weights, against prge dual.
    point["fo_over_prge_dual_above_weights"] = _ratio(
        {k: v - weights for k, v in peaks.items()}, "fo", "prge dual")
    point["estimate"] = predicted
    point["estimate_error"] = {v: predicted[v] / peaks[v] - 1 for v in predicted if v in peaks}
    return point


def _ratio(values: dict[str, int], top: str, bottom: str) -> float | None:
    return values[top] / values[bottom] if top in values and bottom in values else None


def estimates(reference: str, dtype: str, q: int, b: int, seq_len: int,
              variants: list[str]) -> dict[str, int]:
    """engine/api/estimate.py's predicted peak of each variant, for the same shapes and rows
    (inference: the plain forward over 2q·b rows)."""
    from engine.api import estimate
    from engine.api.config import OptimizerConfig, TrainConfig
    from engine.bench.speed import model_config

    shape = estimate.Shape.from_config(model_config(reference))
    predicted = {}
    for variant in variants:
        name, _, mode = variant.partition(" ")
        train = TrainConfig(task="classification", batch_size=b, max_seq_len=seq_len,
                            optimizer=OptimizerConfig(name="prge" if name == "inference" else name,
                                                      q=q, mode=mode or "dual"))
        if name == "inference":
            predicted[variant] = estimate.inference(shape, 2 * q * b, train, dtype).total_bytes
        else:
            # eval_rows=0: the benchmark evaluates nothing, so no evaluation pass can be wider.
            predicted[variant] = estimate.estimate(shape, train, dtype, eval_rows=0).total_bytes
    return predicted
