"""Parameter and FLOP counts of the zoo's models, for ``segflow models`` and benchmarks/.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` over one forward pass of a
batch of 1 at ``size``. Its convention: a multiply-accumulate counts as 2 FLOPs, and only
matrix products and convolutions are counted (BN, activations, pooling and interpolation are
left out; they are a few percent). ``gflops`` is that count / 1e9, so it is twice the "GMACs"
many papers quote. The model is built and run on the ``meta`` device: shapes propagate, no
memory is allocated and nothing is computed, so summarising the whole zoo takes about a second.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from segflow.models.registry import build, list_models


def model_summary(
    name: str, num_classes: int = 21, size: tuple[int, int] = (512, 512), **build_kwargs
) -> dict:
    """``{"name", "backbone", "output_stride", "params", "gflops"}`` of model ``name``.

    ``params`` counts every parameter (trainable or not); buffers such as BN statistics are
    not parameters. ``pretrained`` is ignored: weights do not change the counts and cannot be
    loaded onto the meta device.
    """
    build_kwargs.pop("pretrained", None)
    with torch.device("meta"):
        model = build(name, num_classes, **build_kwargs).eval()
        x = torch.empty(1, 3, *size)
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    trunk = next((m for m in model.modules() if hasattr(m, "backbone_name")), None)
    return {
        "name": name,
        "backbone": trunk.backbone_name if trunk is not None else None,
        "output_stride": trunk.output_stride if trunk is not None else None,
        "params": params,
        "gflops": counter.get_total_flops() / 1e9,
    }


def summaries(num_classes: int = 21, size: tuple[int, int] = (512, 512)) -> list[dict]:
    """:func:`model_summary` of every registered model at its defaults, sorted by name."""
    return [model_summary(name, num_classes, size) for name in list_models()]
