"""Stage register: models/best.pt + reports/metrics.json -> MLflow Model Registry, registry.json.

Registers the trained model as ``<prefix>-<dataset>`` (alias ``challenger``) with its test
metrics, class table and tuned CRF params, then runs the promotion gate: the champion is scored
again on the same test images, and ``champion`` moves to the new version only if the paired
bootstrap interval of the mIoU difference lies above ``register.min_gain``. The gate's figures
go to reports/gate.md (also logged with the run's evaluation report) and reports/registry.json.
"""

import mlflow

from segflow.config import Params
from segflow.gate import gate_markdown
from segflow.io import atomic_path, write_json
from segflow.paths import GATE_REPORT, REGISTRY_RECORD
from segflow.registry import register_and_gate
from segflow.stage import console, run_stage


def main(params: Params) -> None:
    record = register_and_gate(params)
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
