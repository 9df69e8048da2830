"""The register stage's work: log the evaluation, register the served model, run the gate.

The test metrics (as ``test_<name>``) and the evaluation report (artifact path
``evaluation/``) are logged to the training run first, so the run in the MLflow UI shows how
its model scored next to how it trained. The model is registered with the serving spec that
evaluate scored with (reports/eval/serving.json) and judged by that path's score: with the
CRF only when crf_tune chose it on val.

The current tracking URI (``$MLFLOW_TRACKING_URI`` or the default store) must be the one
training logged to; a store that cannot be read stops the stage before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import load_image_counts
from segflow.evaluate.evaluation import SERVING_FILE, served_miou
from segflow.io import read_json
from segflow.lifecycle.gate import run_gate
from segflow.lifecycle.registration import (
    aliases,
    check_run,
    check_store,
    log_evaluation,
    register_model,
    split_hash,
)


def register_and_gate(
    params: Params,
    model_path: Path,
    run_info: Path,
    metrics_path: Path,
    report_dir: Path,
    counts_path: Path,
    shard_dir: Path,
) -> dict:
    """Register ``model_path`` and run the gate; the record for reports/registry.json."""
    import mlflow

    from segflow.run_info import read_run_info
    from segflow.tracking import tracking_uri

    run = read_run_info(run_info, model_path)  # best.pt must be the run's model
    metrics = read_json(metrics_path, "run the evaluate stage (dvc repro evaluate)")
    serving = read_json(report_dir / SERVING_FILE, "run the evaluate stage (dvc repro evaluate)")
    index = read_json(shard_dir / "index.json", "run the shard stage (dvc repro shard)")
    ids, counts = load_image_counts(counts_path, "run the evaluate stage")
    if "mlflow_run_id" not in run:
        raise SegflowError(f"{run_info}: no mlflow_run_id; rerun the train stage")
    crf_applied = bool(metrics.get("crf_applied"))
    if crf_applied != (serving.get("crf") is not None):
        raise SegflowError(f"{metrics_path} and {report_dir / SERVING_FILE} disagree on the CRF; "
                           "rerun the evaluate stage")  # fmt: skip
    test_miou = served_miou(metrics)
    uri = tracking_uri()
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    check_run(run["mlflow_run_id"])
    dataset = str(index.get("dataset", "unknown"))
    test_hash = split_hash(index, params.dataset.test_split)
    log_evaluation(run["mlflow_run_id"], metrics, metrics_path, report_dir)
    version = register_model(
        run["mlflow_run_id"], dataset, metrics, test_miou, serving, index.get("classes", []),
        model_path, test_hash, params.register.model_name_prefix,
        data_hash=str(index.get("content_hash", "unknown")),
    )  # fmt: skip
    new_counts = counts["crf" if crf_applied else "raw"]
    decision = run_gate(version, ids, new_counts, params, shard_dir, test_hash)
    decision["test_miou"] = test_miou
    return {
        "name": version.name,
        "version": str(version.version),
        "model_uri": f"models:/{version.name}/{version.version}",
        "aliases": aliases(version.name, version.version),
        "mlflow_run_id": run["mlflow_run_id"],
        "data_hash": str(index.get("content_hash", "unknown")),
        "crf_applied": crf_applied,
        "serving": json.loads(json.dumps(serving)),
        "decision": decision,
    }
