"""A timm-style model registry: ``build(name, num_classes, ...)`` with every model in one dict.

Each architecture file registers its constructors with :func:`register_model`. All constructors
take the same arguments (``num_classes, backbone, output_stride, pretrained, **options``), so
swapping a model in params.yaml is a one-word change. ``backbone``/``output_stride`` default to
the architecture's published setting when passed as None.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from torch import nn

from segflow.errors import SegflowError

ModelFn = Callable[..., nn.Module]
MODELS: dict[str, ModelFn] = {}


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Decorator: make ``fn`` buildable as ``build(name, ...)``."""

    def wrap(fn: ModelFn) -> ModelFn:
        if name in MODELS:
            raise RuntimeError(f"model {name!r} registered twice")
        MODELS[name] = fn
        return fn

    return wrap


def check_options(model: str, fn: Callable, unknown: dict) -> None:
    """Unknown constructor options are a user error naming them and the known ones.

    Constructors collect what they do not know in ``**unknown`` and pass it here, so a typo in
    params.yaml (``train.model_options``) fails loudly instead of being ignored.
    """
    if unknown:
        params = inspect.signature(fn).parameters.values()
        known = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        raise SegflowError(
            f"model {model!r}: unknown option(s) {', '.join(sorted(unknown))}; "
            f"known options: {', '.join(known)}"
        )


def list_models() -> list[str]:
    _import_architectures()
    return sorted(MODELS)


def build(
    name: str,
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    **options,
) -> nn.Module:
    """Build a registered model; an unknown name is a SegflowError listing the known ones."""
    _import_architectures()
    if name not in MODELS:
        raise SegflowError(f"model {name!r} is unknown; known models: {', '.join(sorted(MODELS))}")
    if num_classes < 1:
        raise SegflowError(f"num_classes must be >= 1 (got {num_classes})")
    return MODELS[name](
        num_classes=num_classes,
        backbone=backbone,
        output_stride=output_stride,
        pretrained=pretrained,
        **options,
    )


def _import_architectures() -> None:
    # Importing the architecture modules runs their @register_model decorators.
    from segflow.models import (  # noqa: F401
        autodeeplab,
        bisenet,
        deeplab,
        fcn,
        pspnet,
        segnet,
        unet,
    )
