"""A timm-style model registry: ``build(name, num_classes, ...)`` with every model in one dict.

Each architecture file registers its constructors with :func:`register_model`. All constructors
take the same arguments (``num_classes, backbone, output_stride, pretrained, **options``), so
swapping a model in params.yaml is a one-word change. ``backbone``/``output_stride`` default to
the architecture's published setting when passed as None.

:func:`build` also holds the zoo's limits, because a model description can come from a file
someone else wrote (a checkpoint's ``num_classes`` and ``train_params``): at most
:data:`MAX_CLASSES` classes, and no list option (ASPP ``rates``, PSP ``bins``, a genotype's cell
and path) longer than :data:`MAX_OPTION_ITEMS`, since each item builds a branch or a layer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from numbers import Integral
from pathlib import Path

from torch import nn

from segflow.errors import SegflowError

ModelFn = Callable[..., nn.Module]
MODELS: dict[str, ModelFn] = {}

#: Most classes a model may have: masks hold 8-bit train ids and 255 is the ignore label
#: (segflow.data.datasets.base.IGNORE_INDEX), so no segflow class table has more than 255
#: (ADE20K, the largest built-in one, has 150). A head for more could never see a label.
MAX_CLASSES = 255
#: Longest list in a model's options: the published settings use 3-4 ASPP rates or PSP bins and
#: a 5-block, 12-layer Auto-DeepLab genotype; 64 leaves room for searches far larger.
MAX_OPTION_ITEMS = 64


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


def check_option_sizes(model: str, options: dict, where: str = "") -> None:
    """Every list in ``options`` (nested in dicts and lists too) has at most MAX_OPTION_ITEMS."""
    for key, value in options.items():
        field = f"{where}{key}"
        if isinstance(value, list | tuple):
            if len(value) > MAX_OPTION_ITEMS:
                raise SegflowError(
                    f"model {model!r}: option {field} has {len(value)} items; "
                    f"at most {MAX_OPTION_ITEMS}"
                )
            check_option_sizes(model, {f"[{i}]": v for i, v in enumerate(value)}, field)
        elif isinstance(value, dict):
            check_option_sizes(model, value, f"{field}.")


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
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral):
        raise SegflowError(f"num_classes must be an integer (got {num_classes!r})")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise SegflowError(
            f"num_classes must be in 1..{MAX_CLASSES} (got {num_classes}): masks hold 8-bit "
            "train ids and 255 is the ignore label"
        )
    check_option_sizes(name, options)
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
        deconvnet,
        deeplab,
        enet,
        fcn,
        frrn,
        gridnet,
        pspnet,
        refinenet,
        segnet,
        unet,
        upernet,
    )
