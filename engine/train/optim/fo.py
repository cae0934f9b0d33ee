"""First-order LoRA with AdamW: backprop through the frozen base, the accuracy and memory reference."""

from __future__ import annotations

import torch

from engine.api.config import OptimizerConfig
from engine.train.lora import LoRAStore
from engine.train.optim.base import LossFn, StepResult, TrainedOptimizer


class FirstOrder(TrainedOptimizer):
    """AdamW on the store's single copy (the layers slice their views from it in every forward,
    so autograd reaches it)."""

    def __init__(self, config: OptimizerConfig, store: LoRAStore, seed: int):
        super().__init__(config, store, seed)
        store.copies.requires_grad_(True)
        self._adamw = torch.optim.AdamW([store.copies], lr=config.lr, weight_decay=config.weight_decay)

    def step(self, losses: LossFn, step: int, lr: float | None = None) -> StepResult:
        self._adamw.param_groups[0]["lr"] = self.config.lr if lr is None else lr
        self._adamw.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = losses(1)[0]
            loss.backward()
        self._adamw.step()
        self.theta.copy_(self.store.copies.detach()[0])
        return StepResult(loss=float(loss.detach()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        for key, value in self._adamw.state_dict()["state"].get(0, {}).items():
            state[f"adamw/{key}"] = torch.as_tensor(value)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        full = self._adamw.state_dict()
        moments = {k.split("/", 1)[1]: v.clone() for k, v in state.items() if k.startswith("adamw/")}
        if moments:
            full["state"][0] = moments
        self._adamw.load_state_dict(full)
