"""Fully connected CRF (Krähenbühl & Koltun 2011) on softmax outputs, as in DeepLab v1/v2.

The energy has a unary term -log p(class) from the network and two Potts pairwise kernels
between every pair of pixels i, j (DeepLab's names):

    bilateral  w_bilateral * exp(-|p_i - p_j|^2 / 2 sigma_alpha^2 - |I_i - I_j|^2 / 2 sigma_beta^2)
    Gaussian   w_gauss     * exp(-|p_i - p_j|^2 / 2 sigma_gamma^2)

The bilateral kernel pulls pixels of similar colour nearby towards the same label, which is what
snaps a network's blurry, down-sampled boundaries onto image edges; the Gaussian kernel only
removes small isolated blobs. Mean-field inference (pydensecrf, the authors' C++ code) runs
``iterations`` steps and returns the approximate marginals.

A split is refined image by image: :func:`crf_over_split_serial` in this process, or
:func:`crf_over_split` as Ray tasks (one task per few images; tasks get file paths, not arrays,
so the object store carries only the C x C confusion counts each task returns). Counts are
int64, so the Ray sum equals the serial sum exactly, whatever order the tasks finish in.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import SplitCounts
from segflow.io import write_json
from segflow.postprocess.probs import list_ids, prob_path, read_prob_file
from segflow.raycluster import connect_ray

#: Probabilities are clipped to this before -log so a confident 0 does not become +inf energy.
PROB_FLOOR = 1e-8


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
    """What crf_tune decided on val, for evaluate and the served model (reports/crf_params.json).

    ``params`` is the best setting of the sweep; ``apply`` says whether the served model uses
    the CRF at all: only when that setting beat the plain prediction on the same val images
    (``val_miou_crf`` > ``val_miou``). The test split never enters the decision.
    """

    params: CRFParams
    apply: bool
    val_miou: float | None
    val_miou_crf: float | None
    num_images: int
    metrics: dict

    def served(self) -> CRFParams | None:
        return self.params if self.apply else None

    def to_dict(self) -> dict:
        return {
            "params": self.params.to_dict(),
            "apply": self.apply,
            "val": {"miou": self.val_miou, "miou_crf": self.val_miou_crf,
                    "num_images": self.num_images},
            "metrics": _json_safe(self.metrics),
        }  # fmt: skip


def decide_crf(params: CRFParams, with_crf: dict, without_crf: dict, num_images: int) -> CRFChoice:
    """Apply the CRF only when it scores a higher val mIoU than the plain prediction."""
    raw, refined = _finite(without_crf.get("miou")), _finite(with_crf.get("miou"))
    apply = raw is not None and refined is not None and refined > raw
    return CRFChoice(params, apply, raw, refined, num_images, with_crf)


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
        params, apply, val = data["params"], data["apply"], data["val"]
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
        data.get("metrics") or {},
    )  # fmt: skip


def _check_inputs(image: np.ndarray, probs: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SegflowError(
            f"dense_crf: image must be an HxWx3 uint8 RGB array, got {image.shape} {image.dtype}"
        )
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise SegflowError(
            f"dense_crf: probs must be CxHxW with H, W of the image {image.shape[:2]}, "
            f"got {probs.shape}"
        )
    if probs.shape[0] < 2:
        raise SegflowError(f"dense_crf: probs has {probs.shape[0]} class(es); need at least 2")


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine softmax ``probs`` (CxHxW) of an RGB ``image`` (HxWx3 uint8); CxHxW float32 out.

    Deterministic: the same inputs give bit-identical output (pydensecrf is single-threaded).
    """
    import pydensecrf.densecrf as dcrf

    params = params or CRFParams()
    _check_inputs(image, probs)
    num_classes, height, width = probs.shape
    unary = -np.log(np.clip(probs.reshape(num_classes, -1), PROB_FLOOR, 1.0))
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    # A zero weight is a valid point of a sweep ("no such kernel"): skip it instead of
    # adding a kernel that costs a lattice pass and contributes nothing.
    if params.w_gauss > 0:
        crf.addPairwiseGaussian(sxy=float(params.sigma_gamma), compat=float(params.w_gauss))
    if params.w_bilateral > 0:
        crf.addPairwiseBilateral(
            sxy=float(params.sigma_alpha),
            srgb=float(params.sigma_beta),
            rgbim=np.ascontiguousarray(image),
            compat=float(params.w_bilateral),
        )
    q = crf.inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(num_classes, height, width)


def refine_labels(
    image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None
) -> np.ndarray:
    """The CRF's label map (HxW uint8 for <= 256 classes, else int64)."""
    labels = dense_crf(image, probs, params).argmax(axis=0)
    return labels.astype(np.uint8) if probs.shape[0] <= 256 else labels


# --- a whole split ---------------------------------------------------------------------------


@dataclass
class SplitResult:
    """Confusion counts summed over a split (rows = truth), the metrics they give, and each
    image's counts (N x 3 x C: TP, GT, predicted pixels per class; in the order of the files)
    for the paired bootstrap of the promotion gate."""

    confusion: np.ndarray
    metrics: dict
    num_images: int
    image_counts: np.ndarray


def confusion_of_files(paths: list[str], params: CRFParams | None, num_classes: int) -> np.ndarray:
    """Confusion counts of each saved-probability file (N x C x C int64); ``params=None``: no CRF.

    This is the unit of work of a Ray task; it reads its inputs itself so that only paths go
    into the object store and only the small matrices come back.
    """
    import torch

    from segflow.evaluate.metrics import ConfusionMatrix

    out = np.zeros((len(paths), num_classes, num_classes), dtype=np.int64)
    for i, path in enumerate(paths):
        label, pred = labels_of_file(path, params, num_classes)
        cm = ConfusionMatrix(num_classes)
        cm.update(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(pred))
        out[i] = cm.mat.numpy()
    return out


def labels_of_file(
    path: str | Path, params: CRFParams | None, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) of one saved-probability file: the argmax of its
    probabilities, after the CRF unless ``params`` is None. What the evaluate stage scores."""
    record = read_prob_file(path)
    if record.probs.shape[0] != num_classes:
        raise SegflowError(
            f"{path}: probs have {record.probs.shape[0]} classes, expected {num_classes}"
        )
    if params is None:
        return record.label, record.probs.argmax(axis=0)
    return record.label, dense_crf(record.image, record.probs, params).argmax(axis=0)


def _split_paths(prob_dir: str | Path, ids: list[str] | None) -> list[str]:
    ids = list_ids(prob_dir) if ids is None else ids
    if not ids:
        raise SegflowError(f"{prob_dir}: no saved probabilities (*.npz) to refine")
    return [str(prob_path(prob_dir, i)) for i in ids]


def _result(counts: SplitCounts) -> SplitResult:
    from segflow.evaluate.metrics import metrics_from_confusion

    mat = counts.confusion
    return SplitResult(
        mat, metrics_from_confusion(mat), len(counts.image_counts), counts.image_counts
    )


def crf_over_split_serial(
    prob_dir: str | Path,
    params: CRFParams | None,
    num_classes: int,
    ids: list[str] | None = None,
) -> SplitResult:
    """The CRF over every image of ``prob_dir`` in this process (no Ray); ``params=None``
    scores the raw argmax, the "without CRF" figure."""
    paths = _split_paths(prob_dir, ids)
    counts = SplitCounts(len(paths), num_classes)
    for i, mat in enumerate(confusion_of_files(paths, params, num_classes)):
        counts.add(i, mat)
    return _result(counts)


def crf_over_split(
    prob_dir: str | Path,
    params: CRFParams | None,
    num_classes: int,
    num_cpus: int | None = None,
    images_per_task: int = 1,
    ids: list[str] | None = None,
) -> SplitResult:
    """The same as :func:`crf_over_split_serial`, as Ray tasks of one CPU each.

    One image per task is the default: an image of 360x480 takes ~1 s of CRF against ~1 ms of
    task overhead, and small tasks balance best over few cores. ``prob_dir`` must be readable
    from every node (shared or network storage) when running on a cluster. ``num_cpus`` sizes
    a local Ray started here; it is ignored when Ray is already running or $RAY_ADDRESS is set.
    """
    import ray

    if images_per_task < 1:
        raise SegflowError(f"crf.images_per_task: {images_per_task} must be >= 1")
    paths = _split_paths(prob_dir, ids)
    connect_ray(num_cpus)
    task = ray.remote(num_cpus=1)(confusion_of_files)
    starts = range(0, len(paths), images_per_task)
    refs = {task.remote(paths[i : i + images_per_task], params, num_classes): i for i in starts}
    counts = SplitCounts(len(paths), num_classes)
    # ray.wait hands back results as tasks finish; each lands at its files' positions.
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for offset, mat in enumerate(ray.get(done[0])):
            counts.add(refs[done[0]] + offset, mat)
    return _result(counts)
