"""Stage synthesize: generate the embedded street-scene dataset into data/synthetic/."""

from segflow.stages.runner import run_stage
from segflow.stages.synthesize import main

if __name__ == "__main__":
    run_stage(main)
