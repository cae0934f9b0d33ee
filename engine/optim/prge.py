"""P-RGE: all 2q perturbed forward passes of a step batched into one (or two, in single mode)."""

from __future__ import annotations

import torch

from engine.optim.base import LossFn, StepResult, TrainedOptimizer, projected_grads


class PRGE(TrainedOptimizer):
    """Copies [0:q] hold θ + εz_i and, in dual mode, copies [q:2q] hold θ − εz_i."""

    def step(self, losses: LossFn, step: int) -> StepResult:
        q, eps = self.config.q, self.config.eps
        copies = self.store.copies.data
        for i in range(q):
            z = self.direction(step, i)
            torch.add(self.theta, z, alpha=eps, out=copies[i])
            if self.config.mode == "dual":
                torch.add(self.theta, z, alpha=-eps, out=copies[q + i])
        if self.config.mode == "dual":
            both = losses(2 * q)
            plus, minus = both[:q], both[q:]
        else:
            plus = losses(q)
            for i in range(q):
                self.set_copy(i, step, i, -eps)
            minus = losses(q)
        grads = projected_grads(plus, minus, eps)
        self.apply_projected_grads(step, grads)
        return StepResult(loss=float((plus + minus).mean() / 2), projected_grads=grads)
