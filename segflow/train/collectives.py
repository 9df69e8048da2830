"""The collectives the training and search loops use across DDP ranks, and nothing else.

Every function is a no-op on one process (torch.distributed not initialised, or a world of
one), so the same loop code runs under Ray Train with N workers and as plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether this process is one rank of several (Ray Train has set up torch.distributed)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_over_ranks(value: float, count: float, device: torch.device) -> float:
    """The global mean of per-rank means, each weighted by its rank's ``count``.

    An epoch's loss is the mean over the images each rank saw; ranks may see different numbers
    (uneven splits), so an unweighted mean of the ranks' means would be biased.
    """
    if not is_distributed():
        return value
    t = torch.tensor([value * count, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1]) if t[1] > 0 else 0.0


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself on one process).

    For decisions every rank must take alike, such as skipping a step: a rank that skips while
    another steps would leave the DDP replicas different.
    """
    if not is_distributed():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Mean of each gradient over the ranks (one flat all-reduce); no-op on one process.

    For loops that step two optimizers over one network (the search's weight and architecture
    steps), where DDP's bucket hooks would fire on both backward passes.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def max_divergence_from_rank0(tensors: list[torch.Tensor]) -> float:
    """Largest |value on any rank - value on rank 0| over ``tensors``: 0.0 when the ranks agree
    (and on one process). A check that replicated state stayed replicated."""
    if not is_distributed():
        return 0.0
    mine = torch.cat([t.detach().reshape(-1) for t in tensors])
    ref = mine.clone()
    dist.broadcast(ref, src=0)
    diff = (mine - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def gather_objects(value: object) -> list[object]:
    """``value`` of every rank, in rank order (``[value]`` on one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
