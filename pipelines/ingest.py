"""Stage ingest: dataset on disk -> data/manifest.parquet (one row per sample, with hashes)."""

from segflow.stages.ingest import main
from segflow.stages.runner import run_stage

if __name__ == "__main__":
    run_stage(main)
