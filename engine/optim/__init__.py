"""Optimisers over the LoRA tensors: P-RGE (batched zeroth-order), MeZO (sequential), FO (AdamW)."""

from __future__ import annotations

from collections.abc import Callable

from engine.config import OptimizerConfig
from engine.lora import LoRAStore
from engine.optim.base import LossFn, StepResult, TrainedOptimizer
from engine.optim.fo import FirstOrder
from engine.optim.mezo import MeZO
from engine.optim.prge import PRGE

__all__ = ["LossFn", "StepResult", "TrainedOptimizer", "build", "copies_needed"]


def copies_needed(config: OptimizerConfig) -> int:
    """Copies of each LoRA tensor the optimiser evaluates in one pass."""
    if config.name == "prge":
        if config.estimator == "one-sided":
            return config.q + 1  # copy 0 is θ itself
        return 2 * config.q if config.mode == "dual" else config.q
    return 1


def build(config: OptimizerConfig, store: LoRAStore, seed: int) -> TrainedOptimizer:
    makers: dict[str, Callable[..., TrainedOptimizer]] = {"prge": PRGE, "mezo": MeZO, "fo": FirstOrder}
    return makers[config.name](config, store, seed)
