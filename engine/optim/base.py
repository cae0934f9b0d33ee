"""What every optimiser shares: the master weights, the step seeds, the perturbation directions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from engine.config import OptimizerConfig

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
    """Holds θ (the master copy of every trained tensor) and keeps the copies in sync with it.

    `tensors` maps names to parameters with a leading copy axis; θ has the shape of one copy.
    """

    def __init__(self, config: OptimizerConfig, tensors: dict[str, torch.nn.Parameter], seed: int):
        self.config = config
        self.tensors = tensors
        self.seed = seed
        self.theta = {name: t[0].detach().clone() for name, t in tensors.items()}
        self._z = {name: torch.empty_like(t) for name, t in self.theta.items()}
        device = next(iter(self.theta.values())).device
        self._generator = torch.Generator(device=device)

    def step(self, losses: LossFn, step: int) -> StepResult:
        raise NotImplementedError

    def directions(self, step: int, direction: int) -> Iterator[tuple[str, torch.Tensor]]:
        """z for one direction, tensor by tensor (in a scratch buffer reused every call)."""
        self._generator.manual_seed(direction_seed(self.seed, step, direction))
        for name, theta in self.theta.items():
            yield name, torch.randn(theta.shape, generator=self._generator, out=self._z[name])

    def set_copy(self, copy: int, step: int, direction: int, scale: float) -> None:
        """Copy `copy` of every tensor ← θ + scale · z_direction."""
        for name, z in self.directions(step, direction):
            torch.add(self.theta[name], z, alpha=scale, out=self.tensors[name].data[copy])

    def apply_projected_grads(self, step: int, grads: list[float]) -> None:
        """θ ← θ − lr · (1/q) Σ g_i z_i, then every copy ← θ."""
        q = len(grads)
        for i, g in enumerate(grads):
            for name, z in self.directions(step, i):
                self.theta[name].add_(z, alpha=-self.config.lr * g / q)
        self.broadcast()

    def broadcast(self) -> None:
        for name, tensor in self.tensors.items():
            tensor.data.copy_(self.theta[name].unsqueeze(0).expand_as(tensor))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"theta/{name}": t for name, t in self.theta.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, theta in self.theta.items():
            theta.copy_(state[f"theta/{name}"])
        self.broadcast()


def projected_grads(plus: torch.Tensor, minus: torch.Tensor, eps: float) -> list[float]:
    return ((plus.double() - minus.double()) / (2 * eps)).tolist()
