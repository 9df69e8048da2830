"""Load ImageNet weights saved in torchvision's state_dict key format from a local file.

Backbones name their parameters exactly as torchvision does (``layer1.0.conv1.weight``,
``features.0.weight``), so a file saved from
``torchvision.models.resnet50(weights=...).state_dict()`` loads directly. Classifier weights
(``fc.*``, ``classifier.*``) are dropped because a segmentation backbone has no classifier.
Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from segflow.errors import SegflowError

CLASSIFIER_PREFIXES = ("fc.", "classifier.")


def load_torchvision_weights(
    module: nn.Module, path: str | Path, drop_prefixes: tuple[str, ...] = CLASSIFIER_PREFIXES
) -> None:
    """Load a torchvision-format state_dict into ``module`` strictly (after dropping the head).

    A missing file, a file that is not a state_dict, or keys/shapes that do not match are a
    :class:`SegflowError` naming the file and the first mismatching keys.
    """
    path = Path(path)
    if not path.is_file():
        raise SegflowError(f"pretrained weights {path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise SegflowError(
            f"pretrained weights {path}: not a readable torch file ({exc})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SegflowError(f"pretrained weights {path}: expected a state_dict mapping")
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape", mismatched),
        ):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        raise SegflowError(
            f"pretrained weights {path} do not match the backbone ({'; '.join(parts)})"
        )
    module.load_state_dict(state, strict=True)
