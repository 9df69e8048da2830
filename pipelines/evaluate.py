"""Stage evaluate: models/best.pt + test shards + reports/crf_params.json -> reports/metrics.json,
reports/eval/ (PA, MPA, mIoU, FWIoU without and with the tuned CRF, speed, per-class report),
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
        f"evaluate: {params.dataset.test_split} mIoU {m['miou']} -> {m['miou_crf']} with CRF, "
        f"{m['ms_per_image']} ms per image -> {METRICS}, {EVAL_REPORT}/index.html"
    )


if __name__ == "__main__":
    run_stage(main)
