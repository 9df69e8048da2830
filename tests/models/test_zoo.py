"""Every registered model: logits of the input size, a summary, and the ability to overfit.

The lists come from ``list_models()``, so a new architecture is covered as soon as it
registers; it must also declare its small test options in :data:`SMALL`.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segflow.data.datasets.base import IGNORE_INDEX, read_label_png, read_rgb
from segflow.models import build, list_models
from segflow.models.summary import summaries
from tests.project import CAMVID

CAMVID_VOID = 11

_RESNET18_W16 = {"backbone": "resnet18", "backbone_options": {"width": 16}}

# Small but complete variants of each model: every part of the architecture is there, only
# channel widths shrink (ResNet/VGG "width" is the first-stage channel count, 64 published).
SMALL: dict[str, dict] = {
    "autodeeplab": {"filter_multiplier": 4, "aspp_channels": 32},
    "bisenetv2": {"width": 16, "head_channels": 32},
    "deconvnet": {"width": 8, "fc_channels": 64},
    "deeplab_largefov": {"fc_channels": 64, "backbone_options": {"width": 8}},
    "deeplabv2": _RESNET18_W16,
    "deeplabv3": {**_RESNET18_W16, "aspp_channels": 32},
    "deeplabv3plus": {**_RESNET18_W16, "aspp_channels": 32},
    "enet": {},  # 0.36 M parameters as published
    "fcn8s": {"width": 8, "fc_channels": 64},
    "fcn16s": {"width": 8, "fc_channels": 64},
    "fcn32s": {"width": 8, "fc_channels": 64},
    "fcn_resnet": {**_RESNET18_W16, "head_channels": 32},
    "frrn": {"width": 16, "residual_channels": 16},
    "gridnet": {"channels": [8, 16, 24, 32, 40]},
    "pspnet": {**_RESNET18_W16, "head_channels": 32},
    "refinenet": {**_RESNET18_W16, "features": 32},
    "segnet": {"width": 8},
    "segnet_basic": {"width": 16},
    "unet": {"width": 8},
    "upernet": {**_RESNET18_W16, "channels": 32},
}

# For the overfit test only. Dropout (FCN's fc6/fc7, RefineNet's 0.5, GridNet's total dropout)
# exists to stop exactly the memorisation measured here, so it is off (ENet's light spatial
# dropout, 0.01-0.1, stays on: 0.954 after 180 steps with it). Heads that upsample bilinearly
# from stride 16 or 32 see a 64 x 80 image as a 4 x 5 or 2 x 3 grid of class scores, whose best
# interpolation of a street scene stays below 95 % (measured plateaus: DeepLab v3 at OS 16 0.93,
# FCN-16s 0.93, FCN-32s 0.76): DeepLab v3 runs at output stride 8 and FCN-16s/32s learn their
# upsampling (FCN's option).
OVERFIT_EXTRA: dict[str, dict] = {
    "deeplab_largefov": {"dropout": 0.0},
    "deeplabv3": {"output_stride": 8},
    "fcn8s": {"dropout": 0.0},
    "fcn16s": {"dropout": 0.0, "fixed_upsampling": False},
    "fcn32s": {"dropout": 0.0, "fixed_upsampling": False},
    "gridnet": {"total_dropout": 0.0},
    "refinenet": {"dropout": 0.0},
}
OVERFIT_ACCURACY = 0.95
OVERFIT_MAX_STEPS = 300
OVERFIT_LR = 3e-3
MODELS = list_models()


def test_every_registered_model_declares_small_test_options():
    assert sorted(SMALL) == MODELS


@pytest.mark.parametrize("name", MODELS)
def test_logits_are_n_c_h_w_of_an_odd_sized_input(name):
    torch.manual_seed(0)
    model = build(name, 7, **SMALL.get(name, {}))
    x = torch.randn(2, 3, 67, 93)
    logits = model.train()(x)
    assert logits.shape == (2, 7, 67, 93)
    logits.logsumexp(1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        assert model.eval()(x[:1, :, :45, :51]).shape == (1, 7, 45, 51)


def test_summaries_cover_every_model_at_its_defaults():
    rows = summaries()
    assert [r["name"] for r in rows] == MODELS
    for row in rows:
        assert row["params"] > 300_000, row  # published sizes: 0.37 M (ENet) and up
        assert row["gflops"] > 3, row  # at 512 x 512 (ENet 3.9)


@pytest.fixture(scope="module")
def camvid_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two CamVid train images, halved (180 x 240) and centre-cropped to 64 x 80.

    Two street scenes with 5-6 classes each whose centre crops have few one-pixel structures
    (poles), so the bar measures learning rather than what 64 x 80 pixels can resolve.
    """
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set SEGFLOW_CAMVID)")
    images, labels = [], []
    for name in ("0006R0_f02850.png", "0016E5_05820.png"):
        image = cv2.resize(
            read_rgb(CAMVID / "train" / name), (240, 180), interpolation=cv2.INTER_AREA
        )
        label = cv2.resize(
            read_label_png(CAMVID / "trainannot" / name),
            (240, 180),
            interpolation=cv2.INTER_NEAREST,
        )
        images.append(image[58:122, 80:160])
        labels.append(label[58:122, 80:160])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    y = torch.from_numpy(np.stack(labels)).long()
    y[y == CAMVID_VOID] = IGNORE_INDEX
    return (x - mean) / std, y


def _pixel_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    model.train()
    valid = y != IGNORE_INDEX
    return (pred[valid] == y[valid]).float().mean().item()


@pytest.mark.integration
@pytest.mark.parametrize("name", MODELS)
def test_model_overfits_one_camvid_batch(name, camvid_batch):
    # A model that cannot memorise two images has a bug (a detached branch, a wrong skip, a
    # broken upsampling); the bar is eval-mode pixel accuracy, so BN statistics count too.
    x, y = camvid_batch
    torch.manual_seed(0)
    model = build(name, 11, **{**SMALL.get(name, {}), **OVERFIT_EXTRA.get(name, {})}).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=OVERFIT_LR)
    start, accuracy, step = time.perf_counter(), 0.0, 0
    while step < OVERFIT_MAX_STEPS and accuracy < OVERFIT_ACCURACY:
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 10 == 0:
            accuracy = _pixel_accuracy(model, x, y)
    seconds = time.perf_counter() - start
    print(f"{name}: accuracy {accuracy:.3f} after {step} steps, {seconds:.1f} s")
    assert accuracy >= OVERFIT_ACCURACY, f"{name}: {accuracy:.3f} after {step} steps"
