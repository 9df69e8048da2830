"""Stage validate: Great Expectations suite over the manifest; any violation exits non-zero."""

from segflow.stages.runner import run_stage
from segflow.stages.validate import main

if __name__ == "__main__":
    run_stage(main)
