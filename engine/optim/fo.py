"""First-order LoRA with AdamW: backprop through the frozen base, the accuracy and memory reference."""

from __future__ import annotations

import torch

from engine.config import OptimizerConfig
from engine.optim.base import LossFn, StepResult, TrainedOptimizer


class FirstOrder(TrainedOptimizer):
    def __init__(self, config: OptimizerConfig, tensors: dict[str, torch.nn.Parameter], seed: int):
        super().__init__(config, tensors, seed)
        for tensor in tensors.values():
            tensor.requires_grad_(True)
        self._adamw = torch.optim.AdamW(
            list(tensors.values()), lr=config.lr, weight_decay=config.weight_decay
        )

    def step(self, losses: LossFn, step: int) -> StepResult:
        self._adamw.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = losses(1)[0]
            loss.backward()
        self._adamw.step()
        for name, tensor in self.tensors.items():
            self.theta[name].copy_(tensor.detach()[0])
        return StepResult(loss=float(loss.detach()))

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        adam = self._adamw.state_dict()["state"]
        for index, name in enumerate(self.tensors):
            for key, value in adam.get(index, {}).items():
                state[f"adamw/{name}/{key}"] = torch.as_tensor(value)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        full = self._adamw.state_dict()
        for index, name in enumerate(self.tensors):
            keys = [k.rsplit("/", 1)[1] for k in state if k.startswith(f"adamw/{name}/")]
            if keys:
                full["state"][index] = {k: state[f"adamw/{name}/{k}"].clone() for k in keys}
        self._adamw.load_state_dict(full)
