"""VGG-16 backbones: torchvision layout and counts, dilation, stages, weight files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segflow.errors import SegflowError
from segflow.models.backbones import build_backbone

# Indices of the 13 convs in torchvision's ``features`` for cfg "D" (conv, relu / conv, bn, relu).
VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG16_BN_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]


def test_vgg16_features_have_torchvisions_parameter_count():
    with torch.device("meta"):
        model = build_backbone("vgg16")
    assert sum(p.numel() for p in model.parameters()) == 14_714_688


def test_vgg16_bn_features_add_one_weight_and_bias_per_bn_channel():
    # 13 BNs over 2*64 + 2*128 + 3*256 + 6*512 = 4,224 channels, weight + bias each: 8,448 more,
    # the difference of torchvision's totals (vgg16_bn 138,365,992 - vgg16 138,357,544).
    with torch.device("meta"):
        model = build_backbone("vgg16_bn")
    assert sum(p.numel() for p in model.parameters()) == 14_714_688 + 8_448 == 14_723_136
    bn_channels = sum(
        m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    assert bn_channels == 4_224


@pytest.mark.parametrize("name, convs", [("vgg16", VGG16_CONVS), ("vgg16_bn", VGG16_BN_CONVS)])
def test_parameter_names_are_torchvisions_features_indices(name, convs):
    with torch.device("meta"):
        keys = set(build_backbone(name).state_dict())
    expected = {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    if name == "vgg16_bn":
        stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        expected |= {f"features.{i + 1}.{p}" for i in convs for p in stats}
    assert keys == expected


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_dilation_keeps_resolution_measured_on_a_forward_pass(output_stride):
    model = build_backbone("vgg16", output_stride, width=8).eval()
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        feats = model(x)
    # Pools floor: every stride-2 pool halves (rounding down) the size.
    assert feats["s32"].shape[-2:] == (97 // output_stride, 131 // output_stride)
    assert feats["s8"].shape[-2:] == (97 // 8, 131 // 8)
    assert model.output_stride == output_stride
    assert model.dilation == 32 // output_stride  # what a head after s32 must dilate by
    assert {k: v.shape[1] for k, v in feats.items()} == model.channels
    conv5 = [m for m in model.features[24:] if isinstance(m, torch.nn.Conv2d)]
    assert all(c.dilation == ((2, 2) if output_stride == 8 else (1, 1)) for c in conv5)


def test_dilated_trunk_loads_the_strided_trunks_weights_and_sees_the_same_image():
    strided = build_backbone("vgg16", 32, width=8).eval()
    dilated = build_backbone("vgg16", 8, width=8).eval()
    dilated.load_state_dict(strided.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = strided(x), dilated(x)
    # Up to pool3 nothing changed; later the dilated map is denser, not different in kind.
    assert torch.equal(a["s8"], b["s8"])
    assert b["s32"].shape[-2:] == (8, 8) and a["s32"].shape[-2:] == (2, 2)


def test_stages_are_the_five_conv_blocks_sharing_features_weights():
    model = build_backbone("vgg16_bn", width=8).eval()
    stages = model.stages
    assert [sum(isinstance(m, torch.nn.Conv2d) for m in s) for s in stages] == [2, 2, 3, 3, 3]
    stage_params = {id(p) for s in stages for p in s.parameters()}
    assert stage_params == {id(p) for p in model.parameters()}
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        y = x
        for stage in stages:
            y = F.max_pool2d(stage(y), 2)
        assert torch.equal(y, model(x)["s32"])


def _torchvision_file(model: torch.nn.Module, path, fc: int = 16) -> None:
    """Save ``model`` as torchvision would, classifier included (which backbones must drop)."""
    state = dict(model.state_dict())
    in_features = model.channels["s32"] * 49
    state |= {
        "classifier.0.weight": torch.randn(fc, in_features),
        "classifier.0.bias": torch.randn(fc),
        "classifier.3.weight": torch.randn(fc, fc),
        "classifier.3.bias": torch.randn(fc),
        "classifier.6.weight": torch.randn(1000, fc),
        "classifier.6.bias": torch.randn(1000),
    }
    torch.save(state, path)


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_torchvision_format_weights_round_trip(tmp_path, name):
    torch.manual_seed(0)
    source = build_backbone(name, width=8)
    for m in source.modules():  # non-trivial BN statistics, so buffers must load too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / f"{name}.pth"
    _torchvision_file(source, path)
    torch.manual_seed(1)
    loaded = build_backbone(name, 16, pretrained=path, width=8)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        # Same weights at another output stride: identical up to pool4.
        assert torch.equal(source.eval()(x)["s16"], loaded.eval()(x)["s16"])
    fresh = build_backbone(name, 32, pretrained=path, width=8).eval()
    with torch.no_grad():
        assert torch.equal(source(x)["s32"], fresh(x)["s32"])


def test_mismatching_weights_file_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "vgg16_bn_weights.pth"
    _torchvision_file(build_backbone("vgg16_bn", width=8), path)
    with pytest.raises(SegflowError, match="vgg16_bn_weights.pth"):
        build_backbone("vgg16", pretrained=path, width=8)  # BN keys unexpected
    with pytest.raises(SegflowError, match="vgg16_bn_weights.pth.*shape"):
        build_backbone("vgg16_bn", pretrained=path, width=16)
