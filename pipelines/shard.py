"""Stage shard: validated manifest -> data/shards/<split>/*.arrow and data/shards/index.json."""

from segflow.stages.runner import run_stage
from segflow.stages.shard import main

if __name__ == "__main__":
    run_stage(main)
