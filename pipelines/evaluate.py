"""Stage evaluate: models/best.pt + test shards + reports/crf_params.json -> reports/metrics.json,
reports/eval/ (PA, MPA, mIoU, FWIoU, Dice, F-score without and with the tuned CRF at the masks'
original resolution, the served path's speed, per-class report, serving.json),
reports/eval_image_counts.npz (each test image's counts, for the promotion gate's bootstrap)."""

from segflow.stages.evaluate import main
from segflow.stages.runner import run_stage

if __name__ == "__main__":
    run_stage(main)
