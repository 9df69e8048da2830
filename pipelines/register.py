"""Stage register: models/best.pt + reports/metrics.json -> MLflow Model Registry, registry.json.

Registers the trained model as ``<prefix>-<dataset>`` (alias ``challenger``) with its test
metrics, class table and tuned CRF params, then runs the promotion gate: ``champion`` moves to it
only if it beats the champion's test mIoU on the same test split by ``register.min_gain``.
"""

from segflow.config import Params
from segflow.io import write_json
from segflow.paths import (
    BEST_MODEL,
    CRF_PARAMS,
    EVAL_REPORT,
    METRICS,
    REGISTRY_RECORD,
    RUN_INFO,
    SHARD_INDEX,
)
from segflow.registry import register_and_gate
from segflow.stage import console, run_stage


def main(params: Params) -> None:
    record = register_and_gate(
        RUN_INFO,
        METRICS,
        CRF_PARAMS,
        SHARD_INDEX,
        BEST_MODEL,
        params.loader.mean,
        params.loader.std,
        params.dataset.test_split,
        params.register.min_gain,
        params.register.model_name_prefix,
        report_dir=EVAL_REPORT,
    )
    write_json(REGISTRY_RECORD, record)
    decision = record["decision"]
    console.print(
        f"register: {record['name']} v{record['version']} ({', '.join(record['aliases'])}): "
        f"{decision['decision']}: {decision['reason']}"
    )


if __name__ == "__main__":
    run_stage(main)
