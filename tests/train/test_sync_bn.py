"""train.sync_bn: BatchNorm over the global batch of two gloo workers equals BatchNorm over the
concatenated batch in one process: outputs, running statistics and input gradients."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from segflow.train.sync_bn import SyncBatchNorm, convert_sync_bn

CHANNELS = 3
SPLIT = (2, 3)  # rank 0 holds 2 images, rank 1 holds 3


def batches() -> tuple[torch.Tensor, torch.Tensor]:
    """Two ranks' batches of different sizes and statistics, and the loss's weights."""
    g = torch.Generator().manual_seed(0)
    first = torch.randn(SPLIT[0], CHANNELS, 5, 7, generator=g)
    second = 3 + 2 * torch.randn(SPLIT[1], CHANNELS, 5, 7, generator=g)
    x = torch.cat([first, second])
    return x, torch.randn(x.shape, generator=g)


def model() -> nn.Module:
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(CHANNELS)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    return nn.Sequential(bn)


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, w = batches()
    x, w = x.split(SPLIT)[rank].clone().requires_grad_(True), w.split(SPLIT)[rank]
    net = convert_sync_bn(model()).train()
    y = net(x)
    (y * w).sum().backward()
    bn = net[0]
    torch.save(
        {"y": y.detach(), "grad": x.grad, "mean": bn.running_mean, "var": bn.running_var}, out
    )
    dist.destroy_process_group()


def test_sync_bn_on_two_workers_equals_batch_norm_on_the_whole_batch(tmp_path: Path):
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    mp.start_processes(
        _spawned, args=(2, str(tmp_path / "init"), outs), nprocs=2, start_method="spawn"
    )
    ranks = [torch.load(o) for o in outs]

    x, w = batches()
    x.requires_grad_(True)
    plain = model().train()
    y = plain(x)
    (y * w).sum().backward()
    bn = plain[0]
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["mean"], bn.running_mean)
        torch.testing.assert_close(got["var"], bn.running_var)
        torch.testing.assert_close(got["y"], y.detach().split(SPLIT)[r], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["grad"], x.grad.split(SPLIT)[r], atol=1e-5, rtol=1e-5)


def _spawned(rank: int, world: int, init_file: str, outs: list[str]) -> None:
    worker(rank, world, init_file, outs[rank])


def test_conversion_keeps_the_parameters_and_statistics_and_acts_as_bn_without_workers():
    net = model()
    net[0].running_mean.fill_(0.25)
    weight = net[0].weight
    converted = convert_sync_bn(net)
    assert isinstance(converted[0], SyncBatchNorm)
    assert converted[0].weight is weight  # the optimizer's references stay valid
    assert torch.equal(converted[0].running_mean, torch.full((CHANNELS,), 0.25))
    x = batches()[0]
    torch.testing.assert_close(converted.train()(x), model().train()(x))
