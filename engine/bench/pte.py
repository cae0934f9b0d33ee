"""Prefill time of a run's exported ExecuTorch program against eager PyTorch on the same weights.

The program is `RUN/export/executorch/model.pte` (`python -m engine export RUN --format
executorch`, export_llm's KV-cache program: one call takes the tokens from position 0 and
returns the last position's logits); the eager side is the run's base model with its adapter
merged. Both see the same random token ids per length and are interleaved; the record keeps
each length's max |Δlogit| of the last position, so a timing of a program that computes
something else cannot pass unnoticed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.api.errors import UserError
from engine.bench.common import environment, finish, interleaved


def run(run_dir: Path, lengths: list[int], reps: int, warmup: int, threads: int) -> dict:
    from engine.export import executorch, run_folder
    from engine.runtime import pte as pte_runtime
    from engine.train.executorch.runner import pin_threads

    pte = run_dir / "export" / "executorch" / "model.pte"
    if not pte.is_file():
        raise UserError(f"{pte}: no exported program; run `python -m engine export {run_dir} "
                        "--format executorch` first")
    max_seq_len = pte_runtime.read_metadata(pte)["max_seq_len"]
    if max(lengths) > max_seq_len:
        raise UserError(f"--lengths {max(lengths)} is longer than the program's max_seq_len "
                        f"{max_seq_len}")
    pin_threads(threads)
    program = pte_runtime.Program(pte)
    loaded = executorch.load_run(*run_folder(run_dir))
    eager = loaded.adapted.merge_and_unload().eval()
    vocab = eager.config.vocab_size
    record = {"benchmark": "pte", "model": loaded.config.model, "run": str(run_dir),
              "program_bytes": pte.stat().st_size, "environment": environment(threads),
              "reps": reps, "warmup": warmup, "lengths": []}
    for length in lengths:
        generator = torch.Generator().manual_seed(length)
        ids = torch.randint(0, vocab, (1, length), generator=generator)
        prefill, pytorch = _forwards(program, eager, ids)
        difference = (prefill() - pytorch()).abs().max().item()
        timings = interleaved({"executorch": prefill, "pytorch": pytorch}, reps, warmup)
        record["lengths"].append({
            "tokens": length, "max_abs_logit_difference": difference,
            "timings": {name: t.as_dict() for name, t in timings.items()},
            "speedup_executorch_over_pytorch":
                timings["pytorch"].median_seconds / timings["executorch"].median_seconds})
    return finish(record)


def _forwards(program, eager: torch.nn.Module, ids: torch.Tensor):
    """(program, eager) forwards over `ids`, each returning the last position's logits."""
    def prefill() -> torch.Tensor:
        return torch.from_numpy(program.forward(ids[0].tolist(), 0))

    def pytorch() -> torch.Tensor:
        with torch.inference_mode():
            return eager(input_ids=ids, use_cache=False).logits[0, -1]
    return prefill, pytorch
