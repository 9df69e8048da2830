"""An exponential moving average of the weights (Polyak averaging, as in timm's ModelEmaV2).

After every optimizer step ``ema = decay * ema + (1 - decay) * weights``; buffers (BatchNorm's
running statistics) are copied as they are. The average sits in a flatter part of the loss
than the last SGD iterate, which is worth a fraction of a point of mIoU at no training cost.
When it is on, the average is what is validated and saved as the model; the raw weights are
kept beside it only to continue training.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """A frozen copy of ``model`` that trails its weights with factor ``decay`` per step."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1) (got {decay})")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        # Parameters are averaged; buffers (BN statistics, counters) are copied.
        self.param_names = {name for name, _ in self.module.named_parameters()}

    def decay_at(self, step: int) -> float:
        """The decay of the update after ``step`` optimizer steps (0-based): with the warm-up,
        min(decay, (1 + step) / (10 + step)): the first update takes 90% of the weights and the
        initial ones fade within tens of steps, not hundreds."""
        return min(self.decay, (1.0 + step) / (10.0 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        """One step of the average towards ``model``'s current weights (``step``: how many
        optimizer steps came before, which the warm-up reads; a resumed run passes its own)."""
        current = model.state_dict()
        decay = self.decay_at(step)
        for name, avg in self.module.state_dict().items():
            value = current[name].detach()
            if avg.dtype.is_floating_point and name in self.param_names:
                avg.lerp_(value.to(avg.dtype), 1.0 - decay)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
