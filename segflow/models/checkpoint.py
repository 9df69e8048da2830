"""Reading trained checkpoints: the model a checkpoint describes, rebuilt without the training loop.

Evaluation, the registered model and the promotion gate need the network of ``models/best.pt``
and nothing of training; they import this module, not :mod:`segflow.train.loop`.

A checkpoint is a plain ``torch.save`` of a dict of tensors, numbers, strings, lists and dicts:
``model`` (state_dict), ``optimizer``, ``scheduler``, ``epoch``, ``best_miou``, ``history``,
``train_params`` (the JSON dump of params.yaml's ``train``), ``num_classes``, ``classes``,
``shards_content_hash``, ``seed``. It is always read with ``weights_only=True``: loading a file
someone else wrote then cannot run their code, and a file that needs more than that (a pickled
class) is refused with a message instead of being executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from segflow.config import TrainParams
from segflow.errors import SegflowError
from segflow.models.aux import without_aux
from segflow.models.registry import build


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(p: TrainParams, num_classes: int) -> nn.Module:
    """The model ``train`` params describe (weights freshly initialised)."""
    return build(
        p.model,
        num_classes,
        backbone=p.backbone,
        output_stride=p.output_stride,
        pretrained=p.pretrained,
        **p.model_options,
    )


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's payload, loaded with ``weights_only=True`` (no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise SegflowError(f"{path}: checkpoint not found; run the train stage (dvc repro train)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise SegflowError(
            f"{path}: not a plain-tensor checkpoint; refusing to unpickle objects ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise SegflowError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(payload, dict):
        raise SegflowError(f"{path}: not a segflow training checkpoint (not a dict)")
    return payload


def model_from_payload(payload: dict, source: str | Path) -> nn.Module:
    """Rebuild the network of a checkpoint payload (eval mode)."""
    if "train_params" not in payload or "num_classes" not in payload or "model" not in payload:
        raise SegflowError(f"{source}: not a segflow training checkpoint (no train_params)")
    p = TrainParams.model_validate(payload["train_params"])
    # No pretrained file: the checkpoint's weights replace the backbone's anyway.
    model = build_model(p.model_copy(update={"pretrained": None}), int(payload["num_classes"]))
    model.load_state_dict(payload["model"])
    # An auxiliary head only served the training loss: the scored and served model is without it.
    return without_aux(model).eval()


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a checkpoint written by the train stage (eval mode)."""
    return model_from_payload(read_checkpoint(path, map_location), path)
