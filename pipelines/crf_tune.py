"""Stage crf_tune: models/best.pt + val shards -> data/probs/val, reports/crf_params.json."""

from segflow.stages.crf_tune import main
from segflow.stages.runner import run_stage

if __name__ == "__main__":
    run_stage(main)
