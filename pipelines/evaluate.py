"""Stage evaluate: models/best.pt + test shards + reports/crf_params.json -> reports/metrics.json,
reports/eval/ (PA, MPA, mIoU, FWIoU, Dice, F-score without and with the tuned CRF at the masks'
original resolution, the served path's speed, per-class report, serving.json),
reports/eval_image_counts.npz (each test image's counts, for the promotion gate's bootstrap)."""

from segflow.config import Params
from segflow.data.shards import verify_shards
from segflow.evaluate.evaluation import evaluate_split
from segflow.paths import BEST_MODEL, CRF_PARAMS, EVAL_REPORT, IMAGE_COUNTS, METRICS, SHARDS
from segflow.stage import console, run_stage


def main(params: Params) -> None:
    verify_shards(SHARDS)  # a damaged shard: one line naming it, before any worker starts
    m = evaluate_split(params, BEST_MODEL, SHARDS, CRF_PARAMS, METRICS, EVAL_REPORT, IMAGE_COUNTS)
    console.print(
        f"evaluate: {params.dataset.test_split} at {m['scored_resolution']} (network at "
        f"{m['network_resolution']}): mIoU {m['miou']}, {m['miou_crf']} with CRF (served: CRF "
        f"{'on' if m['crf_applied'] else 'off'}), {m['ms_per_image']} ms per image served "
        f"-> {METRICS}, {EVAL_REPORT}/index.html"
    )


if __name__ == "__main__":
    run_stage(main)
