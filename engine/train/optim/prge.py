"""P-RGE: all perturbed forward passes of a step batched into one (or two, in single mode)."""

from __future__ import annotations

import torch

from engine.api.config import OptimizerConfig
from engine.train.distributed import World
from engine.train.lora import LoRAStore
from engine.train.optim.base import LossFn, StepResult, TrainedOptimizer, coefficients


class PRGE(TrainedOptimizer):
    """Two-sided: copies [0:n] hold θ + εz_i and, in dual mode, copies [n:2n] hold θ − εz_i,
    for the n directions this worker evaluates (all q when it works alone).
    One-sided (FZOO's shape): copy 0 holds θ itself and copies [1:n+1] hold θ + εz_i, so a pass
    of 2q copies measures 2q − 1 directions against one shared L(θ) instead of q.

    Each z_i is drawn once per step. The update reads the directions back from the copies
    instead of drawing them again: the copies are rewritten by the broadcast that ends the step
    anyway, and the difference of the two evaluated points is the direction the finite
    difference actually measured (θ ± εz rounded to the store's dtype), not merely close to it.
    A worker holding only its share gathers every worker's losses and redraws the other
    directions from their seeds with that same arithmetic (update_from_seeds). With more workers
    than directions a worker holds one direction and its losses are over its rows of the batch:
    the gather adds its group's parts into the batch's losses.
    """

    def __init__(self, config: OptimizerConfig, store: LoRAStore, seed: int, world: World | None = None):
        super().__init__(config, store, seed, world)
        # θ − εz of a redrawn direction: only a worker holding a share of the directions needs it.
        self._point = torch.empty_like(self.theta) if len(self.share) < config.q else None

    def step(self, losses: LossFn, step: int, lr: float | None = None) -> StepResult:
        lr = self.config.lr if lr is None else lr
        if self.config.estimator == "one-sided":
            return self._one_sided(losses, step, lr)
        q, eps = self.config.q, self.config.eps
        copies = self.store.copies.data
        dual = self.config.mode == "dual"
        n = len(self.share)
        for k, i in enumerate(self.share):
            z = self.direction(step, i)
            self.perturb(k, z, eps)
            if dual:
                self.perturb(n + k, z, -eps)
        if dual:
            both = losses(2 * n)
            plus, minus = both[:n], both[n:]
        else:
            plus = losses(n)
            # θ − εz_i as the reflection of θ + εz_i through θ: no second draw.
            copies[:n].mul_(-1).add_(self.theta, alpha=2)
            minus = losses(n)
        plus, minus = self.world.gather_directions(torch.stack([plus, minus]), q)
        grads = coefficients((plus.double() - minus.double()) / 2, torch.cat([plus, minus]), self.config)
        if n < q:
            self.update_from_seeds(step, grads, 1 / (2 * eps) if dual else 1 / eps, lr,
                                   self._measured_dual if dual else self._measured_single)
        elif dual:
            self.update(copies[:q].sub_(copies[q:2 * q]), grads, 1 / (2 * eps), lr)
        else:
            self.update(torch.sub(self.theta, copies[:q], out=copies[:q]), grads, 1 / eps, lr)
        return StepResult(loss=float((plus + minus).mean() / 2), projected_grads=grads)

    def _one_sided(self, losses: LossFn, step: int, lr: float) -> StepResult:
        q, eps = self.config.q, self.config.eps
        copies = self.store.copies.data
        n = len(self.share)
        # Copy 0 already holds θ (every step ends with a broadcast).
        for k, i in enumerate(self.share):
            self.perturb(1 + k, self.direction(step, i), eps)
        both = losses(n + 1)
        # Each direction is measured against the L(θ) of its own worker's pass.
        perturbed, center = self.world.gather_directions(torch.stack([both[1:], both[0].expand(n)]), q)
        grads = coefficients(perturbed.double() - center.double(), perturbed, self.config)
        if n < q:
            self.update_from_seeds(step, grads, 1 / eps, lr, self._measured_one_sided)
        else:
            self.update(copies[1:q + 1].sub_(self.theta), grads, 1 / eps, lr)
        return StepResult(loss=float(center[0]), projected_grads=grads)

    # The directions as one worker reads them back from its copies, rebuilt from z.
    def _measured_dual(self, z: torch.Tensor, out: torch.Tensor) -> None:
        eps = self.config.eps
        torch.add(self.theta, z, alpha=eps, out=out)
        out.sub_(torch.add(self.theta, z, alpha=-eps, out=self._point))

    def _measured_single(self, z: torch.Tensor, out: torch.Tensor) -> None:
        torch.add(self.theta, z, alpha=self.config.eps, out=out)
        out.mul_(-1).add_(self.theta, alpha=2)
        torch.sub(self.theta, out, out=out)

    def _measured_one_sided(self, z: torch.Tensor, out: torch.Tensor) -> None:
        torch.add(self.theta, z, alpha=self.config.eps, out=out)
        out.sub_(self.theta)
