"""Stage register: models/best.pt + reports/metrics.json + reports/eval/serving.json -> MLflow
Model Registry, reports/registry.json, reports/gate.md.

Registers the trained model as ``<prefix>-<dataset>`` (alias ``challenger``) with the serving
spec evaluate scored with, its test metrics and class table, then runs the promotion gate: the
champion is scored again on the same images of the gate's decision split (``gate.split``: dev,
else val; never the test split, whose shards this stage does not open), and ``champion`` moves
to the new version only if the paired bootstrap interval of the mIoU difference lies above
``gate.min_gain`` (with at least ``gate.min_images`` images).
Each version also gets its ONNX export beside the model (:mod:`segflow.deploy.registered`); a
model that cannot be exported is registered all the same, the reason in one line.

The test metrics (``test_miou`` the served path's, ``test_miou_network`` the network's alone,
``test_iou_<class>``: :mod:`segflow.lifecycle.run_card`), the evaluation report (artifact path
``evaluation/``) and its sample images are logged to the training run first, so the run in the
MLflow UI shows how its model scored next to how it trained; the run's one logged model is the
registered one, and the report is logged again once the version and its aliases are known. The
current tracking URI (``$MLFLOW_TRACKING_URI`` or the default store) must be the one training
logged to; a store that cannot be read stops the stage before anything is written. Any store
failure (a server that is down or does not answer within the ``mlflow.*`` policy, a read-only or
corrupt sqlite file) is one line naming the store, and reports/registry.json and reports/gate.md
are replaced only after every MLflow call has succeeded.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from segflow import tracking
from segflow.config import Params
from segflow.data.groups import gate_split
from segflow.data.shards import read_index, split_hash
from segflow.deploy.registered import attach_onnx, registered_onnx
from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import load_image_counts
from segflow.evaluate.report import REPORT_DATA, registry_text, render_registered
from segflow.evaluate.scores import served_miou
from segflow.io import atomic_path, read_json, write_json
from segflow.lifecycle.gate import decision_split_of, gate_markdown, run_gate
from segflow.lifecycle.registration import (
    aliases,
    check_run,
    log_evaluation,
    per_class_iou,
    register_model,
)
from segflow.logs import console
from segflow.paths import (
    BEST_MODEL,
    EVAL_REPORT,
    GATE_REPORT,
    IMAGE_COUNTS,
    METRICS,
    REGISTRY_RECORD,
    RUN_INFO,
    SERVING_SPEC,
)
from segflow.run_info import read_run_info


def main(params: Params) -> None:
    import mlflow

    shards = params.shard.uri  # a local directory or an object-store prefix
    record = register_and_gate(
        params, BEST_MODEL, RUN_INFO, METRICS, EVAL_REPORT, SERVING_SPEC, IMAGE_COUNTS, shards
    )
    report = gate_markdown(record)
    # Logged from a copy first: a store that fails now leaves both local reports as they were.
    with tempfile.TemporaryDirectory() as tmp, tracking.store_errors():
        copy = Path(tmp) / GATE_REPORT.name
        copy.write_text(report)
        mlflow.MlflowClient().log_artifact(record["mlflow_run_id"], str(copy), "evaluation")
    with atomic_path(GATE_REPORT) as tmp:
        tmp.write_text(report)
    write_json(REGISTRY_RECORD, record)
    decision = record["decision"]
    console.print(
        f"register: {record['name']} v{record['version']} ({', '.join(record['aliases'])}): "
        f"{decision['decision']}: {decision['reason']}"
    )


def register_and_gate(
    params: Params,
    model_path: Path,
    run_info: Path,
    metrics_path: Path,
    report_dir: Path,
    serving_path: Path,
    counts_path: Path,
    shard_dir: str | Path,
) -> dict:
    """Register ``model_path`` and run the gate; the record for reports/registry.json."""
    import mlflow

    run = read_run_info(run_info, model_path)  # best.pt must be the run's model
    metrics = read_json(metrics_path, "run the evaluate stage (dvc repro evaluate)")
    serving = read_json(serving_path, "run the evaluate stage (dvc repro evaluate)")
    index = read_index(shard_dir)
    scored = load_image_counts(counts_path, "run the evaluate stage")
    decision_split = gate_split(params.gate.split, index["splits"])
    if scored.split != decision_split:
        raise SegflowError(
            f"{counts_path}: counts of split {scored.split!r}, but gate.split gives "
            f"{decision_split!r}; rerun the evaluate stage (dvc repro evaluate)"
        )
    if "mlflow_run_id" not in run:
        raise SegflowError(f"{run_info}: no mlflow_run_id; rerun the train stage")
    crf_applied = bool(metrics.get("crf_applied"))
    if crf_applied != (serving.get("crf") is not None):
        raise SegflowError(f"{metrics_path} and {serving_path} disagree on the CRF; "
                           "rerun the evaluate stage")  # fmt: skip
    test_miou = served_miou(metrics)
    dataset = str(index.get("dataset", "unknown"))
    test_hash = split_hash(index, params.dataset.test_split)
    new_counts = scored.counts["crf" if crf_applied else "raw"]
    split = decision_split_of(
        decision_split, split_hash(index, decision_split), scored.ids,
        params.dataset.group_pattern, params.dataset.test_split,
    )  # fmt: skip
    test = {"test_split": params.dataset.test_split, "test_split_hash": test_hash,
            "test_miou": test_miou}  # fmt: skip
    uri = tracking.tracking_uri()
    tracking.check_store(uri)
    mlflow.set_tracking_uri(uri)
    with tracking.store_errors(uri):  # every MLflow call: a failing store is one line
        check_run(run["mlflow_run_id"])
        log_evaluation(run["mlflow_run_id"], metrics, metrics_path, report_dir)
        version = register_model(
            run["mlflow_run_id"], dataset, metrics, test_miou, serving, index.get("classes", []),
            model_path, test_hash, prefix=params.register.model_name_prefix,
            data_hash=str(index.get("content_hash", "unknown")),
            per_class=per_class_iou(report_dir),
        )  # fmt: skip
        # The ONNX export beside the model (onnx/): a deployment takes it from the registry.
        onnx = registered_onnx(version) or attach_onnx(
            version, model_path, serving, index.get("classes", [])
        )
        decision = run_gate(version, new_counts, split, params, shard_dir, test)
        version_aliases = aliases(version.name, version.version)
        log_registered_report(run["mlflow_run_id"], report_dir, version, version_aliases)
    decision["test_miou"] = test_miou
    return {
        "name": version.name,
        "version": str(version.version),
        "model_uri": f"models:/{version.name}/{version.version}",
        "aliases": version_aliases,
        "mlflow_run_id": run["mlflow_run_id"],
        "data_hash": str(index.get("content_hash", "unknown")),
        "crf_applied": crf_applied,
        "serving": json.loads(json.dumps(serving)),
        "onnx": onnx,
        "decision": decision,
    }


def log_registered_report(run_id: str, report_dir: Path, version, version_aliases: list) -> None:
    """Log the run's evaluation report again, its header naming the registry version and its
    aliases (unknown when the evaluate stage wrote it); reports/eval/ itself is unchanged. A
    report without report_data.json (an older evaluate stage) stays as logged."""
    import mlflow

    if not (Path(report_dir) / REPORT_DATA).is_file():
        return
    registry = registry_text(version.name, version.version, version_aliases)
    with tempfile.TemporaryDirectory() as tmp:
        copy = render_registered(report_dir, Path(tmp) / "report", registry)
        mlflow.MlflowClient().log_artifacts(run_id, str(copy), "evaluation/report")
