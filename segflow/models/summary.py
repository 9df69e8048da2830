"""Parameter and FLOP counts of the zoo's models, for ``segflow models`` and benchmarks/.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` over one forward pass of a
batch of 1 at ``size``. Its convention: a multiply-accumulate counts as 2 FLOPs, and only
matrix products and convolutions are counted (BN, activations, pooling and interpolation are
left out; they are a few percent). ``gflops`` is that count / 1e9, so it is twice the "GMACs"
many papers quote. The model is built and run on the ``meta`` device: shapes propagate, no
memory is allocated and nothing is computed, so summarising the whole zoo takes about a second.

:data:`PUBLISHED` holds the parameter counts the architectures' papers publish, each with the
setting it describes (classes and options) and its source, for the "paper" column of
``segflow models`` and for the tests that build each model at that setting and compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from segflow.models.registry import build, list_models


@dataclass(frozen=True)
class PublishedCount:
    """A parameter count a paper publishes: ``millions`` for ``model`` built with ``num_classes``
    and ``options`` (the rest at segflow's defaults, which are the paper's setting)."""

    model: str
    millions: float
    num_classes: int
    source: str
    options: dict = field(default_factory=dict)


#: One entry per published count; an entry without ``options`` describes the model at its
#: defaults and is what ``segflow models`` shows. The model modules' docstrings say how each
#: architecture was read from its paper.
PUBLISHED: tuple[PublishedCount, ...] = (
    PublishedCount("autodeeplab", 10.15, 19, "Liu et al. 2019, Table 4: Auto-DeepLab-S (F = 20)"),
    PublishedCount("deconvnet", 252.0, 21, "Noh et al. 2015: the network of their Table 1"),
    PublishedCount(
        "enet",
        0.37,
        19,
        "Paszke et al. 2016, hardware-requirements table (classes change it by 65 per class)",
    ),
    PublishedCount("frrn", 24.8, 19, "Pohlen et al. 2017: FRRN-B, with their Cityscapes results"),
    PublishedCount(
        "frrn",
        17.7,
        19,
        "Pohlen et al. 2017: FRRN-A, with their Cityscapes results",
        {"variant": "A"},
    ),
    PublishedCount("gridnet", 9.86, 19, "Fourure et al. 2017, with their Cityscapes results"),
    PublishedCount(
        "refinenet",
        118.0,
        21,
        "Nekrasov et al. 2018 (Light-Weight RefineNet), Table 1: RefineNet-101",
    ),
    PublishedCount(
        "upernet",
        64.1,
        150,
        "Xiao et al. 2018 give no count: mmsegmentation's UPerHead (channels 512) on "
        "ResNet-50 without the auxiliary head, counted layer by layer (ADE20K's 150 classes)",
    ),
)


def published_count(name: str, options: dict | None = None) -> PublishedCount | None:
    """The published count of model ``name`` built with ``options`` (default: its defaults),
    if a paper gives one for exactly that setting."""
    options = options or {}
    return next((p for p in PUBLISHED if p.model == name and p.options == options), None)


def model_summary(
    name: str, num_classes: int = 21, size: tuple[int, int] = (512, 512), **build_kwargs
) -> dict:
    """``{"name", "backbone", "output_stride", "params", "gflops", "paper_params"}`` of ``name``.

    ``params`` counts every parameter (trainable or not); buffers such as BN statistics are
    not parameters. ``pretrained`` is ignored: weights do not change the counts and cannot be
    loaded onto the meta device. ``paper_params`` is the published count of this setting (in
    parameters, at the paper's number of classes; :func:`published_count`) or None.
    """
    build_kwargs.pop("pretrained", None)
    paper = published_count(name, build_kwargs)
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
        "paper_params": paper.millions * 1e6 if paper is not None else None,
    }


def summaries(num_classes: int = 21, size: tuple[int, int] = (512, 512)) -> list[dict]:
    """:func:`model_summary` of every registered model at its defaults, sorted by name."""
    return [model_summary(name, num_classes, size) for name in list_models()]
