"""The crf_tune and evaluate stages' work: predict a split, sweep or apply the CRF, score, report.

Both stages score at the masks' original resolution, through the served path of
:mod:`segflow.evaluate.serving` (network at the training scale, logits resized to the original
size). crf_tune makes every choice on val: it predicts (a capped number of) val images into a
kept directory of compact probabilities, sweeps the CRF settings over them with Ray Tune, and
decides whether the served model applies the best setting at all (only if it beats the plain
prediction on those val images). evaluate scores the test split once with what was chosen,
still reporting both the figures without and with the CRF, times the served path, and writes
the metrics file, the report and the serving spec the registered model will carry.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from segflow.config import Params
from segflow.data.datasets.base import ClassInfo
from segflow.data.shards import read_index
from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import save_image_counts
from segflow.evaluate.metrics import metrics_from_confusion
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.report import QualitativeSample, write_report
from segflow.evaluate.serving import Predictor, ServingSpec, load_predictor
from segflow.evaluate.speed import measure_inference
from segflow.io import write_json
from segflow.postprocess.crf import (
    CRFChoice,
    CRFParams,
    crf_over_split,
    decide_crf,
    read_crf_choice,
    refine_labels,
    write_crf_choice,
)
from segflow.postprocess.probs import load_probs
from segflow.tune.crf_search import crf_sweep

#: Flat metric names of reports/metrics.json -> keys of metrics_from_confusion.
METRIC_KEYS = {
    "pa": "pixel_accuracy", "mpa": "mean_accuracy", "miou": "miou", "fwiou": "fwiou",
    "mdice": "mdice", "mfscore": "mfscore", "mprecision": "mprecision", "mrecall": "mrecall",
}  # fmt: skip
SPEED_WARMUP = 2
#: The serving spec evaluate scored with, inside the report directory (the register stage reads it).
SERVING_FILE = "serving.json"


def tune_crf(
    params: Params,
    model_path: str | Path,
    shard_dir: str | Path,
    prob_dir: str | Path,
    storage_path: str | Path,
    out_path: str | Path,
) -> CRFChoice:
    """Predict val into ``prob_dir``, sweep ``params.crf`` over it, decide CRF on or off on
    those val images and write the choice to ``out_path`` (reports/crf_params.json)."""
    index = read_index(Path(shard_dir))
    num_classes = int(index["num_classes"])
    c = params.crf
    predictor = load_predictor(
        model_path, ServingSpec.from_params(params, index.get("resize"), None)
    )
    pred = predict_split(predictor, shard_dir, "val", prob_dir, num_classes, c.max_images)
    del predictor  # the sweep's Ray workers need the memory, not the model
    result = crf_sweep(
        prob_dir, num_classes, storage_path, space=c.space(), search=c.search,
        num_samples=c.num_samples, cpus_per_trial=c.cpus_per_trial, seed=params.seed,
        name=f"crf_tune_{time.strftime('%Y%m%d-%H%M%S')}",
    )  # fmt: skip
    without = metrics_from_confusion(pred.confusion)
    choice = decide_crf(result.best, result.best_metrics, without, len(pred.sample_ids))
    write_crf_choice(out_path, choice)
    return choice


def flat_metrics(metrics: dict, suffix: str = "") -> dict:
    """PA, MPA, mIoU, FWIoU, mDice, mFscore, mPrecision, mRecall under short names (``miou``,
    ``miou_crf``); NaN as null."""
    out = {}
    for short, key in METRIC_KEYS.items():
        value = metrics[key]
        out[short + suffix] = None if value is None or math.isnan(value) else round(value, 6)
    return out


def describe_sizes(sizes: list[tuple[int, int]]) -> str:
    """``360x480``, or ``3 sizes, 281x500 to 500x500`` for a split of mixed sizes."""
    names = [f"{h}x{w}" for h, w in sizes]
    if len(names) == 1:
        return names[0]
    return f"{len(names)} sizes, {names[0]} to {names[-1]}" if names else "none"


def evaluate_split(
    params: Params,
    model_path: str | Path,
    shard_dir: str | Path,
    crf_path: str | Path,
    metrics_path: str | Path,
    report_dir: str | Path,
    counts_path: str | Path,
) -> dict:
    """Score ``params.dataset.test_split`` at the masks' original resolution without and with
    the CRF; write the flat metrics (DVC metrics file), the report directory (with the serving
    spec) and each image's counts without and with the CRF (``counts_path``, what the
    promotion gate resamples); return the flat metrics."""
    choice = read_crf_choice(crf_path)  # before any work: a missing file is the first error
    index = read_index(Path(shard_dir))
    num_classes = int(index["num_classes"])
    classes = [ClassInfo.from_dict(c) for c in index["classes"]]
    ev = params.evaluate
    plain = ServingSpec.from_params(params, index.get("resize"), None)
    predictor = load_predictor(model_path, plain)
    served = Predictor(predictor.network, dataclasses.replace(plain, crf=choice.served()),
                       predictor.device)  # fmt: skip
    # The test probabilities are only an intermediate: a temp directory, removed at the end.
    # On a Ray cluster, point TMPDIR at storage every node can read.
    with tempfile.TemporaryDirectory(prefix="segflow-probs-") as tmp:
        prob_dir = Path(tmp) / "probs"
        pred = predict_split(predictor, shard_dir, params.dataset.test_split, prob_dir, num_classes)
        with_crf = crf_over_split(
            prob_dir, choice.params, num_classes, images_per_task=params.crf.images_per_task,
            ids=pred.file_ids,
        )  # fmt: skip
        samples = _samples(prob_dir, pred.sample_ids, pred.file_ids, choice.params,
                           ev.num_samples_report)  # fmt: skip
        first_image = load_probs(prob_dir, pred.file_ids[0]).image
    timing = served.timed(first_image, ev.speed_repeats, SPEED_WARMUP)
    speed = measure_inference(
        predictor.network, tuple(predictor.network_input(first_image).shape[:2]),
        predictor.device, repeats=ev.speed_repeats, warmup=SPEED_WARMUP, mode=ev.mode,
        **plain.options,
    )  # fmt: skip
    speed.update(timing, served=served.spec.describe(), served_size=list(first_image.shape[:2]))
    before = metrics_from_confusion(pred.confusion)
    metrics = {
        **flat_metrics(before),
        **flat_metrics(with_crf.metrics, "_crf"),
        "crf_applied": choice.apply,
        "ms_per_image": round(timing["ms_per_image"], 3),
        "ms_per_image_network": round(timing["ms_per_image_network"], 3),
        "peak_memory_mb": round(speed["peak_memory_mb"], 3),
        "num_images": len(pred.sample_ids),
        "network_resolution": describe_sizes(pred.network_sizes),
        "scored_resolution": describe_sizes(pred.label_sizes),
    }
    protocol = (
        f"Test split `{params.dataset.test_split}` ({metrics['num_images']} images), scored once "
        f"at the masks' original resolution ({metrics['scored_resolution']}); the network ran at "
        f"{metrics['network_resolution']} ({ev.mode} inference) and its logits were resized to "
        f"the original size. CRF on or off was decided on val by crf_tune "
        f"({_val_text(choice)}): the served model runs {served.spec.describe()}; both columns "
        "are reported for information."
    )
    write_report(
        report_dir, classes, before, with_crf.metrics, pred.confusion, with_crf.confusion,
        samples, speed, title=f"segflow evaluation: {params.dataset.name} "
        f"{params.dataset.test_split} ({ev.mode} inference)", protocol=protocol,
        extra_files={SERVING_FILE: served.spec.to_dict()},
    )  # fmt: skip
    counts = {"raw": pred.image_counts, "crf": with_crf.image_counts}
    save_image_counts(counts_path, pred.sample_ids, **counts)
    write_json(metrics_path, metrics)
    return metrics


def _val_text(choice: CRFChoice) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    verdict = "on" if choice.apply else "off"
    return (
        f"val mIoU {pct(choice.val_miou)} without, {pct(choice.val_miou_crf)} with the best "
        f"setting on {choice.num_images} images: {verdict}"
    )


def served_miou(metrics: dict) -> float:
    """The test mIoU of what the registered model returns (with the CRF when crf_tune chose it)."""
    key = "miou_crf" if metrics.get("crf_applied") else "miou"
    value = metrics.get(key)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise SegflowError(f"metrics: {key} is {value!r}; a model without a test score")
    return float(value)


def _samples(
    prob_dir: Path, sample_ids: list[str], file_ids: list[str], crf: CRFParams, count: int
) -> list[QualitativeSample]:
    """The first ``count`` images with their prediction before and after the CRF."""
    out = []
    for sample_id, file_id in list(zip(sample_ids, file_ids, strict=True))[:count]:
        record = load_probs(prob_dir, file_id)
        pred = record.probs.argmax(axis=0).astype(np.uint8)
        pred_crf = refine_labels(record.image, record.probs, crf)
        out.append(QualitativeSample(sample_id, record.image, record.label, pred, pred_crf))
    return out
