"""Stage search: data/shards -> reports/search/genotype.json and history/; one MLflow run."""

from segflow.stages.runner import run_stage
from segflow.stages.search import main

if __name__ == "__main__":
    run_stage(main)
