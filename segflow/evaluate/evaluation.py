"""The crf_tune and evaluate stages' work: predict a split, sweep or apply the CRF, score, report.

crf_tune predicts (a capped number of) val images into a kept directory of compact
probabilities and sweeps the CRF settings over them with Ray Tune; evaluate predicts the test
split into a temporary directory, scores the argmax, runs the tuned CRF over the split as Ray
tasks, measures speed and writes the metrics file and the report. Both read the model the
train stage wrote and run inference in the mode of ``params.evaluate``.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from segflow.config import Params
from segflow.data.datasets.base import ClassInfo
from segflow.data.shards import read_index
from segflow.evaluate.bootstrap import save_image_counts
from segflow.evaluate.metrics import metrics_from_confusion
from segflow.evaluate.predict_split import inference_options, predict_split
from segflow.evaluate.report import QualitativeSample, write_report
from segflow.evaluate.speed import measure_inference
from segflow.io import write_json
from segflow.postprocess.crf import CRFParams, crf_over_split, refine_labels
from segflow.postprocess.probs import load_probs
from segflow.train.loop import default_device, load_model
from segflow.tune.crf_search import SweepResult, crf_sweep, read_best, write_best

#: Flat metric names of reports/metrics.json -> keys of metrics_from_confusion.
METRIC_KEYS = {"pa": "pixel_accuracy", "mpa": "mean_accuracy", "miou": "miou", "fwiou": "fwiou"}
SPEED_WARMUP = 2


def tune_crf(
    params: Params,
    model_path: str | Path,
    shard_dir: str | Path,
    prob_dir: str | Path,
    storage_path: str | Path,
    out_path: str | Path,
) -> SweepResult:
    """Predict val into ``prob_dir``, sweep ``params.crf`` over it, write the best to
    ``out_path`` (``{"params": ..., "metrics": ...}``)."""
    device = default_device()
    model = load_model(model_path, map_location=str(device))
    num_classes = int(read_index(Path(shard_dir))["num_classes"])
    c = params.crf
    predict_split(
        model, shard_dir, "val", prob_dir, num_classes, params.evaluate, params.loader,
        dtype=c.prob_dtype, max_images=c.max_images, device=device,
    )  # fmt: skip
    del model  # the sweep's Ray workers need the memory, not the model
    result = crf_sweep(
        prob_dir, num_classes, storage_path, space=c.space(), search=c.search,
        num_samples=c.num_samples, cpus_per_trial=c.cpus_per_trial, seed=params.seed,
        name=f"crf_tune_{time.strftime('%Y%m%d-%H%M%S')}",
    )  # fmt: skip
    write_best(out_path, result.best, result.best_metrics)
    return result


def flat_metrics(metrics: dict, suffix: str = "") -> dict:
    """PA, MPA, mIoU, FWIoU under short names (``miou``, ``miou_crf``); NaN as null."""
    out = {}
    for short, key in METRIC_KEYS.items():
        value = metrics[key]
        out[short + suffix] = None if value is None or math.isnan(value) else round(value, 6)
    return out


def evaluate_split(
    params: Params,
    model_path: str | Path,
    shard_dir: str | Path,
    crf_path: str | Path,
    metrics_path: str | Path,
    report_dir: str | Path,
    counts_path: str | Path,
) -> dict:
    """Score ``params.dataset.test_split`` without and with the tuned CRF; write the flat
    metrics (DVC metrics file), the report directory and each image's counts without and with
    the CRF (``counts_path``, what the promotion gate resamples); return the flat metrics."""
    crf = read_best(crf_path)  # before any work: a missing file is the user's first error
    device = default_device()
    model = load_model(model_path, map_location=str(device))
    index = read_index(Path(shard_dir))
    num_classes = int(index["num_classes"])
    classes = [ClassInfo.from_dict(c) for c in index["classes"]]
    ev = params.evaluate
    # The test probabilities are only an intermediate: a temp directory, removed at the end.
    # On a Ray cluster, point TMPDIR at storage every node can read.
    with tempfile.TemporaryDirectory(prefix="segflow-probs-") as tmp:
        prob_dir = Path(tmp) / "probs"
        pred = predict_split(
            model, shard_dir, params.dataset.test_split, prob_dir, num_classes, ev,
            params.loader, dtype=params.crf.prob_dtype, device=device,
        )  # fmt: skip
        with_crf = crf_over_split(
            prob_dir, crf, num_classes, images_per_task=params.crf.images_per_task,
            ids=pred.file_ids,
        )  # fmt: skip
        samples = _samples(prob_dir, pred.sample_ids, pred.file_ids, crf, ev.num_samples_report)
    speed = measure_inference(
        model, pred.image_size, device, repeats=ev.speed_repeats, warmup=SPEED_WARMUP,
        mode=ev.mode, **inference_options(ev, params.loader),
    )  # fmt: skip
    before = metrics_from_confusion(pred.confusion)
    metrics = {
        **flat_metrics(before),
        **flat_metrics(with_crf.metrics, "_crf"),
        "ms_per_image": round(speed["ms_per_image_median"], 3),
        "peak_memory_mb": round(speed["peak_memory_mb"], 3),
        "num_images": len(pred.sample_ids),
    }
    write_report(
        report_dir, classes, before, with_crf.metrics, pred.confusion, with_crf.confusion,
        samples, speed, title=f"segflow evaluation: {params.dataset.name} "
        f"{params.dataset.test_split} ({ev.mode} inference)",
    )  # fmt: skip
    counts = {"raw": pred.image_counts, "crf": with_crf.image_counts}
    save_image_counts(counts_path, pred.sample_ids, **counts)
    write_json(metrics_path, metrics)
    return metrics


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
