"""The sliding-window patch classifier: what the windows are, how strides label, and that it
learns the synthetic scenes well above chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segflow.baselines.patch_classifier import (
    PatchClassifier,
    PatchCNN,
    PatchOptions,
    centre_weights,
    grid_centres,
    train_patch_classifier,
)
from segflow.errors import SegflowError
from tests.baselines.bar import assert_well_above_chance

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_classifier(patch: int = 9, stride: int = 1, eval_batch: int = 2048) -> PatchClassifier:
    torch.manual_seed(0)
    model = PatchCNN(5, patch, width=4)
    with torch.no_grad():  # BN statistics that are not the identity, so they matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return PatchClassifier(model, MEAN, STD, stride, eval_batch)


def one_window_at_a_time(classifier: PatchClassifier, image: np.ndarray) -> torch.Tensor:
    """C x H x W scores, classifying each pixel's window on its own: the window cut from the
    normalised image padded by replicating its border, one forward pass per pixel."""
    r = classifier.radius
    x = classifier.normalize(image).permute(1, 2, 0).numpy()
    padded = torch.from_numpy(np.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")).permute(2, 0, 1)
    h, w = image.shape[:2]
    out = torch.empty(5, h, w)
    with torch.no_grad():
        for y in range(h):
            for x_ in range(w):
                window = padded[:, y : y + 2 * r + 1, x_ : x_ + 2 * r + 1]
                out[:, y, x_] = classifier.model(window[None])[0]
    return out


def test_stride_1_sliding_window_equals_classifying_every_window_one_by_one():
    classifier = random_classifier(patch=9)
    image = np.random.default_rng(0).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    expected = one_window_at_a_time(classifier, image)
    batched = classifier.logits_at(image, range(7), range(11))
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-5)
    labels = classifier.label_map(image, stride=1)
    assert labels.shape == (7, 11) and labels.dtype == np.uint8
    assert np.array_equal(labels, expected.argmax(0).numpy())


def test_batching_does_not_change_the_answer():
    image = np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    small = random_classifier(patch=7, eval_batch=5).label_map(image, stride=1)
    large = random_classifier(patch=7, eval_batch=10_000).label_map(image, stride=1)
    assert np.array_equal(small, large)


def test_a_larger_stride_gives_every_pixel_its_blocks_centre_label():
    classifier = random_classifier(patch=7)
    image = np.random.default_rng(2).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    every = classifier.label_map(image, stride=1)
    coarse = classifier.label_map(image, stride=3)
    assert grid_centres(8, 3) == [1, 4, 7] and grid_centres(10, 3) == [1, 4, 7, 9]
    for y in range(8):
        for x in range(10):
            cy, cx = min(y // 3 * 3 + 1, 7), min(x // 3 * 3 + 1, 9)
            assert coarse[y, x] == every[cy, cx], (y, x)
    assert classifier.label_map(image).shape == (8, 10)  # the classifier's own stride (1)


def test_centre_sampling_weights_follow_the_class_share():
    weights = centre_weights([900, 100, 0], 0.5)
    assert weights[2] == 0  # a class without train pixels is never a centre
    # 9x rarer -> 3x the weight per pixel: a 1/sqrt(share) draw
    assert weights[1] / weights[0] == pytest.approx(3.0)
    assert np.allclose(centre_weights([900, 100], 0.0), 1.0)


def test_it_learns_the_synthetic_scenes_well_above_chance(synthetic_shards, chance):
    options = PatchOptions(patch=15, width=8, steps=200, batch_size=64, stride=2)
    classifier = train_patch_classifier(synthetic_shards, options, MEAN, STD, seed=0)
    label_map = classifier.label_map
    score = assert_well_above_chance("patch classifier", label_map, synthetic_shards, chance)
    assert score.num_images == 6 and score.ms_per_image > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patch": 8}, "patch must be odd"),
        ({"stride": 0}, "stride must be >= 1"),
        ({"class_balance": 2.0}, "class_balance must be in"),
        ({"lr": 0.0}, "lr must be > 0"),
    ],
)
def test_bad_options_are_errors_naming_them(options, message):
    with pytest.raises(SegflowError, match=f"patch_classifier: {message}"):
        PatchOptions(**options)
