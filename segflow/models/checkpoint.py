"""Reading trained checkpoints: the model a checkpoint describes, rebuilt without the training loop.

Evaluation, the registered model and the promotion gate need the network of ``models/best.pt``
and nothing of training; they import this module, not :mod:`segflow.train.loop`.

A checkpoint is a plain ``torch.save`` of a dict of tensors, numbers, strings, lists and dicts:
``model`` (state_dict), ``optimizer``, ``scheduler``, ``epoch``, ``best_miou``, ``history``,
``train_params`` (the JSON dump of params.yaml's ``train``), ``num_classes``, ``classes``,
``shards_content_hash``, ``seed``. It is always read with ``weights_only=True``: loading a file
someone else wrote then cannot run their code, and a file that needs more than that (a pickled
class) is refused with a message instead of being executed.

Nor does the file decide how much memory the model takes. ``num_classes`` and ``train_params``
pass the model registry's limits (a known model, known options, at most
:data:`~segflow.models.registry.MAX_CLASSES` classes, short option lists), and the network is
first built on PyTorch's ``meta`` device, which records shapes and allocates nothing. Its
state_dict must then match the checkpoint's tensors key for key and shape for shape, so the
real model is never larger than the weights the file already holds; the first key that differs
is named in one line, instead of ``load_state_dict``'s page-long report.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from segflow.config import TrainParams
from segflow.errors import SegflowError
from segflow.models.aux import without_aux
from segflow.models.crf_rnn import CRFasRNN, MeanFieldCRF
from segflow.models.registry import build


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(p: TrainParams, num_classes: int) -> nn.Module:
    """The model ``train`` params describe (weights freshly initialised), with its CRF-as-RNN
    head when ``train.crf_rnn`` is set."""
    net = build(
        p.model,
        num_classes,
        backbone=p.backbone,
        output_stride=p.output_stride,
        pretrained=p.pretrained,
        **p.model_options,
    )
    if p.crf_rnn is None:
        return net

    c = p.crf_rnn
    crf = MeanFieldCRF(
        num_classes, iterations=c.iterations, window=c.window, downsample=c.downsample,
        theta_alpha=c.theta_alpha, theta_beta=c.theta_beta, theta_gamma=c.theta_gamma,
    )  # fmt: skip
    return CRFasRNN(net, crf, freeze_net=c.freeze_net)


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
    """Rebuild the network of a checkpoint payload (eval mode), within the zoo's limits.

    Every way the payload can be wrong (a field missing or out of bounds, a model the registry
    refuses, weights that do not fit it) is one SegflowError line naming ``source``.
    """
    if "train_params" not in payload or "num_classes" not in payload or "model" not in payload:
        raise SegflowError(f"{source}: not a segflow training checkpoint (no train_params)")
    num_classes = payload["num_classes"]
    state = _state_dict(payload["model"], source)
    # No pretrained file: the checkpoint's weights replace the backbone's anyway.
    p = _train_params(payload["train_params"], source).model_copy(update={"pretrained": None})
    # Shapes only: a model of any size costs nothing here, and the registry refuses a class
    # count or an option outside the zoo's limits before a constructor runs.
    with torch.device("meta"):
        skeleton = _build(p, num_classes, source)
    _require_same_shapes(skeleton.state_dict(), state, source, f"{p.model}, {num_classes} classes")
    model = _build(p, num_classes, source)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # shapes matched; a dtype that cannot be copied, say
        first = str(exc).strip().splitlines()[0]
        raise SegflowError(f"{source}: weights do not load into the model ({first})") from None
    # An auxiliary head only served the training loss: the scored and served model is without it.
    return without_aux(model).eval()


def _state_dict(state: object, source: str | Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise SegflowError(f"{source}: model: expected a state_dict (names -> tensors)")
    return state


def _train_params(raw: object, source: str | Path) -> TrainParams:
    """The checkpoint's ``train_params`` through params.yaml's schema; the first error, named."""
    try:
        return TrainParams.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"])
        where = f"train_params.{field}" if field else "train_params"
        raise SegflowError(f"{source}: {where}: {err['msg']}") from None


def _build(p: TrainParams, num_classes: object, source: str | Path) -> nn.Module:
    """``build_model`` with every refusal naming the checkpoint.

    The registry's and the constructors' checks raise SegflowError; a value of the wrong type or
    a size that overflows (a width of 10**12) reaches PyTorch, whose error names no file.
    """
    try:
        return build_model(p, num_classes)
    except SegflowError as exc:
        raise SegflowError(f"{source}: {exc}") from None
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SegflowError(
            f"{source}: train_params describe a {p.model} that cannot be built ({first})"
        ) from None


def _require_same_shapes(
    expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str | Path, what: str
) -> None:
    """The checkpoint's tensors are exactly the model's: same names, same shapes.

    One line naming the first difference in the model's own order (then the first name the model
    does not have) and how many names differ in all.
    """
    problems = []
    for key, tensor in expected.items():
        if key not in state:
            problems.append(f"{key} is missing (model {tuple(tensor.shape)})")
        elif state[key].shape != tensor.shape:
            problems.append(
                f"{key} is {tuple(state[key].shape)} in the checkpoint, "
                f"{tuple(tensor.shape)} in the model"
            )
    problems += [
        f"{key} is not in the model (checkpoint {tuple(t.shape)})"
        for key, t in state.items()
        if key not in expected
    ]
    if problems:
        more = f" ({len(problems)} tensors differ)" if len(problems) > 1 else ""
        raise SegflowError(
            f"{source}: weights do not fit the model it describes ({what}): {problems[0]}{more}"
        )


def initial_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The trained weights of checkpoint ``path`` (``train.init_from``), as one state_dict."""
    payload = read_checkpoint(path)
    if "model" not in payload:
        raise SegflowError(f"{path}: not a segflow training checkpoint (no model)")
    return _state_dict(payload["model"], path)


def load_initial_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Start ``model`` from another run's trained ``weights`` (a checkpoint's ``model``).

    For fine-tuning, e.g. the CRF-as-RNN paper's second stage: a network trained without the
    CRF head initialises the ``net.*`` part of a :class:`~segflow.models.crf_rnn.CRFasRNN`,
    whose CRF starts from its own initial values. Every tensor of the network must be there with
    its shape (one line naming the first that is not, as for a checkpoint).
    """
    weights = _state_dict(weights, source)
    # A CRFasRNN takes a plain network's weights into its ``net``, a CRF-as-RNN run's whole.
    has_crf = any(k.startswith("crf.") for k in weights)
    target = model.net if isinstance(model, CRFasRNN) and not has_crf else model
    _require_same_shapes(target.state_dict(), weights, source, type(target).__name__)
    target.load_state_dict(weights)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a checkpoint written by the train stage (eval mode)."""
    return model_from_payload(read_checkpoint(path, map_location), path)
