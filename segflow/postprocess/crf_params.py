"""The dense CRF's settings and crf_tune's decision: the one CRF schema, importable from anywhere.

:class:`CRFParams` is the only description of what a CRF setting may be (``crf.<field>`` in
errors): params.yaml's ``crf`` section is checked against it by :mod:`segflow.config`, a Tune
sweep builds its points with it, and reports/crf_params.json is read back through it. So this
module sits at the bottom of the layers: it imports nothing of segflow but the error type and
the atomic JSON writer, and loading params.yaml does not pull in pydensecrf, evaluation or Ray.

:class:`CRFChoice` is what crf_tune decided on val (the best setting, and whether the served
model applies it at all); :func:`read_crf_choice` is the one reader of that file.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from segflow.errors import SegflowError
from segflow.io import write_json


def _is_real(value: object) -> bool:
    # numbers.Real also admits numpy scalars, which Tune's samplers hand out.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings; the defaults are DeepLab v2's published values for VOC."""

    w_gauss: float = 3.0
    sigma_gamma: float = 3.0
    w_bilateral: float = 4.0
    sigma_alpha: float = 60.0
    sigma_beta: float = 5.0
    iterations: int = 10

    def __post_init__(self) -> None:
        for name in ("w_gauss", "w_bilateral"):
            value = getattr(self, name)
            if not (_is_real(value) and math.isfinite(value) and value >= 0):
                raise SegflowError(f"crf.{name}: {value!r} must be a finite number >= 0")
        for name in ("sigma_gamma", "sigma_alpha", "sigma_beta"):
            value = getattr(self, name)
            # A kernel width of 0 divides by zero inside the lattice; negative makes no sense.
            if not (_is_real(value) and math.isfinite(value) and value > 0):
                raise SegflowError(f"crf.{name}: {value!r} must be a finite number > 0")
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, numbers.Integral) or it < 1:
            raise SegflowError(f"crf.iterations: {it!r} must be an integer >= 1")

    @classmethod
    def from_dict(cls, data: dict) -> CRFParams:
        """Build from a mapping (params.yaml section, crf_params.json, a Tune config)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SegflowError(f"crf: unknown field(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if "iterations" in values and isinstance(values["iterations"], float):
            if not values["iterations"].is_integer():
                raise SegflowError(f"crf.iterations: {values['iterations']!r} must be an integer")
            values["iterations"] = int(values["iterations"])
        return cls(**values)

    def to_dict(self) -> dict:
        return {k: (int(v) if k == "iterations" else float(v)) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class CRFChoice:
    """What crf_tune decided, for evaluate and the served model (reports/crf_params.json).

    ``params`` is the best setting of the sweep; ``apply`` says whether the served model uses
    the CRF at all: only when that setting beat the plain prediction on the same images
    (``val_miou_crf`` > ``val_miou``) of ``split``: dev (held out of train by group) when the
    shards have it, else val. The test split never enters the decision.
    """

    params: CRFParams
    apply: bool
    val_miou: float | None
    val_miou_crf: float | None
    num_images: int
    metrics: dict
    split: str = "val"

    def served(self) -> CRFParams | None:
        return self.params if self.apply else None

    def to_dict(self) -> dict:
        return {
            "params": self.params.to_dict(),
            "apply": self.apply,
            "decided_on": {"split": self.split, "miou": self.val_miou,
                           "miou_crf": self.val_miou_crf, "num_images": self.num_images},
            "metrics": _json_safe(self.metrics),
        }  # fmt: skip


def decide_crf(
    params: CRFParams, with_crf: dict, without_crf: dict, num_images: int, split: str = "val"
) -> CRFChoice:
    """Apply the CRF only when it scores a higher mIoU than the plain prediction on ``split``."""
    raw, refined = _finite(without_crf.get("miou")), _finite(with_crf.get("miou"))
    apply = raw is not None and refined is not None and refined > raw
    return CRFChoice(params, apply, raw, refined, num_images, with_crf, split)


def _finite(value) -> float | None:
    return float(value) if _is_real(value) and math.isfinite(value) else None


def _json_safe(value):
    # JSON has no NaN: an undefined IoU (class absent everywhere) is written as null.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def write_crf_choice(path: str | Path, choice: CRFChoice) -> None:
    write_json(path, choice.to_dict())


def read_crf_choice(path: str | Path) -> CRFChoice:
    """The one reader of reports/crf_params.json; a missing or bad file names it."""
    path = Path(path)
    if not path.is_file():
        raise SegflowError(f"{path}: CRF parameters file not found (run the crf_tune stage)")
    try:
        data = json.loads(path.read_text())
        # "val": the block's name before choices could be made on a dev split
        params, apply = data["params"], data["apply"]
        val = data["decided_on"] if "decided_on" in data else data["val"]
        num_images = int(val["num_images"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise SegflowError(
            f"{path}: not a CRF parameters file ({type(err).__name__}: {err}); "
            "rerun the crf_tune stage"
        ) from None
    if not isinstance(apply, bool):
        raise SegflowError(f"{path}: apply: {apply!r} must be true or false")
    try:
        crf = CRFParams.from_dict(params)
    except SegflowError as err:
        raise SegflowError(f"{path}: {err}") from None
    return CRFChoice(
        crf, apply, _finite(val.get("miou")), _finite(val.get("miou_crf")), num_images,
        data.get("metrics") or {}, str(val.get("split", "val")),
    )  # fmt: skip


#: The CRF settings of params.yaml's ``crf`` section, in CRFParams' order.
CRF_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CRFParams))
