"""Stage register: models/best.pt + reports/metrics.json + reports/eval/serving.json -> MLflow
Model Registry, reports/registry.json, reports/gate.md."""

from segflow.stages.register import main
from segflow.stages.runner import run_stage

if __name__ == "__main__":
    run_stage(main)
