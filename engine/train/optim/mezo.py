"""MeZO: the same estimator as P-RGE with 2q sequential passes over b rows on one copy.

The baseline P-RGE's speed-up is measured against; it shares P-RGE's directions (same seeds), so
for the same batch both compute the same projected gradients and the same update.
"""

from __future__ import annotations

import torch

from engine.api.config import OptimizerConfig
from engine.train.lora import LoRAStore
from engine.train.optim.base import LossFn, StepResult, TrainedOptimizer, coefficients


class MeZO(TrainedOptimizer):
    """Draws each z_i once and folds g_i·z_i into a running sum while z_i is still in hand, so the
    baseline pays for no more random numbers than P-RGE does (a fair speed comparison)."""

    def __init__(self, config: OptimizerConfig, store: LoRAStore, seed: int):
        super().__init__(config, store, seed)
        self._weighted_sum = torch.empty_like(self.theta)

    def step(self, losses: LossFn, step: int, lr: float | None = None) -> StepResult:
        q, eps = self.config.q, self.config.eps
        weighted_sum = self._weighted_sum.zero_()
        plus, minus, grads = [], [], []
        for i in range(q):
            z = self.direction(step, i)
            self.perturb(0, z, eps)
            plus.append(losses(1))
            self.perturb(0, z, -eps)
            minus.append(losses(1))
            grads += coefficients((plus[-1].double() - minus[-1].double()) / 2, plus[-1], self.config)
            weighted_sum.add_(z, alpha=grads[-1])
        self.apply_sum(weighted_sum, q, self.config.lr if lr is None else lr)
        plus_t, minus_t = torch.cat(plus), torch.cat(minus)
        return StepResult(loss=float((plus_t + minus_t).mean() / 2), projected_grads=grads)
