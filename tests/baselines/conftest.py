"""Small synthetic street-scene shards for the baselines' tests (segflow's own generator).

Eight classes drawn by texture, shape and position (segflow.data.synthetic); shards resized to
48x64 with the val split kept at its native 72x96 as well, so scoring goes through the native
resolution path exactly as on CamVid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segflow.baselines.scoring import score_split
from segflow.data.datasets.synthetic import SyntheticDataset
from segflow.data.manifest import build_manifest
from segflow.data.shards import read_index, write_shards

NATIVE = (72, 96)
TRAINING_SCALE = (48, 64)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baseline_shards")
    adapter = SyntheticDataset(root / "raw", num_train=12, num_val=6, num_test=0,
                               height=NATIVE[0], width=NATIVE[1])  # fmt: skip
    adapter.prepare()
    out = root / "shards"
    write_shards(build_manifest(adapter), adapter, out, 16, resize=TRAINING_SCALE, workers=1)
    return out


@pytest.fixture(scope="session")
def chance(synthetic_shards) -> dict:
    """Scores of the best constant answer: train's most frequent class everywhere on val."""
    index = read_index(synthetic_shards)
    majority = int(np.argmax(index["splits"]["train"]["class_pixels"]))
    constant = score_split(
        lambda image: np.full(image.shape[:2], majority, np.uint8),
        synthetic_shards, "val", int(index["num_classes"]),
    )  # fmt: skip
    return constant.metrics
