"""Scores at the masks' original resolution, whatever scale the shards were resized to."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segflow.data.manifest import build_manifest
from segflow.data.shards import read_index, write_shards
from segflow.evaluate.metrics import metrics_from_confusion
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.serving import Predictor, ServingSpec
from tests.train.conftest import NUM_CLASSES, SIZE, BandsAdapter

HALF = (SIZE[0] // 2, SIZE[1] // 2)


def half_size_shards(root: Path) -> tuple[Path, BandsAdapter]:
    adapter = BandsAdapter(root / "raw", {"train": 4, "val": 2, "test": 3})
    for i, ref in enumerate(adapter.refs):  # unlabelled (255) rows, thinner than a half-size row
        mask = cv2.imread(str(ref.mask), cv2.IMREAD_UNCHANGED)
        mask[i % 3 :: 7, :] = 255
        cv2.imwrite(str(ref.mask), mask)
    out = root / "shards"
    write_shards(build_manifest(adapter), adapter, out, rows_per_shard=2, resize=HALF, workers=1)
    return out, adapter


def native_masks(adapter: BandsAdapter, split: str) -> list[np.ndarray]:
    return [
        cv2.imread(str(ref.mask), cv2.IMREAD_UNCHANGED)
        for ref in adapter.refs
        if ref.split == split
    ]


class LabelsAsLogits(nn.Module):
    """A perfect model: returns the next native mask of the split, one-hot, as its logits.

    It ignores its (half-size) input; its logits are already at the original size, so the
    served path has nothing to resize and any mismatch would be the evaluation's.
    """

    def __init__(self, masks: list[np.ndarray]) -> None:
        super().__init__()
        self.masks = list(masks)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.from_numpy(self.masks[self.calls].astype(np.int64))
        mask[mask == 255] = 0  # unlabelled: any class, it is not scored
        self.calls += 1
        onehot = nn.functional.one_hot(mask, NUM_CLASSES).permute(2, 0, 1).float()
        return 20.0 * onehot.unsqueeze(0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return half_size_shards(tmp_path_factory.mktemp("native"))


def test_resized_shards_keep_the_original_masks_of_every_split_but_train(shards):
    shard_dir, _ = shards
    index = read_index(shard_dir)
    assert index["resize"] == list(HALF)
    assert index["splits"]["test"]["sizes"] == [list(HALF)]  # what training and validation read


def test_split_scores_count_exactly_the_original_resolution_pixels(shards, tmp_path):
    shard_dir, adapter = shards
    masks = native_masks(adapter, "test")
    spec = ServingSpec(input_size=HALF)
    constant = nn.Conv2d(3, NUM_CLASSES, 1)  # any model: the counted pixels do not depend on it
    pred = predict_split(Predictor(constant, spec), shard_dir, "test", tmp_path / "p", NUM_CLASSES)

    native_counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256)
    labelled = int(native_counts[:NUM_CLASSES].sum())
    assert native_counts[255] > 0 and labelled < len(masks) * SIZE[0] * SIZE[1]
    assert pred.confusion.sum(axis=1).tolist() == native_counts[:NUM_CLASSES].tolist()
    assert pred.confusion.sum() == labelled  # every labelled original pixel, once
    assert pred.image_counts[:, 1, :].sum(axis=0).tolist() == native_counts[:NUM_CLASSES].tolist()
    assert pred.network_sizes == [HALF] and pred.label_sizes == [SIZE]


def test_a_perfect_model_scores_miou_one_at_native_resolution(shards, tmp_path):
    shard_dir, adapter = shards
    oracle = LabelsAsLogits(native_masks(adapter, "test"))
    predictor = Predictor(oracle, ServingSpec(input_size=HALF))
    pred = predict_split(predictor, shard_dir, "test", tmp_path / "p", NUM_CLASSES)
    metrics = metrics_from_confusion(pred.confusion)
    assert metrics["miou"] == 1.0 and metrics["pixel_accuracy"] == 1.0
    assert metrics["mdice"] == 1.0 and metrics["mfscore"] == 1.0


def test_served_labels_come_at_the_size_of_the_given_image(shards):
    _, adapter = shards
    image = cv2.cvtColor(cv2.imread(str(adapter.refs[0].image)), cv2.COLOR_BGR2RGB)
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return torch.zeros(1, NUM_CLASSES, 3, 5)

    labels = Predictor(Probe(), ServingSpec(input_size=HALF)).labels(image)
    assert seen == [HALF]  # the network ran at the training scale
    assert labels.shape == SIZE and labels.dtype == np.uint8
