"""The retraining flow (what a scheduler runs; also ``segflow retrain``): new data -> dvc repro ->
promotion gate -> an audit record in reports/retrain_log.jsonl and MLflow. Not a DVC stage: it
runs DVC. Exit 0: retrained (promoted or kept) or no new data; 1: failed; 75: already running.
"""

import sys

from segflow.lifecycle.retrain import run_retrain

if __name__ == "__main__":
    sys.exit(run_retrain())
