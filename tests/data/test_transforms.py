"""Augmentation: image and mask stay aligned, masks keep real labels, output shapes and values."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest

from segflow.config import LoaderParams
from segflow.data.transforms import (
    RandomScaleCrop,
    eval_transform,
    rare_class_weights,
    reseed,
    train_transform,
)

# A colour per label, far apart, so the label of an augmented pixel can be read off its colour.
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], np.uint8)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def label_scene(height=60, width=80, block=6, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of random labels (asymmetric, so a flip or shift of only one of them shows)."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, len(PALETTE), (height // block + 1, width // block + 1), dtype=np.uint8)
    mask = np.kron(grid, np.ones((block, block), np.uint8))[:height, :width]
    return PALETTE[mask], np.ascontiguousarray(mask)


def denormalise(image: np.ndarray) -> np.ndarray:
    return np.rint((image * np.array(STD) + np.array(MEAN)) * 255).clip(0, 255).astype(np.uint8)


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood has one label: linear interpolation cannot blend there.

    Pixels on the crop border are left out: their neighbours outside the crop are unknown.
    """
    m = np.pad(mask, 1, constant_values=254)
    same = np.ones(mask.shape, bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= m[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] == mask
    return same


def test_train_transform_keeps_image_and_mask_aligned():
    params = LoaderParams(crop_height=48, crop_width=64, color_jitter=0.0)
    transform = train_transform(params)
    image, mask = label_scene()
    checked = 0
    for seed in range(30):
        reseed(transform, (seed,))
        out = transform(image=image, mask=mask)
        colours = denormalise(out["image"])
        keep = (out["mask"] != 255) & interior(out["mask"])
        expected = PALETTE[out["mask"][keep]]
        np.testing.assert_allclose(colours[keep], expected, atol=1, err_msg=f"seed {seed}")
        checked += keep.sum()
    assert checked > 30 * 48 * 64 * 0.3  # the comparison covered most of the crops


def test_train_masks_hold_only_original_labels_or_ignore():
    transform = train_transform(LoaderParams(crop_height=48, crop_width=64))
    image, mask = label_scene()
    for seed in range(20):
        reseed(transform, (seed,))
        out = transform(image=image, mask=mask)
        assert out["mask"].dtype == np.uint8
        assert set(np.unique(out["mask"])) <= set(np.unique(mask)) | {255}


def test_small_images_are_padded_with_ignore_and_the_mean():
    params = LoaderParams(
        crop_height=96, crop_width=128, scale_min=1.0, scale_max=1.0, color_jitter=0.0, hflip=0.0
    )
    image, mask = label_scene(height=30, width=40)
    out = train_transform(params)(image=image, mask=mask)
    assert out["image"].shape == (96, 128, 3) and out["image"].dtype == np.float32
    assert out["mask"].shape == (96, 128)
    padded = out["mask"] == 255
    assert padded.sum() == 96 * 128 - 30 * 40
    np.testing.assert_allclose(out["image"][padded], 0.0, atol=0.01)  # mean -> 0 after normalising


def test_scale_range_sets_the_size_of_objects_in_the_crop():
    # One 8-pixel-wide stripe of label 1; the crop shows it 4..16 pixels wide for scale 0.5..2.
    image, mask = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8)
    mask[:, 28:36] = 1
    image[mask == 1] = 255
    params = LoaderParams(crop_height=16, crop_width=64, color_jitter=0.0)
    widths = set()
    for seed in range(40):
        transform = train_transform(params)
        reseed(transform, (seed,))
        out = transform(image=image, mask=mask)
        widths.add(int((out["mask"][0] == 1).sum()))
    widths.discard(0)
    assert min(widths) >= 4 and max(widths) <= 16
    assert max(widths) - min(widths) >= 6  # the scale really varies


def test_colour_jitter_changes_the_image_but_not_the_mask():
    image, mask = label_scene()
    base = LoaderParams(crop_height=48, crop_width=64, color_jitter=0.0)
    jittered = base.model_copy(update={"color_jitter": 0.4})
    plain_t, jitter_t = train_transform(base), train_transform(jittered)
    differs = 0
    for seed in range(10):
        reseed(plain_t, (seed,))
        plain = plain_t(image=image, mask=mask)
        reseed(jitter_t, (seed,))
        jitter = jitter_t(image=image, mask=mask)
        # ColorJitter draws after the geometric steps, so both see the same crop and flip.
        np.testing.assert_array_equal(plain["mask"], jitter["mask"])
        differs += not np.allclose(plain["image"], jitter["image"], atol=0.05)
    assert differs >= 8


def test_reseed_reproduces_an_augmentation_and_other_keys_change_it():
    transform = train_transform(LoaderParams(crop_height=32, crop_width=32))
    image, mask = label_scene()
    outs = []
    for key in [(0, 0, 5), (0, 0, 5), (0, 1, 5)]:
        reseed(transform, key)
        outs.append(transform(image=image, mask=mask))
    np.testing.assert_array_equal(outs[0]["image"], outs[1]["image"])
    np.testing.assert_array_equal(outs[0]["mask"], outs[1]["mask"])
    assert not np.array_equal(outs[0]["image"], outs[2]["image"])


def test_eval_transform_keeps_the_full_image_and_only_normalises():
    image, mask = label_scene(height=37, width=53)
    out = eval_transform(LoaderParams())(image=image, mask=mask)
    assert out["image"].shape == (37, 53, 3) and out["image"].dtype == np.float32
    np.testing.assert_array_equal(out["mask"], mask)
    np.testing.assert_array_equal(denormalise(out["image"]), image)


@pytest.mark.parametrize("bad", [{"scale_min": 2.0, "scale_max": 1.0}, {"crop_height": 0}])
def test_invalid_loader_params_are_rejected_by_the_schema(bad):
    with pytest.raises(ValueError):
        LoaderParams(**bad)


def test_scale_crop_matches_a_whole_image_resize_when_the_crop_is_the_scaled_size():
    image, mask = label_scene(height=30, width=40)
    out = RandomScaleCrop(60, 80, scale=(2.0, 2.0))(image=image, mask=mask)
    np.testing.assert_array_equal(out["image"], cv2.resize(image, (80, 60)))
    expected_mask = cv2.resize(mask, (80, 60), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(out["mask"], expected_mask)


def test_scale_crop_centres_a_small_scaled_image_in_fill_like_pad_if_needed():
    image, mask = label_scene(height=30, width=40)
    out = RandomScaleCrop(40, 50, scale=(0.5, 0.5), fill=(1, 2, 3))(image=image, mask=mask)
    small = cv2.resize(image, (20, 15))
    padded = A.PadIfNeeded(40, 50, border_mode=cv2.BORDER_CONSTANT, fill=(1, 2, 3), fill_mask=255)
    expected = padded(
        image=small, mask=cv2.resize(mask, (20, 15), interpolation=cv2.INTER_NEAREST_EXACT)
    )
    np.testing.assert_array_equal(out["image"], expected["image"])
    np.testing.assert_array_equal(out["mask"], expected["mask"])


def test_scale_crop_at_scale_one_is_a_random_window_of_the_source():
    image, mask = label_scene(height=30, width=40)
    transform = RandomScaleCrop(10, 12, scale=(1.0, 1.0))
    offsets = set()
    for seed in range(30):
        reseed(A.Compose([transform]), (seed,))
        out = transform(image=image, mask=mask)
        hits = [
            (y, x)
            for y in range(21)
            for x in range(29)
            if np.array_equal(image[y : y + 10, x : x + 12], out["image"])
            and np.array_equal(mask[y : y + 10, x : x + 12], out["mask"])
        ]
        assert hits, f"seed {seed}: output is not a window of the source"
        offsets.add(hits[0])
    assert len(offsets) > 10


def rare_pole_scene() -> tuple[np.ndarray, np.ndarray]:
    """200x200 of road (0) with a 3x3 pole (2) in one corner; class 1 is absent."""
    mask = np.zeros((200, 200), np.uint8)
    mask[190:193, 5:8] = 2
    return PALETTE[mask], mask


def share_of_crops_showing_the_pole(rare_class_crop: float, crops: int = 200) -> float:
    params = LoaderParams(
        crop_height=40, crop_width=40, scale_min=1.0, scale_max=1.0, color_jitter=0.0,
        rare_class_crop=rare_class_crop,
    )  # fmt: skip
    # Train pixels: road 99 %, class 1 0.9 %, the pole 0.1 %.
    transform = train_transform(params, normalize=False, class_pixels=[9900, 90, 10])
    image, mask = rare_pole_scene()
    shown = 0
    for i in range(crops):
        reseed(transform, (0, 0, i))
        shown += bool((transform(image=image, mask=mask)["mask"] == 2).any())
    return shown / crops


def test_rare_class_crops_contain_the_rare_class_and_uniform_crops_rarely_do():
    # A uniform 40x40 crop of 200x200 contains the corner pole in about 1 of 60 draws.
    assert share_of_crops_showing_the_pole(0.0) < 0.1
    # Focused crops pick the pole (weight 1/sqrt(0.001) = 31.6) over the road (1/sqrt(0.99))
    # 97 % of the time, and a crop placed on the pole always contains it.
    assert 0.93 <= share_of_crops_showing_the_pole(1.0) <= 1.0
    assert 0.35 < share_of_crops_showing_the_pole(0.5) < 0.65


def test_rare_class_weights_are_inverse_square_root_shares_and_zero_when_absent():
    weights = rare_class_weights([9900, 100, 0])
    assert weights[2] == 0.0
    assert weights[1] / weights[0] == pytest.approx(np.sqrt(99))
