"""LoRA with perturbation copies: the batched forward that P-RGE needs and peft lacks.

Every adapted linear layer keeps `copies` versions of its trained tensors along a leading axis
(views into one flat LoRAStore).
The input batch is the minibatch tiled `copies` times (copy-major: rows [c*b:(c+1)*b] belong to
copy c), so one forward pass evaluates every perturbed adapter:

    y = base(x)                                    one dense GEMM over the whole tiled batch
    h = x @ A.T                                    LoRA-FA: A shared, (copies*b, L, r)
    y += scale * bmm(h.view(copies, b*L, r), B^T)  each copy uses its own B (one baddbmm)

With LoRA-FA, layers that read the same input (q/k/v, gate/up) compute their `x @ A.T` as one
GEMM over their stacked A (SharedDown): at rank 8 each is a tiny, overhead-bound kernel.

With variant "lora" A is trained too and also has a copy axis. peft stays the source of truth
for the on-disk format: `save_peft_adapter` writes what `PeftModel.from_pretrained` loads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from engine.api.config import LoraConfig
from engine.api.errors import UserError


class LoRAStore:
    """Every trained LoRA tensor of a model as a view into one flat (copies, total) buffer.

    Copy-major layout: `copies[c]` is the whole adapter of copy c, so perturbing a copy, updating
    θ and broadcasting it are a handful of whole-buffer operations per step instead of a few per
    layer (hundreds of small kernel launches on a 30-layer model).
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], copies: int, device, dtype) -> None:
        self.slots: dict[str, tuple[int, tuple[int, ...]]] = {}
        offset = 0
        for name, shape in shapes.items():
            self.slots[name] = (offset, shape)
            offset += math.prod(shape)
        self.copies = torch.zeros(copies, offset, device=device, dtype=dtype)

    @property
    def size(self) -> int:
        return self.copies.shape[1]

    def view(self, name: str, flat: torch.Tensor | None = None) -> torch.Tensor:
        """`name`'s tensor in `flat` ((copies, total) → (copies, *shape); (total,) → shape)."""
        flat = self.copies if flat is None else flat
        offset, shape = self.slots[name]
        part = flat[..., offset : offset + math.prod(shape)]
        return part.view(*flat.shape[:-1], *shape)

    def named(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: self.view(name, flat) for name in self.slots}


# Projections that read one input tensor in the architectures we train (Llama, Qwen, Mistral,
# Gemma, SmolLM). SharedDown checks the input's identity on every call, so a model that feeds
# them different tensors stays correct and only loses the fusion.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class SharedDown:
    """LoRA-FA's `x @ A.T` for sibling layers: one GEMM over their stacked A, sliced per layer.

    The first sibling called with an input computes the product for all of them; the others take
    their slice while the input is the same tensor. The cache is dropped once every sibling has
    taken its slice, so no activation outlives its forward.
    """

    def __init__(self, stacked_a: torch.Tensor, parts: list[slice]) -> None:
        self.stacked_a = stacked_a
        self.parts = parts
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._waiting: set[int] = set()

    def __call__(self, x: torch.Tensor, member: int) -> torch.Tensor:
        # Identity, not a version counter: inference tensors have none, and a module's input is
        # not modified in place between its sibling projections.
        if x is not self._input or member not in self._waiting:
            self._input, self._output = x, x @ self.stacked_a.T
            self._waiting = set(range(len(self.parts)))
        out = self._output[..., self.parts[member]]
        self._waiting.discard(member)
        if not self._waiting:
            self._input = self._output = None
        return out


class LoRALinear(nn.Module):
    """A frozen linear layer plus a low-rank update whose trained tensors live in a LoRAStore."""

    def __init__(self, base: nn.Linear, name: str, rank: int, alpha: float, train_a: bool,
                 a_init: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.scale = alpha / rank
        self.train_a = train_a
        self.store: LoRAStore | None = None
        # LoRA-FA: A is frozen and shared by all copies; full LoRA: A is trained (in the store).
        self.register_buffer("frozen_a", None if train_a else a_init, persistent=False)
        self.active_copies = 1
        self.shared_down: tuple[SharedDown, int] | None = None  # (siblings' GEMM, my part)

    @property
    def a_key(self) -> str:
        return f"{self.name}.lora_A"

    @property
    def b_key(self) -> str:
        return f"{self.name}.lora_B"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        n = self.active_copies
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} copies")
        # The store is float32 whatever the base's dtype; the matmuls run in the base's.
        b = self.store.view(self.b_key)[:n].to(x.dtype)
        if self.train_a:
            a = self.store.view(self.a_key)[:n].to(x.dtype)
            h = torch.bmm(x.reshape(n, -1, x.shape[-1]), a.transpose(1, 2))
        else:
            h = x @ self.frozen_a.T if self.shared_down is None else self.shared_down[0](
                x, self.shared_down[1])
            h = h.reshape(n, -1, h.shape[-1])
        # In place: the base output is a fresh tensor that linear's backward does not need.
        y.view(n, -1, y.shape[-1]).baddbmm_(h, b.transpose(1, 2), alpha=self.scale)
        return y


# A decoder block of the architectures we train: `…layers.<index>` (Llama, Qwen, Gemma, SmolLM).
_BLOCK = re.compile(r"^(?:.*\.)?layers\.(\d+)$")


def decoder_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's decoder blocks in order, (name, module); empty when its layout is unknown."""
    found = [(int(m.group(1)), name, module) for name, module in model.named_modules()
             if (m := _BLOCK.match(name))]
    return [(name, module) for _, name, module in sorted(found, key=lambda f: f[0])]


class SharedPrefix:
    """Runs the blocks below the first adapted one over the b distinct rows once, then tiles the
    hidden state for the perturbation copies: below that block every copy computes the same
    thing, so a step pays for 2q copies only where the adapters are.

    A forward pre-hook on every block from the first adapted one: there it repeats the hidden
    state `copies` times (copy-major, as the tiled batch would be), and from there on it repeats
    the per-row inputs the model hands each block (mask, rotary embeddings, positions), which the
    model computed for the untiled batch. `copies` stays 1 (no tiling) unless the caller passes
    the untiled batch (`active_copies(..., untiled_input=True)`).
    """

    def __init__(self, blocks: list[nn.Module], first: int) -> None:
        self.copies = 1
        self._rows = 0
        self._handles = [block.register_forward_pre_hook(self._first, with_kwargs=True)
                         for block in blocks[first:first + 1]]
        self._handles += [block.register_forward_pre_hook(self._rest, with_kwargs=True)
                          for block in blocks[first + 1:]]

    def _first(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self._rows = hidden.shape[0] if self.copies > 1 else 0
        return self._rest(module, args, kwargs)

    def _rest(self, module, args, kwargs):
        rows, n = self._rows, self.copies
        if not rows or n == 1:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[0] == rows:
            hidden = hidden.repeat(n, *[1] * (hidden.dim() - 1))
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs["hidden_states"] = hidden
        kwargs = {key: self._tile(value, rows, n) for key, value in kwargs.items()}
        return args, kwargs

    @staticmethod
    def _tile(value, rows: int, n: int):
        # Batch-1 inputs broadcast over the copies as they are.
        if isinstance(value, tuple):
            return tuple(SharedPrefix._tile(v, rows, n) for v in value)
        if torch.is_tensor(value) and value.dim() >= 2 and value.shape[0] == rows and rows > 1:
            return value.repeat(n, *[1] * (value.dim() - 1))
        return value


@dataclass
class Adapter:
    """The injected LoRA layers and the store holding their trained tensors."""

    layers: dict[str, LoRALinear]
    store: LoRAStore
    # Present when the model's decoder blocks are known: the caller may then pass the untiled
    # batch and the model tiles it at the first adapted block.
    shared_prefix: SharedPrefix | None = None

    def frozen(self) -> dict[str, torch.Tensor]:
        return {layer.a_key: layer.frozen_a for layer in self.layers.values() if not layer.train_a}


def inject(model: nn.Module, config: LoraConfig, copies: int, seed: int) -> Adapter:
    """Replace every targeted nn.Linear with a LoRALinear sharing one store of `copies` copies."""
    for param in model.parameters():
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    train_a = config.variant == "lora"
    blocks = decoder_blocks(model)
    block_index = {name: i for i, (name, _) in enumerate(blocks)}
    if config.top_layers and not blocks:
        raise UserError("lora.top_layers is set but this model's decoder layers could not be found "
                        "(no `layers.<n>` modules); set lora.top_layers=0")
    lowest = max(len(blocks) - config.top_layers, 0) if config.top_layers else 0
    layers: dict[str, LoRALinear] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    a_inits: dict[str, torch.Tensor] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name.split(".")[-1] not in config.targets:
            continue
        if _block_of(name, block_index) < lowest:
            continue
        # peft's default A init (kaiming-uniform, a=sqrt(5)), drawn from our own generator so the
        # adapter is a function of the seed alone.
        bound = 1.0 / math.sqrt(module.in_features)
        a = torch.empty(config.rank, module.in_features).uniform_(-bound, bound, generator=generator)
        a = a.to(device=module.weight.device, dtype=module.weight.dtype)
        layer = LoRALinear(module, name, config.rank, config.alpha, train_a, a)
        if train_a:
            shapes[layer.a_key] = tuple(a.shape)
            a_inits[layer.a_key] = a
        shapes[layer.b_key] = (module.out_features, config.rank)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        layers[name] = layer
    if not layers:
        available = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(
            f"lora.targets {config.targets} match no linear layer of this model; "
            f"available: {', '.join(available)}"
        )
    weight = next(iter(layers.values())).base.weight
    # θ, the perturbations and the update stay float32 on a bfloat16/float16 base: with 8 mantissa
    # bits a step of lr·g·z below θ's resolution would round away and training would stall.
    store = LoRAStore(shapes, copies, weight.device, torch.float32)
    for key, a in a_inits.items():
        store.view(key).copy_(a.expand_as(store.view(key)))
    for layer in layers.values():
        layer.store = store
    if not train_a:
        _share_down_projections(layers)
    adapted = [_block_of(name, block_index) for name in layers]
    prefix = None
    if blocks and all(i >= 0 for i in adapted):
        prefix = SharedPrefix([module for _, module in blocks], min(adapted))
    return Adapter(layers, store, prefix)


def _block_of(name: str, block_index: dict[str, int]) -> int:
    """Index of the decoder block holding module `name` (−1 when it sits in none)."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        index = block_index.get(".".join(parts[:end]))
        if index is not None:
            return index
    return -1


def _share_down_projections(layers: dict[str, LoRALinear]) -> None:
    """Give each group of adapted siblings (same parent, same input width) one SharedDown."""
    for names in SIBLINGS:
        groups: dict[tuple[str, int], list[LoRALinear]] = {}
        for name, layer in layers.items():
            parent, _, child = name.rpartition(".")
            if child in names:
                groups.setdefault((parent, layer.base.in_features), []).append(layer)
        for members in groups.values():
            if len(members) < 2:
                continue
            stacked = torch.cat([m.frozen_a for m in members])
            ranks = [m.frozen_a.shape[0] for m in members]
            starts = [sum(ranks[:i]) for i in range(len(ranks))]
            parts = [slice(start, start + rank) for start, rank in zip(starts, ranks, strict=True)]
            shared = SharedDown(stacked, parts)
            for index, member in enumerate(members):
                # A view into the stacked A, so the adapter saved to disk is the one used.
                member.frozen_a = stacked[parts[index]]
                member.shared_down = (shared, index)


@contextmanager
def active_copies(adapter: Adapter, n: int, untiled_input: bool = False) -> Iterator[None]:
    """Run forwards with the first `n` copies. The batch is tiled n times by the caller, or, with
    `untiled_input` (only where `adapter.shared_prefix` exists), by the model at its first
    adapted block."""
    layers = adapter.layers.values()
    previous = next(iter(layers)).active_copies
    for layer in layers:
        layer.active_copies = n
    if untiled_input:
        adapter.shared_prefix.copies = n
    try:
        yield
    finally:
        for layer in layers:
            layer.active_copies = previous
        if untiled_input:
            adapter.shared_prefix.copies = 1


def adapter_weights(adapter: Adapter, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """The adapter θ as peft names it: `base_model.model.<module>.lora_A/B.weight`."""
    named = {**adapter.frozen(), **adapter.store.named(theta)}
    state = {}
    for name, layer in adapter.layers.items():
        a, b = named[layer.a_key], named[layer.b_key]
        state[f"base_model.model.{name}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    return state


def save_peft_adapter(
    directory: Path,
    adapter: Adapter,
    theta: torch.Tensor,
    config: LoraConfig,
    base_model: str,
) -> None:
    """Write adapter_config.json + adapter_model.safetensors in the PEFT format."""
    from peft import LoraConfig as PeftLoraConfig

    directory.mkdir(parents=True, exist_ok=True)
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=sorted({name.split(".")[-1] for name in adapter.layers}),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )
    peft_config.save_pretrained(str(directory))
    save_file(adapter_weights(adapter, theta), str(directory / "adapter_model.safetensors"))
    meta = {"variant": config.variant, "trained": "A and B" if config.variant == "lora" else "B only"}
    (directory / "edgetune_adapter.json").write_text(json.dumps(meta, indent=2))
