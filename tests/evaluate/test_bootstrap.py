"""The paired bootstrap of the promotion gate: its statistic is the reported mIoU, its interval
is about the difference of two models on the same images, and it is deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import (
    ImageCounts,
    image_counts,
    load_image_counts,
    miou_of_counts,
    paired_bootstrap,
    save_image_counts,
    sum_by_group,
)
from segflow.evaluate.metrics import metrics_from_confusion


def random_confusions(rng: np.random.Generator, n: int, c: int, accuracy: float) -> np.ndarray:
    """n per-image confusion matrices: each class's pixels are right with prob. ``accuracy``."""
    mats = np.zeros((n, c, c), dtype=np.int64)
    for i in range(n):
        for t in range(c):
            pixels = int(rng.integers(0, 400))
            right = rng.binomial(pixels, accuracy)
            mats[i, t, t] = right
            mats[i, t] += rng.multinomial(pixels - right, np.full(c, 1 / c))
    return mats


def counts_of(mats: np.ndarray) -> np.ndarray:
    return np.stack([image_counts(m) for m in mats])


def test_miou_of_summed_image_counts_equals_the_reported_miou_of_the_summed_confusion():
    mats = random_confusions(np.random.default_rng(0), n=7, c=5, accuracy=0.6)
    mats[:, 4, :] = 0  # class 4 never in the ground truth ...
    mats[:, :, 4] = 0  # ... nor predicted: left out of the mean, as in the report
    expected = metrics_from_confusion(mats.sum(axis=0))["miou"]
    assert miou_of_counts(counts_of(mats).sum(axis=0)) == pytest.approx(expected, abs=1e-12)


def test_a_model_better_on_every_image_gets_an_interval_above_zero():
    rng = np.random.default_rng(1)
    old = counts_of(random_confusions(rng, n=30, c=4, accuracy=0.5))
    new = counts_of(random_confusions(rng, n=30, c=4, accuracy=0.8))
    result = paired_bootstrap(new, old, samples=1000, confidence=0.95, seed=0)
    assert result.diff > 0.2
    assert 0 < result.low < result.diff < result.high
    assert result.num_images == 30 and result.samples == 1000


def test_two_equally_good_models_get_an_interval_around_zero():
    rng = np.random.default_rng(2)
    a = counts_of(random_confusions(rng, n=40, c=4, accuracy=0.7))
    b = counts_of(random_confusions(rng, n=40, c=4, accuracy=0.7))
    result = paired_bootstrap(a, b, samples=1000, seed=0)
    assert result.low < 0 < result.high
    same = paired_bootstrap(a, a, samples=200, seed=0)
    assert same.diff == same.low == same.high == 0.0


def test_pairing_makes_the_interval_narrower_than_scoring_the_models_on_separate_draws():
    """Image difficulty varies a lot; both models find the same images hard, which pairing
    cancels. Unpaired (independent resamples per model) the interval would be far wider."""
    rng = np.random.default_rng(3)
    n, c = 40, 3
    base = random_confusions(rng, n, c, accuracy=0.5)
    hard = rng.uniform(0.2, 1.0, size=n)  # per-image difficulty, shared by both models
    old = np.stack(
        [image_counts(np.round(m * h).astype(np.int64)) for m, h in zip(base, hard, strict=True)]
    )
    better = base.copy()
    for m in better:  # the new model fixes a tenth of each image's errors
        for t in range(c):
            fix = (m[t].sum() - m[t, t]) // 10
            m[t, (t + 1) % c] = max(m[t, (t + 1) % c] - fix, 0)
            m[t, t] += fix
    new = np.stack(
        [image_counts(np.round(m * h).astype(np.int64)) for m, h in zip(better, hard, strict=True)]
    )
    paired = paired_bootstrap(new, old, samples=1000, seed=0)
    draws = np.random.default_rng(0)
    unpaired = [
        miou_of_counts(new[draws.integers(0, n, n)].sum(0))
        - miou_of_counts(old[draws.integers(0, n, n)].sum(0))
        for _ in range(1000)
    ]
    unpaired_width = np.subtract(*np.quantile(unpaired, [0.975, 0.025]))
    assert paired.high - paired.low < unpaired_width / 2
    assert paired.low > 0


def test_the_interval_is_reproducible_for_a_seed_and_widens_with_confidence():
    rng = np.random.default_rng(4)
    a = counts_of(random_confusions(rng, n=20, c=3, accuracy=0.6))
    b = counts_of(random_confusions(rng, n=20, c=3, accuracy=0.55))
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    narrow = paired_bootstrap(a, b, confidence=0.8, seed=7)
    wide = paired_bootstrap(a, b, confidence=0.99, seed=7)
    assert wide.low < narrow.low and wide.high > narrow.high


def test_counts_of_different_images_or_classes_are_refused():
    a = np.zeros((5, 3, 4), dtype=np.int64)
    with pytest.raises(SegflowError, match="same images and classes"):
        paired_bootstrap(a, np.zeros((6, 3, 4), dtype=np.int64))
    with pytest.raises(SegflowError, match="no images"):
        paired_bootstrap(a[:0], a[:0])


def test_image_counts_round_trip_through_the_file_with_their_sample_ids(tmp_path):
    counts = counts_of(random_confusions(np.random.default_rng(5), n=3, c=2, accuracy=0.5))
    path = tmp_path / "counts.npz"
    save_image_counts(
        path, ImageCounts("dev", ["a/1", "b", "c"], {"raw": counts, "crf": counts + 1})
    )
    loaded = load_image_counts(path, "rerun evaluate")
    assert loaded.split == "dev" and loaded.ids == ["a/1", "b", "c"]
    assert np.array_equal(loaded.counts["raw"], counts)
    assert np.array_equal(loaded.counts["crf"], counts + 1)
    with pytest.raises(SegflowError, match="missing.npz: per-image counts not found; rerun"):
        load_image_counts(tmp_path / "missing.npz", "rerun evaluate")


def test_with_groups_the_bootstrap_resamples_whole_groups():
    rng = np.random.default_rng(11)
    new = counts_of(random_confusions(rng, n=12, c=3, accuracy=0.7))
    old = counts_of(random_confusions(rng, n=12, c=3, accuracy=0.6))
    groups = ["s1"] * 5 + ["s2"] * 4 + ["s3"] * 3
    grouped = paired_bootstrap(new, old, samples=500, seed=3, groups=groups)
    # exactly the bootstrap over the three groups' summed counts: a group is one unit
    summed = paired_bootstrap(
        sum_by_group(new, groups), sum_by_group(old, groups), samples=500, seed=3
    )
    assert (grouped.low, grouped.high, grouped.diff) == (summed.low, summed.high, summed.diff)
    assert grouped.num_images == 12 and grouped.num_groups == 3
    # the mIoU of all images is the same whatever the unit
    assert grouped.new_miou == pytest.approx(paired_bootstrap(new, old, samples=100).new_miou)


def test_near_identical_frames_of_one_sequence_are_not_independent_evidence():
    # Three sequences, ten copies of one frame each: the new model wins on two, loses on one.
    rng = np.random.default_rng(5)
    base_new = counts_of(random_confusions(rng, n=3, c=3, accuracy=0.8))
    base_old = counts_of(random_confusions(rng, n=3, c=3, accuracy=0.6))
    base_old[2], base_new[2] = base_new[2].copy(), base_old[2].copy()
    new, old = np.repeat(base_new, 10, axis=0), np.repeat(base_old, 10, axis=0)
    groups = [f"seq{i}" for i in range(3) for _ in range(10)]
    by_image = paired_bootstrap(new, old, samples=2000, seed=0)
    by_group = paired_bootstrap(new, old, samples=2000, seed=0, groups=groups)
    # 30 "images" look like strong evidence; 3 sequences are not
    assert by_group.high - by_group.low > 2 * (by_image.high - by_image.low)
