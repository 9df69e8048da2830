"""Backbones written in the project (no torchvision), built by name.

The contract every backbone keeps, so that any decoder works on any backbone:

* ``forward(x)`` returns a dict of feature maps keyed by their nominal level
  ``"s4"``, ``"s8"``, ``"s16"``, ``"s32"`` (the stride they would have at output stride 32).
  With ``output_stride=16`` the last stage is dilated instead of strided, so ``"s32"`` is
  really at stride 16; at 8, ``"s16"`` and ``"s32"`` are both at stride 8.
* ``channels`` maps the same keys to channel counts; ``output_stride`` is the stride of ``"s32"``.
* ``pretrained`` is a local file holding a torchvision-format state_dict (see ``weights.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from torch import nn

from segflow.errors import SegflowError

FEATURE_KEYS = ("s4", "s8", "s16", "s32")


def _vgg(name: str) -> Callable[..., nn.Module]:
    from segflow.models.backbones import vgg

    return getattr(vgg, name)


def _resnet(name: str) -> Callable[..., nn.Module]:
    from segflow.models.backbones import resnet

    return getattr(resnet, name)


def _mobilenet(name: str) -> Callable[..., nn.Module]:
    from segflow.models.backbones import mobilenet

    return getattr(mobilenet, name)


_FAMILIES: dict[str, Callable[[str], Callable[..., nn.Module]]] = {
    "vgg16": _vgg,
    "vgg16_bn": _vgg,
    "resnet18": _resnet,
    "resnet34": _resnet,
    "resnet50": _resnet,
    "resnet101": _resnet,
    "mobilenet_v2": _mobilenet,
}

BACKBONES = tuple(_FAMILIES)


def build_backbone(
    name: str, output_stride: int = 32, pretrained: str | Path | None = None, **options
) -> nn.Module:
    """Build backbone ``name`` at ``output_stride`` (32, 16 or 8), optionally loading weights."""
    if name not in _FAMILIES:
        raise SegflowError(f"backbone {name!r} is unknown; known backbones: {', '.join(BACKBONES)}")
    if output_stride not in (8, 16, 32):
        raise SegflowError(f"output_stride must be 8, 16 or 32 (got {output_stride})")
    fn = _FAMILIES[name](name)
    accepted = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:  # e.g. a typo in backbone_options
            known = [k for k in accepted if k not in ("output_stride", "pretrained")]
            raise SegflowError(
                f"backbone {name!r}: unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(known) or 'none'}"
            )
    model = fn(output_stride=output_stride, pretrained=pretrained, **options)
    model.backbone_name = name  # lets summaries and reports say what a model is built on
    return model
