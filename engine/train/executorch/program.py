"""The P-RGE training program: one ExecuTorch method that scores every perturbation copy of a batch.

    forward(input_ids, attention_mask, position_ids, targets, lora_copies) -> losses (copies,)

The program is the engine's own batched forward (engine.train.lora's LoRALinear, engine.train.objective's
losses) traced with the LoRA B copies read from the `lora_copies` input instead of the store, so it
computes exactly what the PyTorch backend computes. The copies are an input, not program state:
the runner keeps θ and draws the seeded directions itself (torch's generator, so a run resumes
exactly and matches the PyTorch backend), and the program stays a pure function any
inference runtime can call. The frozen LoRA-FA A matrices and the label token ids are constants
of the program. The sequence length (and, for SFT, the number of scored columns) is dynamic;
the number of copies and of rows is fixed.

The lowered `.pte` is cached in the run folder under a key of everything it depends on, so a
resumed run does not lower it again (minutes for a 135M model). The contract a phone-side runner
follows is in docs/executorch.md, "Training program and runner contract".
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from engine.api.config import TrainConfig
from engine.api.errors import UserError
from engine.files import partial_path
from engine.train import lora
from engine.train.objective import Batch, Objective

# Bump when the method's inputs, outputs or meaning change: older cached programs are rebuilt.
PROGRAM_VERSION = 1
# Shorter batches are left-padded to this by the runner: a dynamic dimension that may be 1 would
# be specialised by torch.export.
MIN_TOKENS = 2
FOLDER = "executorch"


@dataclass(frozen=True)
class ProgramSpec:
    """What a training program is specialised to (written beside it as JSON for runners)."""

    task: str  # classification | sft
    copies: int  # LoRA copies scored per call: 2q (prge dual), q (prge single), 1 (mezo)
    rows: int  # distinct examples per call (batch_size); the program tiles them per copy
    max_seq_len: int  # longest input_ids row
    lora_values: int  # values per copy in lora_copies (LoRAStore.size)
    label_ids: list[int]  # classification: the token scored for each label

    @classmethod
    def of(cls, objective: Objective, store: lora.LoRAStore, copies: int, rows: int,
           max_seq_len: int) -> ProgramSpec:
        label_ids = objective.label_ids
        return cls(task=objective.task, copies=copies, rows=rows, max_seq_len=max_seq_len,
                   lora_values=store.size, label_ids=[] if label_ids is None else label_ids.tolist())

    def input_shapes(self) -> dict[str, str]:
        targets = f"({self.rows},)" if self.task == "classification" else f"({self.rows}, K)"
        return {"input_ids": f"({self.rows}, T)", "attention_mask": f"({self.rows}, T)",
                "position_ids": f"({self.rows}, T)", "targets": targets,
                "lora_copies": f"({self.copies}, {self.lora_values})"}


class TrainingProgram(nn.Module):
    """The traced module: the engine's objective over the adapted model, LoRA copies as input."""

    def __init__(self, model: nn.Module, adapter: lora.Adapter, objective: Objective,
                 copies: int) -> None:
        super().__init__()
        self.model = _ColumnsAsPositions(model)
        self.adapter = adapter
        self.objective = objective
        self.copies = copies

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, targets: torch.Tensor,
                lora_copies: torch.Tensor) -> torch.Tensor:
        keep = 1 if self.objective.task == "classification" else targets.shape[1]
        batch = Batch(input_ids, attention_mask, position_ids, targets, keep, tokens=0)
        with _store_reads(self.adapter.store, lora_copies), lora.active_copies(self.adapter, self.copies):
            return self.objective.losses(self.model, batch, self.copies)


class _ColumnsAsPositions(nn.Module):
    """Passes `logits_to_keep` to the model as column positions instead of a count.

    Traced with a dynamic number of scored columns (SFT) the count is symbolic, and transformers
    takes anything that is not a Python int as an index (one column); positions are the other
    form it documents, and select the same columns.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int, **kwargs):
        width = input_ids.shape[1]
        columns = torch.arange(width - logits_to_keep, width, device=input_ids.device)
        return self.inner(input_ids=input_ids, logits_to_keep=columns, **kwargs)


@contextmanager
def _store_reads(store: lora.LoRAStore, copies: torch.Tensor) -> Iterator[None]:
    """The LoRA layers read their copies from `copies` (the program input) while tracing."""
    held = store.copies
    store.copies = copies
    try:
        yield
    finally:
        store.copies = held


def program_key(config: TrainConfig, model_folder: Path, spec: ProgramSpec) -> str:
    """A hash of everything the lowered program depends on."""
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                     for p in model_folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    values = {
        "version": PROGRAM_VERSION,
        "model": [str(model_folder.resolve()), weights],
        "lora": asdict(config.lora),
        "seed": config.seed,  # the frozen A matrices are drawn from it
        "optimizer": [config.optimizer.name, config.optimizer.q, config.optimizer.mode],
        "spec": asdict(spec),
        "runtime": [torch.__version__, metadata.version("executorch")],
    }
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def cached_program(run_dir: Path, key: str, program: TrainingProgram, spec: ProgramSpec,
                   say: Callable[[str], None]) -> Path:
    """The lowered program for `key` in `run_dir`: reused if there, else exported and written."""
    folder = run_dir / FOLDER
    path = folder / f"train-{key}.pte"
    if path.exists():
        say(f"ExecuTorch training program: reusing {path}")
        return path
    folder.mkdir(exist_ok=True)
    say("ExecuTorch training program: export and XNNPACK lowering (minutes for a 135M model)")
    started = time.perf_counter()
    try:
        lowered = lower(program, spec)
    except Exception as exc:  # torch.export / ExecuTorch refuse models in many ways
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"this model cannot be lowered to an ExecuTorch training program "
                        f"({type(exc).__name__}: {first_line}); train it with backend=pytorch") from exc
    for stale in folder.glob("train-*"):
        stale.unlink()
    path.with_suffix(".json").write_text(json.dumps(
        {"key": key, "version": PROGRAM_VERSION, **asdict(spec), "inputs": spec.input_shapes(),
         "lora_slots": {name: {"offset": offset, "shape": list(shape)}
                        for name, (offset, shape) in program.adapter.store.slots.items()}},
        indent=2) + "\n")
    # The .pte last and by rename: its presence is what marks the cache as complete.
    partial = partial_path(path)  # two runs may build it at once
    partial.write_bytes(lowered)
    partial.replace(path)
    say(f"ExecuTorch training program: {path} ({len(lowered) / 2**20:.1f} MiB) built in "
        f"{time.perf_counter() - started:.1f} s")
    return path


def lower(program: TrainingProgram, spec: ProgramSpec) -> bytes:
    """torch.export with a dynamic sequence length, XNNPACK lowering, serialised program bytes."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    tokens = min(8, spec.max_seq_len)
    ids = torch.zeros((spec.rows, tokens), dtype=torch.long)
    positions = torch.arange(tokens).expand(spec.rows, tokens).contiguous()
    dynamic_tokens = torch.export.Dim("tokens", min=MIN_TOKENS, max=spec.max_seq_len)
    if spec.task == "classification":
        targets = torch.zeros(spec.rows, dtype=torch.long)
        targets_shape = None
    else:
        targets = torch.zeros((spec.rows, 2), dtype=torch.long)
        targets_shape = {1: torch.export.Dim("scored", min=1, max=spec.max_seq_len - 1)}
    lora_copies = torch.zeros((spec.copies, spec.lora_values), dtype=torch.float32)
    example = (ids, torch.ones_like(ids), positions, targets, lora_copies)
    sequence = {1: dynamic_tokens}
    with torch.no_grad():
        exported = torch.export.export(
            program, example, strict=False,
            dynamic_shapes=(sequence, sequence, sequence, targets_shape, None))
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    return edge.to_executorch().buffer
