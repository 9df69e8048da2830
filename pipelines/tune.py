"""Stage tune: data/shards -> reports/best_train_params.yaml (a training hyper-parameter sweep)."""

from segflow.stages.runner import run_stage
from segflow.stages.tune import main

if __name__ == "__main__":
    run_stage(main)
