"""Stage register: models/best.pt + reports/metrics.json + reports/eval/serving.json -> MLflow
Model Registry, reports/registry.json, reports/gate.md.

Registers the trained model as ``<prefix>-<dataset>`` (alias ``challenger``) with the serving
spec evaluate scored with, its test metrics and class table, then runs the promotion gate: the
champion is scored again on the same test images, and ``champion`` moves to the new version
only if the paired bootstrap interval of the mIoU difference lies above ``register.min_gain``.
"""

import mlflow

from segflow.config import Params
from segflow.io import atomic_path, write_json
from segflow.lifecycle.gate import gate_markdown
from segflow.lifecycle.register import register_and_gate
from segflow.paths import (
    BEST_MODEL,
    EVAL_REPORT,
    GATE_REPORT,
    IMAGE_COUNTS,
    METRICS,
    REGISTRY_RECORD,
    RUN_INFO,
    SHARDS,
)
from segflow.stage import console, run_stage


def main(params: Params) -> None:
    record = register_and_gate(
        params, BEST_MODEL, RUN_INFO, METRICS, EVAL_REPORT, IMAGE_COUNTS, SHARDS
    )
    with atomic_path(GATE_REPORT) as tmp:
        tmp.write_text(gate_markdown(record))
    mlflow.MlflowClient().log_artifact(record["mlflow_run_id"], str(GATE_REPORT), "evaluation")
    write_json(REGISTRY_RECORD, record)
    decision = record["decision"]
    console.print(
        f"register: {record['name']} v{record['version']} ({', '.join(record['aliases'])}): "
        f"{decision['decision']}: {decision['reason']}"
    )


if __name__ == "__main__":
    run_stage(main)
