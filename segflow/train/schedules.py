"""Learning-rate schedules, stepped once per iteration (not per epoch) as DeepLab does."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def poly_factor(it: int, max_iter: int, power: float = 0.9, warmup_iters: int = 0) -> float:
    """Multiplier of the base LR at iteration ``it``: linear warm-up, then (1 - t/T)^power.

    The poly decay runs over the iterations after warm-up so that it still reaches 0 at
    ``max_iter``; warm-up starts at 1/warmup_iters of the base LR rather than 0 so the first
    step is not wasted.
    """
    if warmup_iters > 0 and it < warmup_iters:
        return (it + 1) / warmup_iters
    span = max(max_iter - warmup_iters, 1)
    progress = min(max(it - warmup_iters, 0) / span, 1.0)
    return (1.0 - progress) ** power


def poly_lr(
    optimizer: Optimizer, max_iter: int, power: float = 0.9, warmup_iters: int = 0
) -> LambdaLR:
    """``LambdaLR`` applying :func:`poly_factor`; its state_dict holds the iteration count."""
    return LambdaLR(optimizer, lambda it: poly_factor(it, max_iter, power, warmup_iters))
