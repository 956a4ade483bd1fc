"""Exponential moving average (EMA) of a model's weights, for evaluation.

The average is updated after every optimizer step; its decay ramps up from 0.1 as
min(decay, (1 + n) / (10 + n)) after n updates (as in TensorFlow's ExponentialMovingAverage
with num_updates), so short runs are not dominated by the random initialization.
BN running statistics are averaged like the weights; integer buffers are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """An EMA copy of `model`; `update()` after each optimizer step, evaluate `module`."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._float = [(e, m) for e, m in pairs if e.dtype.is_floating_point]
        self._other = [(e, m) for e, m in pairs if not e.dtype.is_floating_point]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """ema = decay * ema + (1 - decay) * model, for every floating-point tensor of the state dict."""
        self.updates += 1
        weight = 1.0 - self.current_decay()
        if self._float:
            ema, model = zip(*self._float)
            torch._foreach_lerp_(list(ema), list(model), weight)
        for ema_tensor, model_tensor in self._other:
            ema_tensor.copy_(model_tensor)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
