"""FCN, SegNet and U-Net: any input size, options, pretrained files, overfitting real CamVid."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segflow.data.datasets.base import IGNORE_INDEX, read_label_png, read_rgb
from segflow.errors import SegflowError
from segflow.models.backbones import build_backbone
from segflow.models.fcn import FCNVGG, FCNResNet, fcn8s, fcn16s, fcn32s, fcn_resnet
from segflow.models.segnet import SegNet, SegNetBasic, segnet, segnet_basic
from segflow.models.unet import BackboneUNet, UNet, unet
from segflow.models.upsample import BedOfNails, MaxUnpool, NearestUnpool, TransposedConv
from tests.project import CAMVID

# Small but complete versions of every model of this file.
SMALL = {
    "fcn32s": (fcn32s, {"width": 8, "fc_channels": 32}),
    "fcn16s": (fcn16s, {"width": 8, "fc_channels": 32}),
    "fcn8s": (fcn8s, {"width": 8, "fc_channels": 32}),
    "fcn_resnet/resnet18": (fcn_resnet, {"backbone": "resnet18", "head_channels": 32}),
    "fcn_resnet/vgg16": (
        fcn_resnet,
        {"backbone": "vgg16", "backbone_options": {"width": 8}, "head_channels": 32},
    ),
    "segnet": (segnet, {"width": 8}),
    "segnet/nearest": (segnet, {"width": 8, "upsample": "nearest"}),
    "segnet/bed_of_nails": (segnet, {"width": 8, "upsample": "bed_of_nails"}),
    "segnet_basic": (segnet_basic, {"width": 8}),
    "unet": (unet, {"width": 4}),
    "unet/bilinear+strided": (
        unet,
        {"width": 4, "upsample": "bilinear", "downsample": "strided_conv"},
    ),
    "unet/nearest": (unet, {"width": 4, "upsample": "nearest"}),
    "unet/resnet18": (unet, {"backbone": "resnet18", "width": 16}),
    "unet/vgg16": (unet, {"backbone": "vgg16", "width": 16, "backbone_options": {"width": 8}}),
}


@pytest.mark.parametrize("key", sorted(SMALL))
def test_logits_are_n_c_h_w_of_the_input_for_odd_sizes(key):
    fn, options = SMALL[key]
    model = fn(5, **options).eval()
    with torch.no_grad():
        for h, w in ((33, 47), (361, 479), (64, 80)):
            assert model(torch.randn(1, 3, h, w)).shape == (1, 5, h, w)
    model.train()
    assert model(torch.randn(2, 3, 33, 47)).shape == (2, 5, 33, 47)


def test_registry_builds_fcn8s_for_11_classes_and_rejects_unknown_names():
    from segflow.models import build, list_models

    with torch.device("meta"):  # full size (134M parameters) without allocating them
        model = build("fcn8s", 11)
    assert isinstance(model, FCNVGG) and model.skips == 2
    assert model.score_fr.out_channels == 11 and model.fc6.out_channels == 4096
    assert {"fcn32s", "fcn16s", "fcn8s", "fcn_resnet", "segnet", "segnet_basic", "unet"} <= set(
        list_models()
    )
    with pytest.raises(SegflowError, match="'fcn9s' is unknown.*fcn8s"):
        build("fcn9s", 11)


def test_default_builds_are_the_published_architectures():
    with torch.device("meta"):
        res = fcn_resnet(21)
        seg = segnet(11)
        basic = segnet_basic(11)
        plain = unet(2)
        resunet = unet(2, backbone="resnet34")
        x = torch.empty(1, 3, 97, 131)
        assert resunet(x).shape == (1, 2, 97, 131)
        assert res(x).shape == (1, 21, 97, 131)  # shapes only, on meta
        assert seg(x).shape == (1, 11, 97, 131)
    assert isinstance(res, FCNResNet) and res.backbone.output_stride == 8
    assert res.backbone.channels["s32"] == 2048  # resnet50
    assert isinstance(seg, SegNet) and all(isinstance(u, MaxUnpool) for u in seg.unpools)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in seg.encoder.modules()) == 13
    assert isinstance(basic, SegNetBasic) and len(basic.encoder) == len(basic.decoder) == 4
    assert all(e[0].kernel_size == (7, 7) and e[0].out_channels == 64 for e in basic.encoder)
    assert isinstance(plain, UNet) and plain.inc[0].out_channels == 64
    assert plain.downs[-1][1][0].out_channels == 1024
    assert all(isinstance(up.up, TransposedConv) for up in plain.ups)
    assert isinstance(resunet, BackboneUNet) and resunet.backbone.channels["s32"] == 512
    assert [up.conv[-3].out_channels for up in resunet.ups] == [256, 128, 64, 32, 16]


@pytest.mark.parametrize("fn", [fcn32s, fcn16s, fcn8s, fcn_resnet, segnet, segnet_basic, unet])
def test_unknown_option_is_an_error_naming_it(fn):
    with pytest.raises(SegflowError, match="unknown option.*dropout_rate"):
        fn(3, dropout_rate=0.3)


def test_invalid_choices_are_errors_naming_the_field():
    with pytest.raises(SegflowError, match="upsample 'pixel_shuffle'"):
        unet(3, upsample="pixel_shuffle")
    with pytest.raises(SegflowError, match="downsample 'avg_pool'"):
        unet(3, downsample="avg_pool")
    with pytest.raises(SegflowError, match="upsample 'linear'"):
        segnet(3, upsample="linear")
    with pytest.raises(SegflowError, match="vgg16"):
        fcn8s(3, backbone="resnet50")
    with pytest.raises(SegflowError, match="output_stride 32"):
        fcn8s(3, output_stride=8)
    with pytest.raises(SegflowError, match="backbone 'vgg19' is unknown"):
        unet(3, backbone="vgg19")


def test_fcn_skips_start_at_zero_and_upsampling_is_fixed_bilinear_by_default():
    model = fcn8s(4, width=8, fc_channels=16)
    for score in (model.score_fr, model.score_pool4, model.score_pool3):
        assert score.weight.count_nonzero() == 0 and score.bias.count_nonzero() == 0
    ups = (model.upscore2, model.upscore_pool4, model.upscore)
    assert [u.scale for u in ups] == [2, 2, 8]
    assert not any(p.requires_grad for u in ups for p in u.parameters())
    learned = fcn8s(4, width=8, fc_channels=16, fixed_upsampling=False)
    assert all(p.requires_grad for p in learned.upscore.parameters())
    # Zero skip scores: FCN-16s starts out predicting what its coarse path predicts.
    fcn16 = fcn16s(4, width=8, fc_channels=16, dropout=0.0).eval()
    torch.nn.init.normal_(fcn16.score_fr.weight)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = fcn16.backbone(x)
        coarse = fcn16.score_fr(F.relu(fcn16.fc7(F.relu(fcn16.fc6(feats["s32"])))))
        want = fcn16.upscore(fcn16.upscore2(coarse))
        assert torch.equal(fcn16(x), want)


def _vgg_file(path: Path, name: str, width: int, fc: int) -> dict[str, torch.Tensor]:
    """A torchvision-format VGG file: ``features.*`` plus the ImageNet classifier."""
    trunk = build_backbone(name, width=width)
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    state = dict(trunk.state_dict())
    state |= {
        "classifier.0.weight": torch.randn(fc, trunk.channels["s32"] * 49) * 0.05,
        "classifier.0.bias": torch.randn(fc),
        "classifier.3.weight": torch.randn(fc, fc) * 0.1,
        "classifier.3.bias": torch.randn(fc),
        "classifier.6.weight": torch.randn(1000, fc),
        "classifier.6.bias": torch.randn(1000),
    }
    torch.save(state, path)
    return state


def test_fcn_loads_a_torchvision_vgg16_file_and_convolutionalises_its_classifier(tmp_path):
    path = tmp_path / "vgg16.pth"
    state = _vgg_file(path, "vgg16", width=8, fc=16)
    torch.manual_seed(1)
    a = fcn8s(3, pretrained=path, width=8, fc_channels=16).eval()
    torch.manual_seed(2)
    b = fcn8s(3, pretrained=path, width=8, fc_channels=16).eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        torch.nn.init.normal_(a.score_fr.weight)
        b.score_fr.weight.copy_(a.score_fr.weight)
        assert torch.equal(a(x), b(x))  # everything came from the file or a fixed init
        for key, value in a.backbone.state_dict().items():
            assert torch.equal(value, state[key])
        # fc6 as a 7x7 conv == the classifier's first Linear on a flattened 7x7 pool5 map.
        pool5 = torch.randn(1, 64, 7, 7)
        linear = F.linear(
            pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"]
        )
        torch.testing.assert_close(a.fc6(pool5)[:, :, 3, 3], linear, atol=1e-4, rtol=1e-4)
        fc7 = F.linear(linear, state["classifier.3.weight"], state["classifier.3.bias"])
        torch.testing.assert_close(a.fc7(linear[..., None, None])[..., 0, 0], fc7)
    wider = fcn8s(3, pretrained=path, width=8, fc_channels=32)  # classifier does not fit: skipped
    assert not torch.equal(wider.fc6.weight[:16], a.fc6.weight)


def test_segnet_encoder_loads_a_torchvision_vgg16_bn_file(tmp_path):
    path = tmp_path / "vgg16_bn.pth"
    state = _vgg_file(path, "vgg16_bn", width=8, fc=16)
    model = segnet(4, pretrained=path, width=8)
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, state[key])
    with pytest.raises(SegflowError, match="vgg16_bn.pth"):
        segnet(4, backbone="vgg16", pretrained=path, width=8)  # BN keys do not fit plain VGG
    with pytest.raises(SegflowError, match="vgg16_bn.pth"):
        fcn8s(4, pretrained=path, width=8)


def test_unet_resnet_encoder_loads_torchvision_resnet_weights_and_uses_the_stem(tmp_path):
    source = build_backbone("resnet18")
    state = dict(source.state_dict())
    state |= {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = unet(3, backbone="resnet18", pretrained=path, width=16)
    assert isinstance(model, BackboneUNet)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key])
    # Five 2x stages from s32: the fourth concatenates the stride-2 stem, the last has no skip.
    assert model.skip_keys == ["s16", "s8", "s4", "s2", None]
    assert model.ups[3].conv[0].in_channels == 16 // 2 + 64


def test_segnet_upsample_option_selects_the_unpooling():
    assert all(isinstance(u, NearestUnpool) for u in segnet(3, width=8, upsample="nearest").unpools)
    basic = segnet_basic(3, width=8, upsample="bed_of_nails")
    assert all(isinstance(u, BedOfNails) for u in basic.unpools)


def test_segnet_decoder_unpools_into_the_encoders_argmax_positions():
    model = segnet_basic(3, width=8).eval()
    seen = {}
    model.unpools[0].register_forward_hook(lambda m, i, o: seen.update(out=o))
    model.encoder[-1].register_forward_hook(lambda m, i, o: seen.update(enc=o))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 48))
    # Where the last encoder map is not its 2x2 block max, the unpooled map is zero.
    enc = seen["enc"]
    block_max = F.max_pool2d(enc, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.all(seen["out"][enc < block_max] == 0)
    assert (seen["out"] != 0).sum() <= enc.numel() // 4


# --- Overfitting one real CamVid batch ------------------------------------------------------


def _camvid_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two CamVid train images at 64x80, ImageNet-normalised; void (11) -> ignore."""
    if not CAMVID.is_dir():
        pytest.skip(f"CamVid not found at {CAMVID}")
    names = sorted(p.name for p in (CAMVID / "train").glob("*.png"))
    images, labels = [], []
    for name in (names[0], names[299]):
        rgb = cv2.resize(read_rgb(CAMVID / "train" / name), (80, 64), interpolation=cv2.INTER_AREA)
        label = read_label_png(CAMVID / "trainannot" / name)
        label = cv2.resize(label, (80, 64), interpolation=cv2.INTER_NEAREST)
        label[label == 11] = IGNORE_INDEX
        images.append(rgb)
        labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(np.stack(labels)).long()


def _steps_to_overfit(model: torch.nn.Module, max_steps: int = 300) -> tuple[int, float]:
    """Adam steps until eval-mode pixel accuracy (void ignored) reaches 0.95."""
    x, y = _camvid_batch()
    valid = y != IGNORE_INDEX
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    acc = 0.0
    for step in range(1, max_steps + 1):
        model.train()
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(x).argmax(1)[valid] == y[valid]).float().mean().item()
            if acc >= 0.95:
                return step, acc
    return max_steps, acc


# FCN's 32x upsampling is learned here: a fixed bilinear one cannot draw 64x80 detail from a
# 2x3 score map (fixed, FCN-32s plateaus near 0.86 on this batch; that is why FCN has skips).
FCN = {"width": 8, "fc_channels": 64, "dropout": 0.0, "fixed_upsampling": False}
OVERFIT = {
    "fcn32s": (fcn32s, FCN),
    "fcn16s": (fcn16s, FCN),
    "fcn8s": (fcn8s, FCN),
    "fcn_resnet/vgg16": (fcn_resnet, {"backbone": "vgg16", "backbone_options": {"width": 8}}),
    "segnet_basic": (segnet_basic, {"width": 16}),
    "unet": (unet, {"width": 8}),
}
# Several seconds each on a shared CPU core.
OVERFIT_SLOW = {
    "segnet": (segnet, {"width": 8}),
    "unet/vgg16": (unet, {"backbone": "vgg16", "width": 64, "backbone_options": {"width": 8}}),
}


def _overfit(fn, options) -> None:
    torch.manual_seed(0)
    steps, acc = _steps_to_overfit(fn(11, **options))
    assert acc >= 0.95, f"pixel accuracy {acc:.3f} after {steps} Adam steps"


@pytest.mark.parametrize("key", sorted(OVERFIT))
def test_model_overfits_one_camvid_batch(key):
    _overfit(*OVERFIT[key])


@pytest.mark.integration
@pytest.mark.parametrize("key", sorted(OVERFIT_SLOW))
def test_larger_model_overfits_one_camvid_batch(key):
    _overfit(*OVERFIT_SLOW[key])
