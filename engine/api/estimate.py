"""Pre-flight estimate of a run's peak memory, and the settings that would fit a budget.

peak = runtime + weights + adapter (copies, θ, z, optimiser state) + activations of the widest
pass. What holds the activations was measured on this project's CPU path (docs/benchmarks.md,
section 3): a plain forward holds one block's MLP at a time (its input, the normalised input,
the gate activation, the up projection and their product: 2H + 3I values per token); SDPA on
the CPU runs flash attention, so no (rows, heads, L, L) score matrix exists, forward or
backward. First-order LoRA keeps, per token and block, what autograd saves with a frozen base
(counted with saved_tensors_hooks at Llama-3.2-1B's and Gemma-3-270M's widths): each RMSNorm's
input (float32 whatever the base dtype), the attention's rotated q and k, its v and its output,
and the MLP's gate, activation and up projection. glibc's heap keeps the holes between those
saved tensors (each is under its 32 MiB mmap threshold at b=1): measured as half the saved
bytes again on SmolLM2-135M at 64-512 tokens. A Python process with torch 2.13, transformers
5.x, peft and the engine imported holds about 440 MiB before any weights (SmolLM2-135M's
measured peaks at 64 tokens, less its weights, adapter and activations: 435-438 MiB).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.api import workers
from engine.api.config import TrainConfig

RUNTIME_BYTES = 440 * 2**20
# Bytes per activation value; int8 keeps float32 activations (weight-only quantisation).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 4}
# Per token, in units of hidden (H) and MLP (I) widths: what one block's forward holds at its
# peak, the MLP's (inference; the attention's, 2H + 4 query widths + 2 key widths, is smaller
# in every model we train).
INFERENCE_PER_TOKEN = (2, 3)
# glibc's heap holes between the tensors autograd saves, as a share of their bytes (fo).
SAVED_HEAP_OVERHEAD = 0.5


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that memory depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    # RMSNorms per block, and whether q and k are normalised per head (Gemma 3: 4 and yes;
    # Gemma 2: 4 and no; Llama, Qwen, SmolLM: 2 and no): each norm's input is saved for backprop.
    norms_per_layer: int = 2
    qk_norm: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        text = config.get("text_config") or config
        hidden = text["hidden_size"]
        heads = text["num_attention_heads"]
        family = str(text.get("model_type") or config.get("model_type") or "")
        return cls(
            hidden=hidden,
            intermediate=text.get("intermediate_size", 4 * hidden),
            layers=text["num_hidden_layers"],
            heads=heads,
            kv_heads=text.get("num_key_value_heads") or heads,
            head_dim=text.get("head_dim") or hidden // heads,
            vocab=text["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))),
            norms_per_layer=4 if family.startswith(("gemma2", "gemma3")) else 2,
            qk_norm=family.startswith("gemma3"),
        )

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each adaptable projection of one layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def saved_per_token(self, size: int) -> int:
        """Bytes autograd saves per token in one block for first-order LoRA on a frozen base."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        values = 2 * q + 2 * kv + 3 * self.intermediate + ((q + kv) if self.qk_norm else 0)
        return self.norms_per_layer * self.hidden * 4 + values * size

    def parameters(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.linear_parameters() + self.layers * 2 * self.hidden + self.hidden

    def linear_parameters(self) -> int:
        """The decoder blocks' projections: what an int8 base stores in one byte each."""
        return self.layers * sum(i * o for i, o in self.projection_shapes().values())

    def weights_bytes(self, dtype: str) -> int:
        if dtype == "int8":
            # engine.model.loading.quantize_int8: the projections, the embedding and the output
            # head (one table when tied) in one byte per weight plus a float32 scale per output
            # row; the norms stay float32.
            tables = self.vocab * (1 if self.tied_embeddings else 2)
            rows = self.layers * sum(o for _, o in self.projection_shapes().values()) + tables
            quantized = self.linear_parameters() + tables * self.hidden
            return quantized + 4 * rows + 4 * (self.parameters() - quantized)
        return self.parameters() * DTYPE_BYTES.get(dtype, 4)


@dataclass(frozen=True)
class Estimate:
    runtime_bytes: int
    weights_bytes: int
    adapter_bytes: int
    activations_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self) -> int:
        return (self.runtime_bytes + self.weights_bytes + self.adapter_bytes
                + self.activations_bytes + self.optimizer_bytes)

    def describe(self) -> str:
        gib = lambda n: f"{n / 2**30:.2f} GiB"
        return (f"estimated peak memory {gib(self.total_bytes)} (runtime {gib(self.runtime_bytes)}, "
                f"weights {gib(self.weights_bytes)}, LoRA {gib(self.adapter_bytes)}, activations "
                f"{gib(self.activations_bytes)}, optimiser {gib(self.optimizer_bytes)})")

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


def lora_parameters(shape: Shape, config: TrainConfig) -> int:
    total = 0
    for name, (fan_in, fan_out) in shape.projection_shapes().items():
        if name in config.lora.targets:
            total += config.lora.rank * (fan_out + (fan_in if config.lora.variant == "lora" else 0))
    adapted = min(config.lora.top_layers, shape.layers) if config.lora.top_layers else shape.layers
    return total * adapted


def copies(config: TrainConfig) -> int:
    opt = config.optimizer
    if opt.name == "prge":
        if opt.estimator == "one-sided":
            return opt.q + 1
        return 2 * opt.q if opt.mode == "dual" else opt.q
    return 1


def forward_bytes(shape: Shape, rows: int, config: TrainConfig, size: int,
                  scored_tokens: int | None = None) -> int:
    """What one inference forward over `rows` rows holds at its peak: one block's MLP (no
    attention scores: the CPU's SDPA is flash attention) and the logits of the kept columns."""
    length = config.max_seq_len
    if config.task == "sft":
        # Logits of the scored columns (+1 for the shift), the copy that reshaping the shifted
        # view makes, and log-softmax's output: three (rows, columns, vocab) float32 tensors.
        # Without the data's completion lengths, every column of the row may be scored.
        logits = 3 * rows * (min(scored_tokens or length, length - 1) + 1) * shape.vocab * 4
    else:
        logits = rows * shape.vocab * 8
    hidden_coef, mlp_coef = INFERENCE_PER_TOKEN
    per_token = (hidden_coef * shape.hidden + mlp_coef * shape.intermediate) * size
    return rows * length * per_token + logits


def scored_columns(longest_completion_tokens: int | None, max_seq_len: int) -> int | None:
    """The columns the widest SFT batch scores: the longest completion in tokens and its EOS,
    cut as Objective.encode cuts; None (every column may be) when the longest is not known.
    The trainer's pre-flight check and the window's memory bar both size SFT runs with it."""
    if longest_completion_tokens is None:
        return None
    return min(longest_completion_tokens + 1, max_seq_len - 1)


def estimate(shape: Shape, config: TrainConfig, dtype: str = "float32",
             scored_tokens: int | None = None, eval_rows: int = 16) -> Estimate:
    """Peak memory of a run. `config.task` must be resolved (auto counts as classification);
    `scored_tokens` is the longest completion in tokens (SFT; None: max_seq_len); `eval_rows`
    is the evaluation batch (engine.train.trainer.EVAL_BATCH_ROWS), whose pass can be the widest."""
    size = DTYPE_BYTES.get(dtype, 4)
    rows = copies(config) * config.batch_size
    activations = forward_bytes(shape, rows, config, size, scored_tokens)
    lora = lora_parameters(shape, config)
    if config.optimizer.name == "fo":
        tokens = rows * config.max_seq_len
        saved = shape.layers * tokens * shape.saved_per_token(size)
        activations += round(saved * (1 + SAVED_HEAP_OVERHEAD))
        # weights copy, θ, gradient, two AdamW moments
        adapter, optimizer = 2 * lora * size, 3 * lora * 4
    else:
        # the copies, θ and one direction's z (float32 whatever the base dtype), and the
        # momentum vector when it is on
        adapter = (copies(config) + 2) * lora * 4
        optimizer = lora * 4 if config.optimizer.momentum else 0
    activations = max(activations, forward_bytes(shape, eval_rows, config, size, scored_tokens))
    return Estimate(RUNTIME_BYTES, shape.weights_bytes(dtype), adapter, activations, optimizer)


def inference(shape: Shape, rows: int, config: TrainConfig, dtype: str = "float32") -> Estimate:
    """Peak memory of plain forwards over `rows` rows of `config.max_seq_len` tokens, no adapter:
    the floor every optimiser's peak is compared with."""
    activations = forward_bytes(shape, rows, config, DTYPE_BYTES.get(dtype, 4))
    return Estimate(RUNTIME_BYTES, shape.weights_bytes(dtype), 0, activations, 0)


def fits(shape: Shape, config: TrainConfig, budget_bytes: int, dtype: str = "float32",
         scored_tokens: int | None = None) -> bool:
    return estimate(shape, config, dtype, scored_tokens).total_bytes <= budget_bytes


def suggest(shape: Shape, config: TrainConfig, budget_bytes: int, dtype: str = "float32",
            scored_tokens: int | None = None) -> list[str]:
    """Single changes (as key=value) that bring the estimate under the budget, cheapest first."""
    candidates: list[tuple[str, TrainConfig]] = []
    opt = config.optimizer
    if opt.name == "fo":
        # Forward passes only: no layer's activations kept for a backward pass.
        candidates.append(("optimizer.name=prge", replaced(config, optimizer={"name": "prge"})))
    if opt.name == "prge" and opt.mode == "dual":
        candidates.append(("optimizer.mode=single", replaced(config, optimizer={"mode": "single"})))
    for q in (opt.q // 2, opt.q // 4, 1):
        if 1 <= q < opt.q:
            candidates.append((f"optimizer.q={q}", replaced(config, optimizer={"q": q})))
    for b in (config.batch_size // 2, 1):
        if 1 <= b < config.batch_size:
            candidates.append((f"batch_size={b}", replaced(config, batch_size=b)))
    for length in (config.max_seq_len // 2, config.max_seq_len // 4):
        if length >= 8:
            candidates.append((f"max_seq_len={length}", replaced(config, max_seq_len=length)))
    seen, result = set(), []
    for text, candidate in candidates:
        if text not in seen and fits(shape, candidate, budget_bytes, dtype, scored_tokens):
            seen.add(text)
            result.append(text)
    return result


def replaced(config: TrainConfig, optimizer: dict | None = None, **fields: Any) -> TrainConfig:
    """`config` with some fields changed, the optimizer's given as a dict of its own fields."""
    new_optimizer = dataclasses.replace(config.optimizer, **(optimizer or {}))
    return dataclasses.replace(config, optimizer=new_optimizer, **fields)


def per_worker(shape: Shape, config: TrainConfig, dtype: str = "float32",
               scored_tokens: int | None = None, eval_rows: int = 16) -> list[Estimate]:
    """One estimate per worker of `config.workers` (one for a single process): each worker is a
    process with its own runtime and copy of the model, and it evaluates only its share of the
    step (engine/api/workers.py): the copies of its directions, on its rows of the batch."""
    q, size = config.optimizer.q, config.workers
    return [estimate(shape, replaced(config, optimizer={"q": len(workers.directions(q, r, size))},
                                     batch_size=len(workers.rows(q, config.batch_size, r, size))),
                     dtype, scored_tokens, eval_rows)
            for r in range(size)]


def describe_workers(estimates: list[Estimate]) -> str:
    """The estimate line of a run: per worker (the largest) and in total for several."""
    largest = max(estimates, key=lambda e: e.total_bytes)
    if len(estimates) == 1:
        return largest.describe()
    total = sum(e.total_bytes for e in estimates)
    return (f"{largest.describe()} per worker; {len(estimates)} workers, each with its own copy "
            f"of the model: {total / 2**30:.2f} GiB in total")
