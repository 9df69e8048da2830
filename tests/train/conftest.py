"""Tiny shards and params shared by the training tests.

The scenes are vertical class bands plus a rectangle, drawn in per-class colours with noise
(tests/data/helpers.py), so even a 4-channel U-Net learns something in a few steps. Masks hold
no ignore pixels and crops are the full image, so every rank scores the same number of pixels:
that is what makes a DDP step equal to a single-process step on the union of the batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from segflow.config import Params
from segflow.data.datasets.base import ClassInfo, DatasetAdapter, SampleRef
from segflow.data.manifest import build_manifest
from segflow.data.shards import write_shards
from tests.data.helpers import _palette, image_for, tiny_mask, write_gray, write_rgb

NUM_CLASSES = 3
SIZE = (32, 48)


class BandsAdapter(DatasetAdapter):
    name = "bands"

    def __init__(self, root: Path, counts: dict[str, int]):
        rng = np.random.default_rng(0)
        palette = _palette(NUM_CLASSES)
        self.refs = []
        for split, n in counts.items():
            for i in range(n):
                sid = f"{split}_{i:03d}"
                mask = tiny_mask(rng, SIZE, list(range(NUM_CLASSES)))
                image, label = root / f"{sid}.png", root / f"{sid}_mask.png"
                write_rgb(image, image_for(rng, mask, palette))
                write_gray(label, mask)
                self.refs.append(SampleRef(sid, split, image, label))

    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(i, f"class{i}", (80 * i, 40, 0)) for i in range(NUM_CLASSES)]

    def samples(self) -> Iterator[SampleRef]:
        return iter(self.refs)


def make_shards(root: Path, train: int = 4, val: int = 2) -> Path:
    adapter = BandsAdapter(root / "raw", {"train": train, "val": val})
    out = root / "shards"
    write_shards(build_manifest(adapter), adapter, out, rows_per_shard=8, workers=1)
    return out


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("train_shards"))


def tiny_params(tmp_path: Path | None = None, **train) -> Params:
    """A 4-channel U-Net without BatchNorm on full 32x48 images; every knob deterministic."""
    settings = {
        "model": "unet",
        "backbone": None,
        "output_stride": None,
        "model_options": {"width": 4, "batch_norm": False},
        "epochs": 2,
        "batch_size": 2,
        "lr": 0.05,
        "num_workers": 1,
        "cpus_per_worker": 1,
        "log_every": 1,
        "bf16": False,  # fp32: the tests compare weights and losses exactly
        "experiment": "tests",
    }
    if tmp_path is not None:
        settings["storage_path"] = str(tmp_path / "ray_results")
    settings.update(train)
    return Params.model_validate(
        {
            "loader": {
                "crop_height": SIZE[0],
                "crop_width": SIZE[1],
                "scale_min": 1.0,
                "scale_max": 1.0,
            },
            "train": settings,
        }
    )
