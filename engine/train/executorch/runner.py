"""The laptop's training-program runner: ExecuTorch's runtime and a few tensor copies, nothing else.

P-RGE itself (θ, the seeded directions, the ±ε copies, the projected gradients and the update)
stays in engine.train.optim: this runner only turns "losses of the first n copies on this batch" into
one call of the lowered program, so both backends share the optimiser, its checkpoints and its
exact resume. A phone-side runner does the same arithmetic in its own language
(docs/executorch.md, "Training program and runner contract").
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.train.executorch.program import MIN_TOKENS, ProgramSpec
from engine.train.objective import Batch


def pin_threads(threads: int) -> None:
    """Size ExecuTorch's XNNPACK thread pool (0 keeps its default: one per core).

    The pool is separate from torch's: pin both, or eager and the program run (and share the
    CPUs) at different thread counts. Call it while no method is running.
    """
    if threads:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)


class ProgramLosses:
    """One mean loss per LoRA copy of a batch, computed by the training program."""

    def __init__(self, path: Path, spec: ProgramSpec, threads: int = 0) -> None:
        from executorch.runtime import Runtime

        pin_threads(threads)
        self.spec = spec
        self.method = Runtime.get().load_program(path).load_method("forward")

    def __call__(self, batch: Batch, lora_copies: torch.Tensor) -> torch.Tensor:
        if lora_copies.shape != (self.spec.copies, self.spec.lora_values) or batch.rows != self.spec.rows:
            raise ValueError(f"the training program scores {self.spec.copies} copies of "
                             f"{self.spec.rows} rows, not {lora_copies.shape[0]} of {batch.rows}")
        missing = MIN_TOKENS - batch.input_ids.shape[1]
        ids, mask, positions = batch.input_ids, batch.attention_mask, batch.position_ids
        if missing > 0:
            # Masked columns on the left change no row's loss (rows are left-padded already).
            ids, mask, positions = (torch.nn.functional.pad(t, (missing, 0)) for t in (ids, mask, positions))
        inputs = [ids, mask, positions, batch.targets, lora_copies.float().contiguous()]
        # A copy: the output lives in the program's planned memory, which the next call
        # overwrites (single mode keeps the + losses while the − pass runs).
        return self.method.execute(inputs)[0].clone()
