"""A tiny U-Net trained in seconds on band scenes, served at half the images' size.

The shards are resized to half the images' size, as a user's ``shard.resize_*`` would, so the
served path (and the exported graph) resizes each val image down to the training scale and the
logits back up to the image's own size: the parts of the graph a network alone does not test.
The model is trained, not random: its labels follow the bands, so near-ties (where two
implementations may disagree on a pixel) are as rare as in a real model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from segflow.data.loader import ShardReader, split_files
from segflow.data.manifest import build_manifest
from segflow.data.shards import read_index, write_shards
from segflow.evaluate.serving import ServingSpec
from segflow.train.loop import fit
from tests.train.conftest import SIZE, BandsAdapter, tiny_params

HALF = (SIZE[0] // 2, SIZE[1] // 2)
MULTISCALE_FLIP = {"scales": [0.75, 1.0, 1.25], "flip": True}


@dataclass(frozen=True)
class Trained:
    checkpoint: Path
    shards: Path
    classes: list[dict]
    spec: ServingSpec  # single-scale at HALF, no CRF

    def val_images(self) -> list[np.ndarray]:
        """The val images at their native size (what a user would send)."""
        reader = ShardReader(split_files(self.shards, "val"))
        return [reader.decoded(i, native=True)[0] for i in range(len(reader))]

    def serving_file(self, directory: Path, spec: ServingSpec | None = None) -> Path:
        path = directory / "serving.json"
        path.write_text(json.dumps((spec or self.spec).to_dict()))
        return path


def train_band_model(root: Path, **train) -> Trained:
    """Band scenes sharded at HALF and a tiny U-Net (``tiny_params(**train)``) trained on them."""
    adapter = BandsAdapter(root / "raw", {"train": 6, "val": 4})
    shards = root / "shards"
    write_shards(build_manifest(adapter), adapter, shards, rows_per_shard=8, resize=HALF, workers=1)
    params = tiny_params(**train)
    loader = params.loader.model_copy(update={"crop_height": HALF[0], "crop_width": HALF[1]})
    params = params.model_copy(update={"loader": loader})
    fit(params, shards, root / "run", "cpu", echo=None)
    spec = ServingSpec(mean=params.loader.mean, std=params.loader.std, input_size=HALF)
    return Trained(root / "run" / "best.pt", shards, read_index(shards)["classes"], spec)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    return train_band_model(tmp_path_factory.mktemp("deploy_model"), epochs=8)
