"""Stage evaluate: models/best.pt + test shards + reports/crf_params.json -> reports/metrics.json,
reports/eval/ (PA, MPA, mIoU, FWIoU, Dice, F-score without and with the tuned CRF at the masks'
original resolution, the served path's speed, per-class report, serving.json),
reports/eval_image_counts.npz (each image's counts on the gate's decision split, for the
promotion gate's paired bootstrap; never the test split's).

The test split is scored once, with what crf_tune chose on val, through the served path of
:mod:`segflow.evaluate.serving` (network at the training scale, logits resized to the original
size); both the figures without and with the CRF are reported, the served path is timed, and
the serving spec the registered model will carry is written beside the report. The gate's
decision split (``gate.split``: dev, else val) is scored through the same served path for the
register stage: the gate compares models there, so the test split decides nothing.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from segflow.config import Params
from segflow.data.datasets.base import ClassInfo
from segflow.data.groups import gate_split
from segflow.data.shards import read_index, verify_shards
from segflow.evaluate.bootstrap import ImageCounts, save_image_counts
from segflow.evaluate.crf_split import crf_over_split
from segflow.evaluate.metrics import metrics_from_confusion
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.report import QualitativeSample, write_report
from segflow.evaluate.scores import describe_sizes, flat_metrics
from segflow.evaluate.serving import Predictor, ServingSpec, load_predictor
from segflow.evaluate.speed import measure_inference
from segflow.evaluate.split_scores import score_split
from segflow.io import write_json
from segflow.logs import console
from segflow.paths import (
    BEST_MODEL,
    CRF_PARAMS,
    EVAL_REPORT,
    IMAGE_COUNTS,
    METRICS,
    SERVING_SPEC,
    SHARDS,
)
from segflow.postprocess.crf import refine_labels
from segflow.postprocess.crf_params import CRFChoice, CRFParams, read_crf_choice
from segflow.postprocess.probs import load_probs

SPEED_WARMUP = 2


def main(params: Params) -> None:
    verify_shards(SHARDS)  # a damaged shard: one line naming it, before any worker starts
    m = evaluate_split(params, BEST_MODEL, SHARDS, CRF_PARAMS, METRICS, EVAL_REPORT, IMAGE_COUNTS)
    console.print(
        f"evaluate: {params.dataset.test_split} at {m['scored_resolution']} (network at "
        f"{m['network_resolution']}): mIoU {m['miou']}, {m['miou_crf']} with CRF (served: CRF "
        f"{'on' if m['crf_applied'] else 'off'}), {m['ms_per_image']} ms per image served "
        f"-> {METRICS}, {EVAL_REPORT}/index.html"
    )


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
    the CRF; write the flat metrics (DVC metrics file) and the report directory (with the
    serving spec); score the gate's decision split the same way and write its per-image counts
    without and with the CRF (``counts_path``, what the promotion gate resamples); return the
    flat metrics."""
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
        f"the original size. CRF on or off was decided on {choice.split} by crf_tune "
        f"({_val_text(choice)}): the served model runs {served.spec.describe()}; both columns "
        "are reported for information."
    )
    write_report(
        report_dir, classes, before, with_crf.metrics, pred.confusion, with_crf.confusion,
        samples, speed, title=f"segflow evaluation: {params.dataset.name} "
        f"{params.dataset.test_split} ({ev.mode} inference)", protocol=protocol,
        extra_files={SERVING_SPEC.name: served.spec.to_dict()},
    )  # fmt: skip
    decision = gate_split(params.gate.split, index["splits"])
    scores = score_split(
        served, choice.params, shard_dir, decision, num_classes, params.crf.images_per_task
    )
    counts = {"raw": scores.raw, "crf": scores.crf}
    save_image_counts(counts_path, ImageCounts(decision, scores.ids, counts))
    metrics["gate_split"] = decision
    write_json(metrics_path, metrics)
    return metrics


def _val_text(choice: CRFChoice) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    verdict = "on" if choice.apply else "off"
    return (
        f"{choice.split} mIoU {pct(choice.val_miou)} without, {pct(choice.val_miou_crf)} with "
        f"the best setting on {choice.num_images} images: {verdict}"
    )


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
