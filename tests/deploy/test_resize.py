"""The exported graph's resize gives the network the pixels OpenCV gives the served path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from segflow.data.shards import resize_image
from segflow.deploy.resize import resize_to


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth noise: neighbouring pixels related, as in a photograph."""
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 1.5)


def differences(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    expected = resize_image(image, size).astype(np.int32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    got = resize_to(x, *size)[0].permute(1, 2, 0).numpy()
    assert got.shape == expected.shape
    assert np.array_equal(got, np.round(got))  # whole grey levels, as OpenCV's uint8
    return np.abs(got.astype(np.int32) - expected)


@pytest.mark.parametrize(
    "source, size",
    [
        ((64, 96), (32, 48)),  # 2x2: OpenCV's fast path (rounds half up)
        ((360, 480), (240, 320)),  # CamVid to the camvid-cpu scale: 1.5x, cut pixels weighed
        ((128, 192), (32, 48)),  # 4x4
        ((90, 120), (60, 80)),
        ((37, 53), (20, 30)),  # odd sizes, two different factors
        ((32, 48), (32, 48)),  # the training scale itself: unchanged
    ],
)
def test_shrinking_is_opencvs_area_resize(source, size):
    diff = differences(photo(*source), size)
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.995


@pytest.mark.parametrize(
    "source, size",
    [
        ((20, 30), (40, 61)),  # grows: INTER_LINEAR
        ((30, 100), (40, 48)),  # grows overall, shrinks in width: INTER_LINEAR
        ((100, 30), (48, 40)),  # shrinks overall, grows in width: INTER_AREA's two-tap mode
    ],
)
def test_growing_matches_opencv_within_its_fixed_point_rounding(source, size):
    """OpenCV's uint8 linear resize weighs with 11-bit integers; a grey level either way."""
    diff = differences(photo(*source), size)
    assert diff.max() <= 1
    assert (diff == 0).mean() >= 0.8


def test_a_batch_is_resized_image_by_image():
    images = np.stack([photo(45, 70, seed) for seed in range(3)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    batch = resize_to(x, 30, 40)
    for i in range(3):
        alone = resize_to(x[i : i + 1], 30, 40)
        assert torch.equal(batch[i : i + 1], alone)
