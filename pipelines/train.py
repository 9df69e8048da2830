"""Stage train: data/shards -> models/best.pt, models/run.json, reports/train_*; one MLflow run."""

from segflow.stages.runner import run_stage
from segflow.stages.train import main

if __name__ == "__main__":
    run_stage(main)
