"""Random architectures from the search space, matched in size to a searched one.

A search earns its cost only if what it finds beats what a random draw from the same space
finds at the same size (Li & Talwalkar 2019; Yu et al. 2020 found many NAS methods do not).
The baseline of benchmarks/search_vs_random.py is drawn here:

* a random **path** is a walk from the stem (stride 4) that moves, at each layer, to one of
  the levels it may reach (finer, same, coarser; never finer than 4 nor coarser than 32), each
  with equal probability: the transitions :mod:`segflow.search.decode` allows;
* a random **cell** takes, per block, two distinct inputs among those the block may read
  (0, 1: the two previous cells; 2 + j: block j) and a random non-zero op for each: the
  genotypes :func:`segflow.search.decode.decode_cell` can produce.

:func:`sample_matched` keeps drawing until it has ``count`` distinct genotypes whose parameter
count and GFLOPs are both within ``tolerance`` of the target's, or stops after ``max_draws``
draws with a one-line error. Sizes are those of the retrained ``autodeeplab`` model
(:func:`genotype_size`), not of the supernet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from segflow.errors import SegflowError
from segflow.models.autodeeplab import AutoDeepLab
from segflow.models.genotype import OPS, STRIDES, ZERO, Genotype
from segflow.search.decode import reachable

NONZERO_OPS = tuple(op for i, op in enumerate(OPS) if i != ZERO)


def random_path(rng: np.random.Generator, layers: int) -> tuple[int, ...]:
    """Strides of a uniform random walk over the trellis, starting from the stem at stride 4."""
    level, path = 0, []
    for layer in range(layers):
        options = [k for k in (level - 1, level, level + 1) if k in reachable(layer)]
        level = int(rng.choice(options))
        path.append(STRIDES[level])
    return tuple(path)


def random_cell(rng: np.random.Generator, blocks: int) -> tuple:
    """Per block two distinct inputs (0 .. block + 1), each with a random non-zero op."""
    cell = []
    for b in range(blocks):
        inputs = rng.choice(b + 2, size=2, replace=False)
        ops = rng.choice(len(NONZERO_OPS), size=2)
        cell.append(tuple((NONZERO_OPS[int(o)], int(i)) for o, i in zip(ops, inputs, strict=True)))
    return tuple(cell)


def random_genotype(rng: np.random.Generator, layers: int, blocks: int) -> Genotype:
    return Genotype(random_cell(rng, blocks), random_path(rng, layers))


def conv_flops(model: nn.Module, size: tuple[int, int]) -> int:
    """FLOPs of the convolutions and linear layers of one forward pass of a batch of 1 at
    ``size``, with the convention of :mod:`segflow.models.summary` (a multiply-add is 2 FLOPs;
    BN, activations, pooling and resizing are left out). Counted with forward hooks on the meta
    device, where torch's FlopCounterMode takes seconds per call on a small network and this
    takes milliseconds, which rejection sampling needs."""
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = module.in_channels // module.groups * kh * kw
        else:
            per_output = module.in_features
        total += 2 * output.numel() * per_output

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, *size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total


@dataclass(frozen=True)
class Sized:
    """A genotype with the size of its retrained network."""

    genotype: Genotype
    params: int
    gflops: float


def genotype_size(
    genotype: Genotype, num_classes: int, size: tuple[int, int], **model_options
) -> Sized:
    """Parameters and GFLOPs (at ``size``) of ``autodeeplab`` built from ``genotype`` with
    ``model_options`` (filter_multiplier, aspp_channels, ...; training-only ones ignored)."""
    options = {k: v for k, v in model_options.items() if k not in ("drop_path", "drop_path_steps")}
    options.pop("genotype", None)
    with torch.device("meta"):
        model = AutoDeepLab(genotype, num_classes, **options).eval()
    params = sum(p.numel() for p in model.parameters())
    return Sized(genotype, params, conv_flops(model, size) / 1e9)


def within(candidate: Sized, target: Sized, tolerance: float) -> bool:
    """Both the parameter count and the GFLOPs within ``tolerance`` (relative) of the target's."""
    return (
        abs(candidate.params - target.params) <= tolerance * target.params
        and abs(candidate.gflops - target.gflops) <= tolerance * target.gflops
    )


def sample_matched(
    target: Genotype,
    count: int,
    *,
    num_classes: int,
    size: tuple[int, int],
    model_options: dict | None = None,
    tolerance: float = 0.1,
    max_draws: int = 2000,
    seed: int = 0,
) -> list[Sized]:
    """``count`` distinct random genotypes (not the target) with as many layers and blocks as
    ``target`` and its parameters and GFLOPs within ``tolerance``; a :class:`SegflowError` when
    ``max_draws`` draws do not find them."""
    options = model_options or {}
    goal = genotype_size(target, num_classes, size, **options)
    rng = np.random.default_rng([seed, 22])
    found: dict[Genotype, Sized] = {}
    for _ in range(max_draws):
        genotype = random_genotype(rng, len(target.path), len(target.cell))
        if genotype == target or genotype in found:
            continue
        sized = genotype_size(genotype, num_classes, size, **options)
        if within(sized, goal, tolerance):
            found[genotype] = sized
            if len(found) == count:
                return list(found.values())
    raise SegflowError(
        f"random architectures: only {len(found)} of {count} within {tolerance:.0%} of the "
        f"target's {goal.params / 1e6:.3f} M parameters and {goal.gflops:.3f} GFLOPs after "
        f"{max_draws} draws; allow more draws or a larger tolerance"
    )
