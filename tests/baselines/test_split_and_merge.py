"""Split-and-merge: the quadtree splits what is not homogeneous, merging joins what looks alike,
and the region classifier labels the synthetic scenes well above chance."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.baselines.split_and_merge import (
    SoftmaxRegression,
    SplitMergeOptions,
    adjacent_pairs,
    merge_regions,
    quadtree_split,
    region_features,
    segment,
    to_lab,
    train_split_and_merge,
)
from segflow.errors import SegflowError
from tests.baselines.bar import assert_well_above_chance

RED, BLUE, GREEN, GREY = (200, 30, 30), (30, 30, 200), (30, 180, 30), (120, 120, 120)


def quadrants(size: int = 32) -> np.ndarray:
    """Four flat quadrants of different colours."""
    image = np.empty((size, size, 3), np.uint8)
    h = size // 2
    image[:h, :h], image[:h, h:], image[h:, :h], image[h:, h:] = RED, BLUE, GREEN, GREY
    return image


def test_the_quadtree_stops_at_homogeneous_blocks():
    lab = to_lab(quadrants(32))
    regions = quadtree_split(lab, split_std=1.0, min_block=1)
    assert regions.max() + 1 == 4  # one split, then four flat blocks
    for block in (regions[:16, :16], regions[:16, 16:], regions[16:, :16], regions[16:, 16:]):
        assert len(np.unique(block)) == 1
    flat = to_lab(np.full((20, 30, 3), 90, np.uint8))
    assert quadtree_split(flat, 1.0, 1).max() == 0  # nothing to split


def test_the_quadtree_never_splits_a_block_at_or_below_min_block():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    regions = quadtree_split(to_lab(noise), split_std=0.0, min_block=8)
    assert regions.max() + 1 == 64  # 64x64 halved three times: 8x8 blocks, no smaller
    sizes = np.bincount(regions.ravel())
    assert np.all(sizes == 64)


def test_merging_joins_similar_neighbours_and_keeps_different_ones_apart():
    rng = np.random.default_rng(1)
    image = np.empty((32, 32, 3), np.int16)
    image[:, :16], image[:, 16:] = RED, BLUE
    image = np.clip(image + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
    lab = to_lab(image)
    blocks = quadtree_split(lab, split_std=0.5, min_block=2)  # noise: many small blocks
    assert blocks.max() + 1 > 50
    merged = merge_regions(lab, blocks, merge_distance=10.0)
    assert merged.max() + 1 == 2
    assert len(np.unique(merged[:, :16])) == 1 and len(np.unique(merged[:, 16:])) == 1
    assert merged[0, 0] != merged[0, 31]
    assert merge_regions(lab, blocks, merge_distance=0.0).max() == blocks.max()  # no merge


def test_adjacent_pairs_are_the_4_neighbourhood_edges_once_each():
    regions = np.array([[0, 0, 1], [2, 2, 1], [2, 3, 3]])
    assert adjacent_pairs(regions).tolist() == [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]]


def test_region_features_describe_colour_position_and_size():
    image = quadrants(32)
    lab = to_lab(image)
    regions = np.zeros((32, 32), np.int64)
    regions[16:, :] = 1  # top half, bottom half
    features = region_features(lab, regions, bins=4)
    assert features.shape == (2, 1 + 3 + 3 + 1 + 2 + 4 + 3 * 4)
    assert features[:, 0] == pytest.approx(np.log([0.5, 0.5]))  # log share of the image
    centroid_y = features[:, 8]
    assert centroid_y[0] < 0.5 < centroid_y[1]
    hist = features[:, -12:].reshape(2, 3, 4)
    assert np.allclose(hist.sum(2), 1.0)  # a normalised histogram per Lab channel


def test_the_softmax_regression_learns_a_separable_problem_with_soft_targets():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(-2, 1, (200, 2)), rng.normal(2, 1, (200, 2))])
    labels = np.repeat([0, 1], 200)
    targets = np.eye(2)[labels]
    model = SoftmaxRegression(2, 2)
    losses = model.fit(x, targets, np.ones(400), steps=200, lr=0.5, l2=0.0)
    assert losses[-1] < 0.2 < losses[0]
    assert (model.predict(x) == labels).mean() > 0.95


def test_it_labels_the_synthetic_scenes_well_above_chance(synthetic_shards, chance):
    model = train_split_and_merge(synthetic_shards, SplitMergeOptions())
    assert_well_above_chance("split and merge", model.label_map, synthetic_shards, chance)


def test_every_pixel_of_a_segmented_image_belongs_to_one_region():
    image = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    regions, _ = segment(image, SplitMergeOptions())
    assert regions.shape == (37, 53)
    assert set(np.unique(regions)) == set(range(regions.max() + 1))  # numbered 0 .. R-1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_block": 0}, "min_block must be >= 1"),
        ({"bins": 1}, "bins must be in 2..64"),
        ({"merge_distance": -1.0}, "merge_distance must be >= 0"),
        ({"class_balance": -0.5}, "class_balance must be in"),
    ],
)
def test_bad_options_are_errors_naming_them(options, message):
    with pytest.raises(SegflowError, match=f"split_and_merge: {message}"):
        SplitMergeOptions(**options)
