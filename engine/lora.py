"""LoRA with perturbation copies: the batched forward that P-RGE needs and peft lacks.

Every adapted linear layer keeps `copies` versions of its trained tensors along a leading axis.
The input batch is the minibatch tiled `copies` times (copy-major: rows [c*b:(c+1)*b] belong to
copy c), so one forward pass evaluates every perturbed adapter:

    y = base(x)                                    one dense GEMM over the whole tiled batch
    h = x @ A.T                                    LoRA-FA: A shared, (copies*b, L, r)
    y += scale * bmm(h.view(copies, b*L, r), B^T)  each copy uses its own B

With variant "lora" A is trained too and also has a copy axis. peft stays the source of truth
for the on-disk format: `save_peft_adapter` writes what `PeftModel.from_pretrained` loads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from engine.config import LoraConfig
from engine.errors import UserError


class LoRALinear(nn.Module):
    """A frozen linear layer plus a low-rank update with `copies` trainable versions."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        train_a: bool,
        copies: int,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.train_a = train_a
        weight = base.weight
        a = torch.empty(rank, base.in_features, dtype=torch.float32)
        # peft's default A init (kaiming-uniform, a=sqrt(5)), drawn from our own generator so the
        # adapter is a function of the seed alone.
        bound = 1.0 / math.sqrt(base.in_features)
        a.uniform_(-bound, bound, generator=generator)
        a = a.to(device=weight.device, dtype=weight.dtype)
        if train_a:
            a = a.unsqueeze(0).repeat(copies, 1, 1)
        self.lora_A = nn.Parameter(a, requires_grad=False)
        self.lora_B = nn.Parameter(
            torch.zeros(copies, base.out_features, rank, device=weight.device, dtype=weight.dtype),
            requires_grad=False,
        )
        self.active_copies = 1

    @property
    def copies(self) -> int:
        return self.lora_B.shape[0]

    def trained(self) -> dict[str, nn.Parameter]:
        """The tensors the optimiser perturbs and updates, each with a leading copy axis."""
        return {"lora_A": self.lora_A, "lora_B": self.lora_B} if self.train_a else {"lora_B": self.lora_B}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        n = self.active_copies
        rows = x.shape[0]
        if rows % n:
            raise ValueError(f"batch of {rows} rows does not split into {n} copies")
        if self.train_a:
            h = torch.bmm(x.reshape(n, -1, x.shape[-1]), self.lora_A[:n].transpose(1, 2))
        else:
            h = (x @ self.lora_A.T).reshape(n, -1, self.lora_A.shape[0])
        delta = torch.bmm(h, self.lora_B[:n].transpose(1, 2))
        # In place: the base output is a fresh tensor that linear's backward does not need.
        return y.add_(delta.view(y.shape), alpha=self.scale)


def inject(model: nn.Module, config: LoraConfig, copies: int, seed: int) -> dict[str, LoRALinear]:
    """Replace every targeted nn.Linear with a LoRALinear; return them by module name."""
    for param in model.parameters():
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    layers: dict[str, LoRALinear] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name.split(".")[-1] not in config.targets:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = LoRALinear(
            module, config.rank, config.alpha, config.variant == "lora", copies, generator
        )
        setattr(parent, child, layer)
        layers[name] = layer
    if not layers:
        available = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(
            f"lora.targets {config.targets} match no linear layer of this model; "
            f"available: {', '.join(available)}"
        )
    return layers


def trained_tensors(layers: dict[str, LoRALinear]) -> dict[str, nn.Parameter]:
    """Every trained tensor by a stable name (`<module>.lora_B`), in a fixed order."""
    return {
        f"{name}.{key}": tensor for name, layer in layers.items() for key, tensor in layer.trained().items()
    }


@contextmanager
def active_copies(layers: dict[str, LoRALinear], n: int) -> Iterator[None]:
    """Run forwards with the first `n` copies (the batch must be tiled n times)."""
    previous = next(iter(layers.values())).active_copies
    for layer in layers.values():
        layer.active_copies = n
    try:
        yield
    finally:
        for layer in layers.values():
            layer.active_copies = previous


def adapter_weights(layers: dict[str, LoRALinear], theta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained adapter as peft names it: `base_model.model.<module>.lora_A/B.weight`."""
    state = {}
    for name, layer in layers.items():
        a = theta.get(f"{name}.lora_A", layer.lora_A)
        b = theta[f"{name}.lora_B"]
        state[f"base_model.model.{name}.lora_A.weight"] = a.detach().float().cpu().contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = b.detach().float().cpu().contiguous()
    return state


def save_peft_adapter(
    directory: Path,
    layers: dict[str, LoRALinear],
    theta: dict[str, torch.Tensor],
    config: LoraConfig,
    base_model: str,
) -> None:
    """Write adapter_config.json + adapter_model.safetensors in the PEFT format."""
    from peft import LoraConfig as PeftLoraConfig

    directory.mkdir(parents=True, exist_ok=True)
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=sorted({name.split(".")[-1] for name in layers}),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )
    peft_config.save_pretrained(str(directory))
    save_file(adapter_weights(layers, theta), str(directory / "adapter_model.safetensors"))
    meta = {"variant": config.variant, "trained": "A and B" if config.variant == "lora" else "B only"}
    (directory / "edgetune_adapter.json").write_text(json.dumps(meta, indent=2))
