"""P-RGE: all 2q perturbed forward passes of a step batched into one (or two, in single mode)."""

from __future__ import annotations

import torch

from engine.optim.base import LossFn, StepResult, TrainedOptimizer, projected_grads


class PRGE(TrainedOptimizer):
    """Copies [0:q] hold θ + εz_i and, in dual mode, copies [q:2q] hold θ − εz_i.

    Each z_i is drawn once per step. The update reads the directions back from the copies
    instead of drawing them again: the copies are rewritten by the broadcast that ends the step
    anyway, and the difference of the two evaluated points is the direction the finite
    difference actually measured (θ ± εz rounded to the store's dtype), not merely close to it.
    """

    def step(self, losses: LossFn, step: int) -> StepResult:
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
            grads = projected_grads(plus, minus, eps)
            self.update(copies[:q].sub_(copies[q:2 * q]), grads, unit=1 / (2 * eps))
        else:
            plus = losses(q)
            # θ − εz_i as the reflection of θ + εz_i through θ: no second draw.
            copies[:q].mul_(-1).add_(self.theta, alpha=2)
            minus = losses(q)
            grads = projected_grads(plus, minus, eps)
            self.update(torch.sub(self.theta, copies[:q], out=copies[:q]), grads, unit=1 / eps)
        return StepResult(loss=float((plus + minus).mean() / 2), projected_grads=grads)
