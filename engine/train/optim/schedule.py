"""The learning-rate schedule: the lr of each step, from the config and how far the run is."""

from __future__ import annotations

import math

from engine.api.config import OptimizerConfig


def learning_rate(config: OptimizerConfig, step: int, progress: float) -> float:
    """lr for the step about to run (0-based `step`); `progress` ∈ [0, 1] is the share of the run
    already done (of its steps, or of its time budget when that ends it first)."""
    lr = config.lr
    if step < config.warmup_steps:
        lr *= (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return lr
