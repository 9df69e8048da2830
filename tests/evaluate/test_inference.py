"""Inference modes agree where they must, keep the input size and return probabilities."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segflow.config import LoaderParams
from segflow.data.transforms import eval_transform
from segflow.errors import SegflowError
from segflow.evaluate.inference import (
    load_image_tensor,
    normalize,
    predict,
    predict_multiscale,
    predict_single,
    predict_sliding,
    window_starts,
)

NUM_CLASSES = 4


def pointwise_model(seed: int = 0) -> nn.Module:
    """A 1x1 convolution: each pixel's logits depend on that pixel only, so the model commutes
    with translation, cropping and horizontal flips."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, NUM_CLASSES, kernel_size=1)


class WindowMeanModel(nn.Module):
    """Logits constant over the input, from its mean colour: a window's output says which
    window it was, so the averaging of overlapping windows can be checked by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.proj(x.mean(dim=(2, 3)))
        return logits[:, :, None, None].expand(-1, -1, *x.shape[-2:])


class LeftRightModel(nn.Module):
    """Not flip-equivariant: a pixel's logits depend on its right-hand neighbour."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, NUM_CLASSES, kernel_size=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 0), mode="replicate"))


class Stride4Model(nn.Module):
    """Logits at a quarter of the input size, like a head without its own upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, kernel_size=4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def random_image(n: int = 1, height: int = 37, width: int = 53, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_normalize_matches_the_evaluation_transform_of_training():
    rgb = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    p = LoaderParams()
    expected = eval_transform(p)(image=rgb, mask=np.zeros((9, 11), np.uint8))["image"]
    x = normalize(rgb, p.mean, p.std)
    assert x.shape == (1, 3, 9, 11) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_load_image_tensor_reads_rgb_not_bgr(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    cv2.imwrite(str(tmp_path / "red.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    p = LoaderParams()
    x = load_image_tensor(tmp_path / "red.png", p)
    assert x.shape == (1, 3, 4, 5)
    assert x[0, 0, 0, 0].item() == pytest.approx((1 - p.mean[0]) / p.std[0], abs=1e-5)
    assert x[0, 1, 0, 0].item() == pytest.approx((0 - p.mean[1]) / p.std[1], abs=1e-5)


def test_normalize_rejects_a_float_image_with_a_message():
    with pytest.raises(SegflowError, match="expected uint8 RGB"):
        normalize(np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize("mode", ["single", "multiscale", "sliding"])
def test_every_mode_keeps_odd_input_sizes_and_returns_probabilities(mode):
    image = random_image(n=2, height=37, width=53)
    opts = {"sliding": {"crop": 16, "stride": 10}}.get(mode, {})
    probs = predict(pointwise_model(), image, mode, **opts)
    assert probs.shape == (2, NUM_CLASSES, 37, 53)
    assert probs.dtype == torch.float32
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 37, 53))


def test_single_is_the_softmax_of_the_model_output():
    image = random_image()
    model = pointwise_model()
    torch.testing.assert_close(predict_single(model, image), model(image).softmax(1))


def test_logits_smaller_than_the_input_are_resized_to_it():
    probs = predict_single(Stride4Model(), random_image(height=37, width=53))
    assert probs.shape == (1, NUM_CLASSES, 37, 53)


def test_sliding_equals_single_for_a_pointwise_model_including_a_ragged_last_window():
    # 37 x 53 with 16 x 16 crops every 10 px: the last windows are moved back to the border.
    image = random_image(height=37, width=53)
    model = pointwise_model()
    single = predict_single(model, image)
    sliding = predict_sliding(model, image, crop=(16, 16), stride=(10, 10), batch_windows=3)
    torch.testing.assert_close(sliding, single, rtol=0, atol=1e-6)


def test_sliding_pads_an_image_smaller_than_the_crop_and_cuts_the_padding_off():
    image = random_image(height=11, width=40)
    model = pointwise_model()
    sliding = predict_sliding(model, image, crop=(16, 16), overlap=0.5)
    assert sliding.shape == (1, NUM_CLASSES, 11, 40)
    torch.testing.assert_close(sliding, predict_single(model, image), rtol=0, atol=1e-6)


def test_sliding_averages_overlapping_windows_by_the_number_that_cover_a_pixel():
    # 10 x 10 image, 6 x 6 crops, stride 4: windows start at rows/cols 0 and 4. A pixel in
    # rows/cols 4-5 is seen by two windows along that axis; the centre 2 x 2 block by all four.
    image = random_image(height=10, width=10)
    model = WindowMeanModel()
    assert window_starts(10, 6, 4) == [0, 4]
    window = {
        (y, x): predict_single(model, image[:, :, y : y + 6, x : x + 6])[0, :, 0, 0]
        for y in (0, 4)
        for x in (0, 4)
    }
    probs = predict_sliding(model, image, crop=6, stride=4)[0]
    torch.testing.assert_close(probs[:, 0, 0], window[0, 0])
    torch.testing.assert_close(probs[:, 9, 9], window[4, 4])
    torch.testing.assert_close(probs[:, 0, 5], (window[0, 0] + window[0, 4]) / 2)
    torch.testing.assert_close(probs[:, 5, 5], sum(window.values()) / 4)


def test_window_starts_cover_the_axis_and_end_at_the_border():
    assert window_starts(16, 16, 10) == [0]
    assert window_starts(37, 16, 10) == [0, 10, 20, 21]
    assert window_starts(1024, 512, 341) == [0, 341, 512]


def test_multiscale_with_scale_one_and_no_flip_equals_single():
    image = random_image()
    model = LeftRightModel()
    out = predict_multiscale(model, image, scales=(1.0,), flip=False)
    torch.testing.assert_close(out, predict_single(model, image), rtol=0, atol=0)


def test_flip_changes_nothing_for_a_flip_equivariant_model():
    image = random_image()
    model = pointwise_model()
    out = predict_multiscale(model, image, scales=(1.0,), flip=True)
    torch.testing.assert_close(out, predict_single(model, image), rtol=0, atol=1e-6)


def test_flip_averages_with_the_flipped_back_prediction_of_the_mirrored_image():
    image = random_image()
    model = LeftRightModel()
    plain = predict_single(model, image)
    mirrored = predict_single(model, image.flip(-1)).flip(-1)
    assert not torch.allclose(plain, mirrored)  # the model is not flip-equivariant
    out = predict_multiscale(model, image, scales=(1.0,), flip=True)
    torch.testing.assert_close(out, (plain + mirrored) / 2)


def test_scales_agree_on_a_uniform_image_whatever_the_rounding_of_odd_sizes():
    image = torch.ones(1, 3, 37, 53) * torch.tensor([0.3, -1.0, 2.0]).view(1, 3, 1, 1)
    model = pointwise_model()
    out = predict_multiscale(model, image)  # default scales 0.5 ... 1.75, with flip
    assert out.shape == (1, NUM_CLASSES, 37, 53)
    torch.testing.assert_close(out, predict_single(model, image), rtol=0, atol=1e-6)


def test_multiscale_can_run_each_scale_through_the_sliding_window():
    image = random_image(height=37, width=53)
    model = pointwise_model()
    out = predict_multiscale(model, image, scales=(1.0,), flip=True, sliding={"crop": 16})
    torch.testing.assert_close(out, predict_single(model, image), rtol=0, atol=1e-6)


def test_prediction_restores_the_training_mode_and_uses_eval_batch_norm():
    model = nn.Sequential(nn.Conv2d(3, NUM_CLASSES, 1), nn.BatchNorm2d(NUM_CLASSES))
    model.train()
    stats = model[1].running_mean.clone()
    predict_single(model, random_image())
    assert model.training
    assert torch.equal(model[1].running_mean, stats)


def test_unknown_mode_names_the_modes():
    with pytest.raises(SegflowError, match="single, multiscale, sliding"):
        predict(pointwise_model(), random_image(), "tiles")


def test_sliding_rejects_a_bad_crop_with_a_message():
    with pytest.raises(SegflowError, match="crop"):
        predict_sliding(pointwise_model(), random_image(), crop=(0, 16))


def test_probabilities_can_be_modified_in_place_by_the_caller():
    probs = predict_single(pointwise_model(), random_image())
    probs[:, 0] += 1.0  # e.g. a post-processing step; inference-mode tensors would refuse this
    assert not probs.requires_grad
