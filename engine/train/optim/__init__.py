"""Optimisers over the LoRA tensors: P-RGE (batched zeroth-order), MeZO (sequential), FO (AdamW)."""

from __future__ import annotations

from collections.abc import Callable

from engine.api.config import OptimizerConfig
from engine.train.distributed import World
from engine.train.lora import LoRAStore
from engine.train.optim.base import LossFn, StepResult, TrainedOptimizer
from engine.train.optim.fo import FirstOrder
from engine.train.optim.mezo import MeZO
from engine.train.optim.prge import PRGE

__all__ = ["LossFn", "StepResult", "TrainedOptimizer", "build", "copies_needed"]


def copies_needed(config: OptimizerConfig, directions: int | None = None) -> int:
    """Copies of each LoRA tensor the optimiser evaluates in one pass, for `directions` of the
    step's q (this worker's share; all q when None)."""
    if config.name == "prge":
        n = config.q if directions is None else directions
        if config.estimator == "one-sided":
            return n + 1  # copy 0 is θ itself
        return 2 * n if config.mode == "dual" else n
    return 1


def build(config: OptimizerConfig, store: LoRAStore, seed: int,
          world: World | None = None) -> TrainedOptimizer:
    """The optimiser `config` names; `world` (prge only) splits the directions over workers."""
    if config.name == "prge":
        return PRGE(config, store, seed, world)
    makers: dict[str, Callable[..., TrainedOptimizer]] = {"mezo": MeZO, "fo": FirstOrder}
    return makers[config.name](config, store, seed)
