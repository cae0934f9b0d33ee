"""MeZO: the same estimator as P-RGE with 2q sequential passes over b rows on one copy.

The baseline P-RGE's speed-up is measured against; it shares P-RGE's directions (same seeds), so
for the same batch both compute the same projected gradients and the same update.
"""

from __future__ import annotations

import torch

from engine.optim.base import LossFn, StepResult, TrainedOptimizer, projected_grads


class MeZO(TrainedOptimizer):
    def step(self, losses: LossFn, step: int) -> StepResult:
        plus, minus = [], []
        for i in range(self.config.q):
            self.set_copy(0, step, i, self.config.eps)
            plus.append(losses(1))
            self.set_copy(0, step, i, -self.config.eps)
            minus.append(losses(1))
        plus_t, minus_t = torch.cat(plus), torch.cat(minus)
        grads = projected_grads(plus_t, minus_t, self.config.eps)
        self.apply_projected_grads(step, grads)
        return StepResult(loss=float((plus_t + minus_t).mean() / 2), projected_grads=grads)
