"""DeepLab v2 / LargeFOV / v3 / v3+ and PSPNet: shapes, published settings, options, weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segflow.errors import SegflowError
from segflow.models import build
from segflow.models.backbones import build_backbone
from segflow.models.summary import model_summary

# Small but complete variants: every head part is there, only the widths are reduced.
_RESNET18_W16 = {"backbone": "resnet18", "backbone_options": {"width": 16}}
SMALL = {
    "deeplabv2": _RESNET18_W16,
    "deeplab_largefov": {"fc_channels": 32, "backbone_options": {"width": 8}},
    "deeplabv3": {**_RESNET18_W16, "aspp_channels": 32},
    "deeplabv3plus": {"backbone": "mobilenet_v2", "aspp_channels": 32},
    "pspnet": {**_RESNET18_W16, "head_channels": 32},
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("output_stride", [None, 16])
def test_logits_have_the_input_size_for_odd_inputs(name, output_stride):
    model = build(name, 5, output_stride=output_stride, **SMALL[name])
    x = torch.randn(2, 3, 61, 87)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 5, 61, 87)
    logits.mean().backward()
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 5, 61, 87)


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus", "pspnet"])
def test_image_pooling_branches_train_with_a_batch_of_one(name):
    # BatchNorm on a globally pooled 1x1 map cannot train at batch size 1 (torchvision's ASPP
    # raises there); these heads must.
    model = build(name, 3, **SMALL[name]).train()
    loss = model(torch.randn(1, 3, 48, 64)).logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_deeplabv2_sums_the_scores_of_four_atrous_branches():
    model = build("deeplabv2", 4, **SMALL["deeplabv2"]).eval()
    assert [conv.dilation for conv in model.aspp] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(conv.out_channels == 4 for conv in model.aspp)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        f = model.backbone(x)["s32"]
        want = F.interpolate(sum(conv(f) for conv in model.aspp), size=(64, 64), mode="bilinear")
        torch.testing.assert_close(model(x), want)


def _on_meta(name: str, **kwargs):
    with torch.device("meta"):  # structure only: no memory, no weight init
        return build(name, 21, **kwargs)


def test_defaults_are_the_published_settings():
    v2 = _on_meta("deeplabv2")
    assert v2.backbone.output_stride == 8
    assert sum(p.numel() for p in v2.backbone.parameters()) == 42_500_160  # ResNet-101
    assert [c.dilation[0] for c in v2.aspp] == [6, 12, 18, 24]

    fov = _on_meta("deeplab_largefov")
    assert fov.backbone.output_stride == 8
    assert fov.backbone.channels["s32"] == 512  # VGG-16 conv5
    assert (fov.fc6.kernel_size, fov.fc6.dilation, fov.fc6.out_channels) == ((3, 3), (12, 12), 1024)
    assert (fov.fc7.kernel_size, fov.fc7.out_channels) == ((1, 1), 1024)

    for name in ("deeplabv3", "deeplabv3plus"):
        model = _on_meta(name)
        assert model.backbone.output_stride == 16
        assert model.backbone.channels["s32"] == 2048  # ResNet-50
        atrous = [b[0].dilation[0] for b in model.aspp.branches[1:]]
        assert atrous == [6, 12, 18]
        assert model.aspp.project[0][0].out_channels == 256
    # Doubled at output stride 8, as in the DeepLab v3 paper.
    v3_os8 = _on_meta("deeplabv3", output_stride=8)
    assert [b[0].dilation[0] for b in v3_os8.aspp.branches[1:]] == [12, 24, 36]
    assert _on_meta("deeplabv3plus").reduce[0].out_channels == 48

    psp = _on_meta("pspnet")
    assert psp.backbone.output_stride == 8
    assert psp.backbone.channels["s32"] == 2048
    assert [stage[0].output_size for stage in psp.ppm.stages] == [1, 2, 3, 6]
    assert all(stage[1].out_channels == 512 for stage in psp.ppm.stages)  # 2048 / 4
    assert psp.head[0].out_channels == 512


def test_deeplabv3_resnet50_matches_torchvision_parameters_and_flops():
    # torchvision's deeplabv3_resnet50 (OS 8, rates 12/24/36) publishes 42,004,074 params and
    # 178.722 "GFLOPS" (really GMACs) at 520x520, both including its auxiliary FCN head.
    # Without that head (3x3 1024->256 + BN, 1x1 256->21) the models must agree, except for
    # the image-pooling branch, where this ASPP has a conv bias (256) instead of BN (512).
    aux_params = 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21
    aux_macs = (1024 * 256 * 9 + 256 * 21) * 65 * 65
    got = model_summary("deeplabv3", 21, (520, 520), output_stride=8)
    assert got["params"] == 42_004_074 - aux_params - 256
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate.
    assert got["gflops"] / 2 + aux_macs / 1e9 == pytest.approx(178.722, abs=0.001)


def test_model_summary_counts_the_parameters_of_the_built_model():
    small = model_summary("deeplabv3plus", 5, (64, 64), **SMALL["deeplabv3plus"])
    model = build("deeplabv3plus", 5, **SMALL["deeplabv3plus"])
    assert small["params"] == sum(p.numel() for p in model.parameters())
    assert small["name"] == "deeplabv3plus"
    bigger = model_summary("deeplabv3plus", 5, (128, 128), **SMALL["deeplabv3plus"])
    assert bigger["gflops"] > 3 * small["gflops"]  # ~4x pixels; pooled branches do not grow


@pytest.mark.parametrize("name", sorted(SMALL))
def test_unknown_option_is_an_error_naming_it(name):
    with pytest.raises(SegflowError, match=rf"{name}.*aspp_chanels"):
        build(name, 3, aspp_chanels=16)


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("deeplabv3", {"aspp_channels": 0}, "aspp_channels"),
        ("deeplabv3plus", {"dropout": 1.0}, "dropout"),
        ("deeplabv2", {"rates": (6, 0)}, r"rates\[1\]"),
        ("deeplab_largefov", {"fc_channels": -1}, "fc_channels"),
        ("pspnet", {"bins": (1, 0)}, "bins"),
    ],
)
def test_invalid_option_values_are_errors_naming_the_option(name, options, field):
    with pytest.raises(SegflowError, match=field):
        build(name, 3, **{k: v for k, v in SMALL[name].items() if k not in options}, **options)


def test_backbone_options_reach_the_backbone_and_wrong_ones_are_errors():
    model = build("deeplab_largefov", 3, **SMALL["deeplab_largefov"])
    assert model.backbone.channels["s32"] == 64  # VGG at width 8: 8 * 8
    assert build("pspnet", 3, **SMALL["pspnet"]).backbone.channels["s32"] == 128  # 16 * 8
    with pytest.raises(SegflowError, match="resnet18.*widht"):
        build("pspnet", 3, backbone="resnet18", backbone_options={"widht": 8})
    with pytest.raises(SegflowError, match="mobilenet_v2.*width"):
        build("deeplabv3plus", 3, backbone="mobilenet_v2", backbone_options={"width": 8})


def test_pretrained_loads_torchvision_weights_into_the_backbone(tmp_path):
    source = build_backbone("resnet18")
    for name, buf in source.named_buffers():
        if name.endswith("running_var"):
            buf.copy_(torch.rand_like(buf) + 0.5)
    path = tmp_path / "resnet18.pth"
    torch.save({**source.state_dict(), "fc.weight": torch.zeros(1000, 512)}, path)
    model = build("deeplabv3", 3, backbone="resnet18", pretrained=path, aspp_channels=16)
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key

    bad = tmp_path / "not-resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(SegflowError, match=r"not-resnet18\.pth"):
        build("pspnet", 3, backbone="resnet18", pretrained=bad, head_channels=16)
