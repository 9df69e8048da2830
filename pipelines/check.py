"""Stage check: does dataset.root hold the layout dataset.name reads? -> data/dataset.json."""

from segflow.stages.check import main
from segflow.stages.runner import run_stage

if __name__ == "__main__":
    run_stage(main)
