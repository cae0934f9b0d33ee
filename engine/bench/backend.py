"""P-RGE step time of the two training backends side by side: eager PyTorch and the lowered
ExecuTorch training program (engine/executorch_train), on one model, the same rows and seeds.

Each backend steps its own adapter (same seed, so the same θ and directions) over a
weight-sharing clone of the model; the steps are interleaved, so both adapters take the same
number of steps and must end equal: the record keeps the largest |Δθ| between them as a check
that the timed program computes what eager computes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from engine.api.config import OptimizerConfig
from engine.bench.common import environment, finish, interleaved
from engine.bench.speed import LABEL_WORDS, load, stepper, synthetic_batch
from engine.train import optim as engine_optim
from engine.train.objective import Objective


def run(reference: str, q: int, b: int, seq_len: int, reps: int, warmup: int, threads: int) -> dict:
    from engine.train.executorch import program, runner

    model, tokenizer = load(reference)
    objective = Objective(tokenizer, "classification", seq_len, LABEL_WORDS)
    batch = synthetic_batch(b, seq_len, len(tokenizer))
    config = OptimizerConfig(name="prge", q=q, mode="dual")
    copies = engine_optim.copies_needed(config)
    built: dict = {}

    with tempfile.TemporaryDirectory(prefix="edgetune-bench-") as scratch:
        def lowered(clone, adapter):
            spec = program.ProgramSpec.of(objective, adapter.store, copies, b, seq_len)
            started = time.perf_counter()
            data = program.lower(program.TrainingProgram(clone, adapter, objective, copies), spec)
            built["lower_seconds"] = time.perf_counter() - started
            built["program_bytes"] = len(data)
            path = Path(scratch) / "train.pte"
            path.write_bytes(data)
            program_losses = runner.ProgramLosses(path, spec, threads)
            return lambda n: program_losses(batch, adapter.store.copies[:n])

        eager_step, eager_optimizer = stepper(model, objective, batch, config)
        program_step, program_optimizer = stepper(model, objective, batch, config, losses_of=lowered)
        timings = interleaved({"pytorch": eager_step, "executorch": program_step}, reps, warmup)
    med = {k: t.median_seconds for k, t in timings.items()}
    theta = eager_optimizer.theta
    drift = (theta - program_optimizer.theta).abs().max().item()
    record = {"benchmark": "backend", "model": reference, "q": q, "b": b, "seq_len": seq_len,
              "optimizer": "prge dual", "lora": "lora-fa r=8 on all 7 projections (the demo's)",
              "environment": environment(threads), "reps": reps, "warmup": warmup,
              "steps_per_backend": reps + warmup, **built,
              "timings": {k: t.as_dict() for k, t in timings.items()},
              "speedup_executorch_over_pytorch": med["pytorch"] / med["executorch"],
              "max_theta_difference": drift, "max_theta": theta.abs().max().item()}
    return finish(record)
