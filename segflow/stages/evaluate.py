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

import csv
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from segflow.config import Params
from segflow.data.datasets.base import ClassInfo
from segflow.data.groups import gate_split
from segflow.data.shards import read_index, verify_shards
from segflow.evaluate.bootstrap import ImageCounts, miou_of_counts, save_image_counts
from segflow.evaluate.crf_split import crf_over_split
from segflow.evaluate.metrics import metrics_from_confusion
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.report import (
    PickedSample,
    Provenance,
    QualitativeSample,
    pick_samples,
    write_report,
)
from segflow.evaluate.scores import describe_sizes, flat_metrics
from segflow.evaluate.serving import Predictor, ServingSpec, load_predictor
from segflow.evaluate.speed import measure_inference
from segflow.evaluate.split_scores import score_split
from segflow.io import read_json, write_json
from segflow.logs import console
from segflow.paths import (
    BEST_MODEL,
    CRF_PARAMS,
    EVAL_REPORT,
    IMAGE_COUNTS,
    METRICS,
    RUN_INFO,
    SERVING_SPEC,
    TRAIN_CURVE,
    TRAIN_METRICS,
)
from segflow.postprocess.crf import refine_labels
from segflow.postprocess.crf_params import CRFChoice, CRFParams, read_crf_choice
from segflow.postprocess.probs import load_probs
from segflow.run_info import read_run_info

SPEED_WARMUP = 2


def main(params: Params) -> None:
    shards = params.shard.uri  # a local directory or an object-store prefix
    verify_shards(shards)  # a damaged shard: one line naming it, before any worker starts
    provenance = model_provenance(RUN_INFO, BEST_MODEL, TRAIN_METRICS)
    m = evaluate_split(
        params, BEST_MODEL, shards, CRF_PARAMS, METRICS, EVAL_REPORT, IMAGE_COUNTS,
        provenance=provenance, curve=read_curve(TRAIN_CURVE),
    )  # fmt: skip
    console.print(
        f"evaluate: {params.dataset.test_split} at {m['scored_resolution']} (network at "
        f"{m['network_resolution']}): mIoU {m['miou']:.4f}, {m['miou_crf']:.4f} "
        f"with CRF (served: CRF {'on' if m['crf_applied'] else 'off'}), "
        f"{m['ms_per_image']:.0f} ms per image served "
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
    *,
    provenance: Provenance | None = None,
    curve: list[dict] | None = None,
) -> dict:
    """Score ``params.dataset.test_split`` at the masks' original resolution without and with
    the CRF; write the flat metrics (DVC metrics file) and the report directory (with the
    serving spec, ``provenance`` in its header and the training ``curve``); score the gate's
    decision split the same way and write its per-image counts without and with the CRF
    (``counts_path``, what the promotion gate resamples); return the flat metrics."""
    choice = read_crf_choice(crf_path)  # before any work: a missing file is the first error
    index = read_index(shard_dir)
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
        # The report's samples are ranked by the served prediction's own mIoU.
        served_counts = with_crf.image_counts if choice.apply else pred.image_counts
        picks = pick_samples(list(miou_of_counts(served_counts)), ev.num_samples_report)
        samples = _samples(prob_dir, pred.sample_ids, pred.file_ids, choice.params, picks,
                           params.dataset.test_split)  # fmt: skip
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
    provenance = dataclasses.replace(
        provenance or Provenance(),
        dataset=str(index.get("dataset", params.dataset.name)),
        shards_hash=(provenance and provenance.shards_hash) or index.get("content_hash"),
        evaluated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    write_report(
        report_dir, classes, before, with_crf.metrics, pred.confusion, with_crf.confusion,
        samples, speed, title=f"segflow evaluation: {params.dataset.name} "
        f"{params.dataset.test_split} ({ev.mode} inference)", protocol=protocol,
        extra_files={SERVING_SPEC.name: served.spec.to_dict()}, crf_served=choice.apply,
        provenance=provenance, curve=curve,
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
        return "-" if x is None else f"{100 * x:.2f} %"

    verdict = "on" if choice.apply else "off"
    return (
        f"{choice.split} mIoU {pct(choice.val_miou)} without, {pct(choice.val_miou_crf)} with "
        f"the best setting on {choice.num_images} images: {verdict}"
    )


def _samples(
    prob_dir: Path,
    sample_ids: list[str],
    file_ids: list[str],
    crf: CRFParams,
    picks: list[PickedSample],
    split: str,
) -> list[QualitativeSample]:
    """The picked images with their prediction before and after the CRF, captioned."""
    out = []
    for pick in picks:
        record = load_probs(prob_dir, file_ids[pick.index])
        pred = record.probs.argmax(axis=0).astype(np.uint8)
        pred_crf = refine_labels(record.image, record.probs, crf)
        caption = pick.caption(sample_ids[pick.index], split)
        sample = QualitativeSample(sample_ids[pick.index], record.image, record.label, pred,
                                   pred_crf, caption)  # fmt: skip
        out.append(sample)
    return out


def model_provenance(run_info: Path, model_path: Path, train_metrics: Path) -> Provenance:
    """Who the scored model is, from the train stage's records: models/run.json (which must
    describe ``model_path``) and reports/train_metrics.json (epochs, the epoch kept). A record
    that is missing, or a field an older train stage did not write, reads "not recorded" in the
    report; a run.json that describes another model is an error (the header would name the
    wrong run)."""
    run = read_run_info(run_info, model_path) if Path(run_info).is_file() else {}
    hint = "run the train stage (dvc repro train)"
    summary = read_json(train_metrics, hint) if Path(train_metrics).is_file() else {}
    return Provenance(
        model=run.get("model"),
        backbone=run.get("backbone"),
        epochs=summary.get("epochs"),
        best_epoch=summary.get("best_epoch"),
        selected_on=summary.get("selected_on"),
        mlflow_run_id=run.get("mlflow_run_id"),
        mlflow_run_name=run.get("mlflow_run_name"),
        git_commit=run.get("git_commit"),
        shards_hash=run.get("shards_content_hash"),
    )


def read_curve(path: Path) -> list[dict] | None:
    """reports/train_curve.csv as rows (empty cells None); None when there is no curve."""
    if not Path(path).is_file():
        return None
    with open(path, newline="") as f:
        rows = [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)]
    return rows or None
