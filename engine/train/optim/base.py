"""What every optimiser shares: the master weights, the step seeds, the perturbation directions,
and the zeroth-order update (optionally normalised and with momentum)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.api.config import OptimizerConfig
from engine.train.distributed import World
from engine.train.lora import LoRAStore

# losses(copies) → one mean loss per copy of the tiled batch, shape (copies,). A worker that
# evaluates a block of the batch's rows (more workers than directions) returns its rows' part of
# that mean instead; World.gather_directions adds the parts up.
LossFn = Callable[[int], torch.Tensor]
# measured(z, out): out ← the direction z as a finite difference measured it (see PRGE).
MeasureFn = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class StepResult:
    loss: float  # mean loss of the step's batch at θ (± pairs averaged for two-sided estimates)
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

    def __init__(self, config: OptimizerConfig, store: LoRAStore, seed: int, world: World | None = None):
        self.config = config
        self.store = store
        self.seed = seed
        self.world = world or World()
        # The directions this worker evaluates: all of them when it works alone.
        self.share = self.world.directions(config.q)
        self.theta = store.copies[0].detach().clone()
        self._z = torch.empty_like(self.theta)
        self._generator = torch.Generator(device=self.theta.device)
        # Heavy-ball state: a flat vector like θ, kept only when momentum is on (it is checkpointed).
        self.velocity = torch.zeros_like(self.theta) if config.momentum else None

    def step(self, losses: LossFn, step: int, lr: float | None = None) -> StepResult:
        """One optimiser step at learning rate `lr` (the schedule's value; config.lr if None)."""
        raise NotImplementedError

    def direction(self, step: int, direction: int) -> torch.Tensor:
        """z for one direction (in a scratch buffer reused by every call)."""
        self._generator.manual_seed(direction_seed(self.seed, step, direction))
        if self.config.directions == "rademacher":
            return self._z.bernoulli_(0.5, generator=self._generator).mul_(2).sub_(1)
        return torch.randn(self.theta.shape, generator=self._generator, out=self._z)

    def perturb(self, copy: int, z: torch.Tensor, scale: float) -> None:
        """Copy `copy` of the adapter ← θ + scale · z."""
        torch.add(self.theta, z, alpha=scale, out=self.store.copies.data[copy])

    def update(self, directions: torch.Tensor, coefficients: list[float], unit: float, lr: float) -> None:
        """θ ← θ − lr · (1/n) Σ c_i · unit · directions[i] (one GEMV; through the velocity when
        momentum is on), then every copy ← θ. `unit` undoes the scale the directions were read
        back at (θ ± εz differences)."""
        c = torch.tensor(coefficients, dtype=self.theta.dtype, device=self.theta.device)
        if self.velocity is not None:
            self.apply_sum(torch.mv(directions.T, c).mul_(unit), len(coefficients), lr)
            return
        self.theta.addmv_(directions.T, c, alpha=-lr * unit / len(coefficients))
        self.broadcast()

    def update_from_seeds(self, step: int, coefficients: list[float], unit: float, lr: float,
                          measured: MeasureFn) -> None:
        """The update of a worker that evaluated only its share of the directions: every z is
        drawn again from its seed and turned into the difference the step measured
        (`measured`, the same arithmetic as reading it back from the copies of one worker),
        chunk by chunk in the copies buffer, which the broadcast ending the step rewrites
        anyway. When one chunk holds all q (two workers, dual mode) this is the very GEMV of a
        single worker's update."""
        rows, q = self.store.copies.data, len(coefficients)
        chunk = rows.shape[0]
        if chunk >= q:
            for i in range(q):
                measured(self.direction(step, i), rows[i])
            self.update(rows[:q], coefficients, unit, lr)
            return
        weighted_sum = torch.zeros_like(self.theta)
        for start in range(0, q, chunk):
            part = range(start, min(start + chunk, q))
            for row, i in enumerate(part):
                measured(self.direction(step, i), rows[row])
            c = torch.tensor(coefficients[part.start:part.stop], dtype=self.theta.dtype,
                             device=self.theta.device)
            weighted_sum.addmv_(rows[:len(part)].T, c, alpha=unit)
        self.apply_sum(weighted_sum, q, lr)

    def apply_sum(self, weighted_sum: torch.Tensor, n: int, lr: float) -> None:
        """θ ← θ − lr · weighted_sum / n for an estimate already summed over n directions."""
        if self.velocity is None:
            self.theta.add_(weighted_sum, alpha=-lr / n)
        else:
            # Dampened (1 − β): the same lr means the same step size as without momentum.
            beta = self.config.momentum
            self.velocity.mul_(beta).add_(weighted_sum, alpha=(1 - beta) / n)
            self.theta.add_(self.velocity, alpha=-lr)
        self.broadcast()

    def broadcast(self) -> None:
        self.store.copies.data.copy_(self.theta.expand_as(self.store.copies))

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"theta": self.theta}
        if self.velocity is not None:
            state["velocity"] = self.velocity
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.theta.copy_(state["theta"])
        if self.velocity is not None and "velocity" in state:
            self.velocity.copy_(state["velocity"])
        self.broadcast()


def coefficients(differences: torch.Tensor, perturbed: torch.Tensor, config: OptimizerConfig) -> list[float]:
    """Each direction's weight in the gradient estimate, from its loss difference d_i
    (L(θ+εz_i) − L(θ) one-sided, half of L(θ+εz_i) − L(θ−εz_i) two-sided).

    Plain: d_i / ε, the projected gradient. With loss-std normalisation (FZOO) d_i is divided by
    the spread of the step's perturbed losses instead: the step no longer follows the loss scale
    (large while far from a basin, small near one) and ε drops out of the step size.
    """
    differences = differences.double()
    if config.normalize == "loss-std":
        spread = float(perturbed.double().std(unbiased=False))
        # Equal losses carry no information about the direction: no step.
        return (differences / spread).tolist() if spread > 0 else [0.0] * len(differences)
    return (differences / config.eps).tolist()
