"""What every optimiser shares: the master weights, the step seeds, the perturbation directions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.config import OptimizerConfig
from engine.lora import LoRAStore

# losses(copies) → one mean loss per copy of the tiled batch, shape (copies,).
LossFn = Callable[[int], torch.Tensor]


@dataclass
class StepResult:
    loss: float  # mean loss of the step's batch at θ (± pairs averaged for zeroth-order)
    projected_grads: list[float] = field(default_factory=list)  # g_i per direction (ZO only)


def direction_seed(seed: int, step: int, direction: int) -> int:
    """A seed per (run, step, direction): any step's z can be regenerated without replay."""
    digest = hashlib.blake2b(f"{seed}:{step}:{direction}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class TrainedOptimizer:
    """Holds θ (the master copy of the adapter, flat) and keeps the store's copies in sync with it.

    `store.copies` is (copies, total); θ, z and every update are flat (total,) vectors, so each
    step costs a few whole-buffer operations per direction however many layers are adapted.
    """

    def __init__(self, config: OptimizerConfig, store: LoRAStore, seed: int):
        self.config = config
        self.store = store
        self.seed = seed
        self.theta = store.copies[0].detach().clone()
        self._z = torch.empty_like(self.theta)
        self._generator = torch.Generator(device=self.theta.device)

    def step(self, losses: LossFn, step: int) -> StepResult:
        raise NotImplementedError

    def direction(self, step: int, direction: int) -> torch.Tensor:
        """z for one direction (in a scratch buffer reused by every call)."""
        self._generator.manual_seed(direction_seed(self.seed, step, direction))
        return torch.randn(self.theta.shape, generator=self._generator, out=self._z)

    def perturb(self, copy: int, z: torch.Tensor, scale: float) -> None:
        """Copy `copy` of the adapter ← θ + scale · z."""
        torch.add(self.theta, z, alpha=scale, out=self.store.copies.data[copy])

    def update(self, directions: torch.Tensor, grads: list[float], unit: float) -> None:
        """θ ← θ − lr · (1/q) Σ g_i · unit · directions[i] (one GEMV), then every copy ← θ."""
        coefficients = torch.tensor(grads, dtype=self.theta.dtype, device=self.theta.device)
        self.theta.addmv_(directions.T, coefficients, alpha=-self.config.lr * unit / len(grads))
        self.broadcast()

    def broadcast(self) -> None:
        self.store.copies.data.copy_(self.theta.expand_as(self.store.copies))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"theta": self.theta}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.theta.copy_(state["theta"])
        self.broadcast()


def projected_grads(plus: torch.Tensor, minus: torch.Tensor, eps: float) -> list[float]:
    return ((plus.double() - minus.double()) / (2 * eps)).tolist()
