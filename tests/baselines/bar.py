"""The bar both baselines clear on the synthetic scenes: well above the best constant answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from segflow.baselines.scoring import SplitScore, at_training_scale, score_split
from segflow.data.shards import read_index

#: Over the best constant answer (tests/baselines/conftest.py: ``chance``): pixel accuracy at
#: least 20 points higher, mIoU at least 4x. Measured here: the patch classifier PA ~0.68 against
#: ~0.39, mIoU ~0.37 against ~0.05 (200 steps).
PA_MARGIN, MIOU_FACTOR = 0.20, 4.0


def assert_well_above_chance(
    name: str, label_map: Callable[[np.ndarray], np.ndarray], shards: Path, chance: dict
) -> SplitScore:
    """Score ``label_map`` on the val shards as evaluate scores, hold it to the bar, return it."""
    index = read_index(shards)
    predict = at_training_scale(label_map, index["resize"])
    score = score_split(predict, shards, "val", int(index["num_classes"]))
    m = score.metrics
    print(f"{name} PA {m['pixel_accuracy']:.3f} mIoU {m['miou']:.3f}; constant "
          f"PA {chance['pixel_accuracy']:.3f} mIoU {chance['miou']:.3f}")  # fmt: skip
    assert m["pixel_accuracy"] >= chance["pixel_accuracy"] + PA_MARGIN
    assert m["miou"] >= MIOU_FACTOR * chance["miou"]
    return score
