"""P-RGE: all perturbed forward passes of a step batched into one (or two, in single mode)."""

from __future__ import annotations

import torch

from engine.optim.base import LossFn, StepResult, TrainedOptimizer, coefficients


class PRGE(TrainedOptimizer):
    """Two-sided: copies [0:q] hold θ + εz_i and, in dual mode, copies [q:2q] hold θ − εz_i.
    One-sided (FZOO's shape): copy 0 holds θ itself and copies [1:q+1] hold θ + εz_i, so a pass
    of 2q copies measures 2q − 1 directions against one shared L(θ) instead of q.

    Each z_i is drawn once per step. The update reads the directions back from the copies
    instead of drawing them again: the copies are rewritten by the broadcast that ends the step
    anyway, and the difference of the two evaluated points is the direction the finite
    difference actually measured (θ ± εz rounded to the store's dtype), not merely close to it.
    """

    def step(self, losses: LossFn, step: int, lr: float | None = None) -> StepResult:
        lr = self.config.lr if lr is None else lr
        if self.config.estimator == "one-sided":
            return self._one_sided(losses, step, lr)
        q, eps = self.config.q, self.config.eps
        copies = self.store.copies.data
        dual = self.config.mode == "dual"
        for i in range(q):
            z = self.direction(step, i)
            self.perturb(i, z, eps)
            if dual:
                self.perturb(q + i, z, -eps)
        if dual:
            both = losses(2 * q)
            plus, minus = both[:q], both[q:]
            grads = coefficients((plus.double() - minus.double()) / 2, both, self.config)
            self.update(copies[:q].sub_(copies[q:2 * q]), grads, 1 / (2 * eps), lr)
        else:
            plus = losses(q)
            # θ − εz_i as the reflection of θ + εz_i through θ: no second draw.
            copies[:q].mul_(-1).add_(self.theta, alpha=2)
            minus = losses(q)
            grads = coefficients((plus.double() - minus.double()) / 2,
                                 torch.cat([plus, minus]), self.config)
            self.update(torch.sub(self.theta, copies[:q], out=copies[:q]), grads, 1 / eps, lr)
        return StepResult(loss=float((plus + minus).mean() / 2), projected_grads=grads)

    def _one_sided(self, losses: LossFn, step: int, lr: float) -> StepResult:
        q, eps = self.config.q, self.config.eps
        copies = self.store.copies.data
        # Copy 0 already holds θ (every step ends with a broadcast).
        for i in range(q):
            self.perturb(1 + i, self.direction(step, i), eps)
        both = losses(q + 1)
        center, perturbed = both[0], both[1:]
        grads = coefficients(perturbed.double() - center.double(), perturbed, self.config)
        self.update(copies[1:q + 1].sub_(self.theta), grads, 1 / eps, lr)
        return StepResult(loss=float(center), projected_grads=grads)
