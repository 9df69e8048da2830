"""The flat scores of reports/metrics.json: short metric names, resolutions, the served score.

The evaluate stage writes them, the register stage and the gate read them back; the names live
here once so the writer and the readers cannot drift apart.
"""

from __future__ import annotations

import math

from segflow.errors import SegflowError

#: Flat metric names of reports/metrics.json -> keys of metrics_from_confusion.
METRIC_KEYS = {
    "pa": "pixel_accuracy", "mpa": "mean_accuracy", "miou": "miou", "fwiou": "fwiou",
    "mdice": "mdice", "mfscore": "mfscore", "mprecision": "mprecision", "mrecall": "mrecall",
}  # fmt: skip


def flat_metrics(metrics: dict, suffix: str = "") -> dict:
    """PA, MPA, mIoU, FWIoU, mDice, mFscore, mPrecision, mRecall under short names (``miou``,
    ``miou_crf``); NaN as null."""
    out = {}
    for short, key in METRIC_KEYS.items():
        value = metrics[key]
        out[short + suffix] = None if value is None or math.isnan(value) else round(value, 6)
    return out


def describe_sizes(sizes: list[tuple[int, int]]) -> str:
    """``360x480``, or ``3 sizes, 281x500 to 500x500`` for a split of mixed sizes."""
    names = [f"{h}x{w}" for h, w in sizes]
    if len(names) == 1:
        return names[0]
    return f"{len(names)} sizes, {names[0]} to {names[-1]}" if names else "none"


def served_miou(metrics: dict) -> float:
    """The test mIoU of what the registered model returns (with the CRF when crf_tune chose it)."""
    key = "miou_crf" if metrics.get("crf_applied") else "miou"
    value = metrics.get(key)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise SegflowError(f"metrics: {key} is {value!r}; a model without a test score")
    return float(value)
