"""BatchNorm whose batch statistics span every DDP worker (``train.sync_bn``).

With small per-worker batches (2 crops per GPU, or CPU workers), plain BatchNorm normalises
with the statistics of one worker's few images: noisy, and different on every rank. Synchronised
BN sums each channel's count, sum and sum of squares over the ranks (one all-reduce per layer),
so every rank normalises with the statistics of the global batch, as if one process saw it.

PyTorch's ``nn.SyncBatchNorm`` runs only on GPUs, so CPU (gloo) training uses
:class:`SyncBatchNorm` below; the all-reduce is torch.distributed.nn's differentiable one, so the
gradient also flows through the other ranks' share of the statistics.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks in training; plain BatchNorm in eval."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        synced = self.training and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = xf.new_full((1,), x.numel() // channels)
        stats = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        total = stats[-1]
        mean = stats[:channels] / total
        var = (stats[channels : 2 * channels] / total - mean * mean).clamp(min=0)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * total / (total - 1).clamp(min=1))
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), m)


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer, keeping its parameters and statistics (the optimizer's
    parameter references stay valid): PyTorch's SyncBatchNorm on GPU, :class:`SyncBatchNorm`
    elsewhere."""
    first = next(model.parameters(), None)
    if first is not None and first.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias
        if module.track_running_stats:
            sync.running_mean, sync.running_var = module.running_mean, module.running_var
            sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module
