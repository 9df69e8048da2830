"""ResNet and MobileNetV2 backbones: torchvision parity, dilation, weight loading."""

from __future__ import annotations

import pytest
import torch

from segflow.errors import SegflowError
from segflow.models.backbones import FEATURE_KEYS, build_backbone

# torchvision's parameter counts minus the ImageNet classifier (fc / classifier.1).
TORCHVISION_TRUNK_PARAMS = {
    "resnet18": 11_689_512 - (512 * 1000 + 1000),
    "resnet34": 21_797_672 - (512 * 1000 + 1000),
    "resnet50": 25_557_032 - (2048 * 1000 + 1000),
    "resnet101": 44_549_160 - (2048 * 1000 + 1000),
    "mobilenet_v2": 3_504_872 - (1280 * 1000 + 1000),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_TRUNK_PARAMS))
def test_trunk_parameter_count_equals_torchvision_without_classifier(name):
    with torch.device("meta"):  # counts only: no memory, no init cost
        model = build_backbone(name)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_TRUNK_PARAMS[name]
    assert TORCHVISION_TRUNK_PARAMS["resnet18"] == 11_176_512
    assert TORCHVISION_TRUNK_PARAMS["resnet50"] == 23_508_032
    assert TORCHVISION_TRUNK_PARAMS["resnet101"] == 42_500_160
    assert TORCHVISION_TRUNK_PARAMS["mobilenet_v2"] == 2_223_872


def test_parameter_names_follow_torchvision():
    resnet = build_backbone("resnet50").state_dict()
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.weight",
        "layer4.2.bn3.bias",
    ):
        assert key in resnet
    mobile = build_backbone("mobilenet_v2").state_dict()
    for key in (
        "features.0.0.weight",
        "features.0.1.running_mean",
        "features.1.conv.0.0.weight",
        "features.1.conv.1.weight",
        "features.2.conv.0.0.weight",
        "features.2.conv.1.0.weight",
        "features.2.conv.3.weight",
        "features.17.conv.3.bias",
        "features.18.0.weight",
        "features.18.1.weight",
    ):
        assert key in mobile
    assert not any(k.startswith(("fc.", "classifier.")) for k in [*resnet, *mobile])


EXPECTED_CHANNELS = {
    "resnet18": {"s2": 64, "s4": 64, "s8": 128, "s16": 256, "s32": 512},
    "resnet50": {"s2": 64, "s4": 256, "s8": 512, "s16": 1024, "s32": 2048},
    "mobilenet_v2": {"s2": 16, "s4": 24, "s8": 32, "s16": 96, "s32": 1280},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_CHANNELS))
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_dilation_keeps_the_resolution_of_the_last_stages(name, output_stride):
    model = build_backbone(name, output_stride=output_stride).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    strides = {"s2": 2, "s4": 4, "s8": 8, "s16": min(16, output_stride), "s32": output_stride}
    assert model.output_stride == output_stride
    assert model.channels == EXPECTED_CHANNELS[name]
    assert set(FEATURE_KEYS) <= set(feats)
    for key, stride in strides.items():
        assert tuple(feats[key].shape) == (1, model.channels[key], 64 // stride, 96 // stride), key


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_backbone_computes_the_strided_features_on_a_denser_grid(name, output_stride):
    # With the same weights, replacing a stride by dilation must give exactly the strided
    # network's outputs at every (32 / output_stride)-th position: this fails if a stage uses
    # the wrong dilation (e.g. the first dilated block not keeping the previous one).
    torch.manual_seed(0)
    strided = build_backbone(name, output_stride=32).eval()
    dilated = build_backbone(name, output_stride=output_stride)
    dilated.load_state_dict(strided.state_dict())
    dilated.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = strided(x), dilated(x)
    step = 32 // output_stride
    torch.testing.assert_close(b["s32"][..., ::step, ::step], a["s32"], rtol=1e-4, atol=1e-4)
    if output_stride == 8:
        torch.testing.assert_close(b["s16"][..., ::2, ::2], a["s16"], rtol=1e-4, atol=1e-4)


def test_resnet_width_scales_every_stage_for_small_models():
    model = build_backbone("resnet50", output_stride=8, width=16).eval()
    assert model.channels == {"s2": 16, "s4": 64, "s8": 128, "s16": 256, "s32": 512}
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 32, 48))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "s2": (16, 16, 24),
        "s4": (64, 8, 12),
        "s8": (128, 4, 6),
        "s16": (256, 4, 6),
        "s32": (512, 4, 6),
    }
    with pytest.raises(SegflowError, match="width"):
        build_backbone("resnet18", width=0)


def _randomise_statistics(model: torch.nn.Module) -> None:
    # Fresh BN stats (0/1) would hide a failure to load them: make every buffer distinctive.
    for name, buf in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buf.copy_(torch.rand_like(buf) + 0.5)


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("resnet18", {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}),
        (
            "mobilenet_v2",
            {
                "classifier.1.weight": torch.zeros(1000, 1280),
                "classifier.1.bias": torch.zeros(1000),
            },
        ),
    ],
)
def test_torchvision_format_weights_load_into_a_fresh_backbone(tmp_path, name, head):
    torch.manual_seed(1)
    source = build_backbone(name)
    _randomise_statistics(source)
    path = tmp_path / f"{name}.pth"
    torch.save({**source.state_dict(), **head}, path)  # as torchvision saves it: with a head

    torch.manual_seed(2)
    loaded = build_backbone(name, output_stride=16, pretrained=path).eval()
    source.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # OS 16 vs OS 32 differ only in stride/dilation: compare the stride-independent levels.
        want, got = source(x), loaded(x)
    for key in ("s4", "s8", "s16"):
        torch.testing.assert_close(got[key], want[key])
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_weights_of_the_wrong_shape_are_an_error_naming_the_file(tmp_path):
    state = build_backbone("resnet18").state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "resnet18-bad.pth"
    torch.save(state, path)
    with pytest.raises(SegflowError, match=r"resnet18-bad\.pth.*layer1\.0\.conv1\.weight"):
        build_backbone("resnet18", pretrained=path)


def test_weights_of_another_architecture_are_an_error_naming_the_file(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(build_backbone("mobilenet_v2").state_dict(), path)
    with pytest.raises(SegflowError, match=r"mobilenet\.pth.*missing: conv1\.weight"):
        build_backbone("resnet18", pretrained=path)
