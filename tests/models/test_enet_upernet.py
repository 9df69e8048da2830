"""ENet and UPerNet: their published sizes and what makes each that model.

ENet: a small decoder (not SegNet's mirror), max-unpooling by the encoder's own pool indices,
asymmetric 5x1/1x5 and dilated bottlenecks. UPerNet: pyramid pooling on the last stage and an
FPN whose fusion reads all four stages.
"""

from __future__ import annotations

import pytest
import torch

from segflow.errors import SegflowError
from segflow.models import build
from segflow.models.summary import published_count

TOLERANCE = 0.15
SMALL_UPERNET = {"backbone": "resnet18", "backbone_options": {"width": 16}, "channels": 32}


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["enet", "upernet"])
def test_parameter_count_is_within_15_percent_of_the_published_one(name):
    count = published_count(name)
    assert count is not None  # what `segflow models` shows in its "paper" column
    with torch.device("meta"):
        model = build(name, count.num_classes)
    millions = _params(model) / 1e6
    print(f"{name}: {millions:.3f} M, published {count.millions} M ({count.source})")
    assert millions == pytest.approx(count.millions, rel=TOLERANCE), count.source


# --------------------------------------------------------------------------- ENet


def test_enet_decoder_holds_a_small_share_of_the_parameters_unlike_segnets_mirror():
    with torch.device("meta"):
        enet = build("enet", 19)
        segnet = build("segnet", 19)
    enet_share = _params(enet.decoder) / _params(enet)
    segnet_share = 1 - _params(segnet.encoder) / _params(segnet)
    print(f"decoder share: ENet {enet_share:.3f}, SegNet {segnet_share:.3f}")
    assert enet_share < 0.1
    assert segnet_share > 0.4


def test_enet_unpools_by_the_indices_of_its_own_downsampling_bottlenecks():
    torch.manual_seed(0)
    model = build("enet", 5).eval()
    pooled, unpooled = {}, {}
    for name in ("down1", "down2"):
        pool = getattr(model.encoder, name).pool
        pool.register_forward_hook(lambda m, args, out, name=name: pooled.update({name: out[1]}))
    for name in ("up4", "up5"):
        unpool = getattr(model.decoder, name).unpool

        def record(m, args, out, name=name):
            unpooled[name] = (args[1], out)

        unpool.register_forward_hook(record)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 80))
    assert unpooled["up4"][0] is pooled["down2"]  # 1/8 -> 1/4 by stage 2's pool
    assert unpooled["up5"][0] is pooled["down1"]  # 1/4 -> 1/2 by stage 1's pool
    for indices, out in unpooled.values():
        # Max-unpooling writes each value where its pool found the max, zeros elsewhere.
        flat = out.flatten(2)
        kept = torch.zeros_like(flat, dtype=torch.bool).scatter_(2, indices.flatten(2), True)
        assert (flat[~kept] == 0).all()
        assert kept.sum() == indices.numel()


def test_enet_encoder_has_asymmetric_and_dilated_bottlenecks_in_stages_2_and_3():
    with torch.device("meta"):
        model = build("enet", 19)
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    kernels = [c.kernel_size for c in convs]
    assert kernels.count((5, 1)) == kernels.count((1, 5)) == 4  # 2.3, 2.7, 3.3, 3.7
    dilations = [c.dilation[0] for c in convs if c.dilation[0] > 1]
    assert dilations == [2, 4, 8, 16, 2, 4, 8, 16]
    # The downsampling bottlenecks project with 2x2 stride-2 convs; the initial block has 13.
    assert [c.out_channels for c in convs if c.stride == (2, 2)] == [13, 16, 32]
    assert len(model.encoder.stage1) == 4
    assert len(model.encoder.stage2) == len(model.encoder.stage3) == 8


def test_enet_options_are_checked():
    with pytest.raises(SegflowError, match="'enet' has its own encoder"):
        build("enet", 5, backbone="resnet18")
    with pytest.raises(SegflowError, match="output_stride 8"):
        build("enet", 5, output_stride=16)
    with pytest.raises(SegflowError, match="dropout must be in"):
        build("enet", 5, dropout=1.0)


# --------------------------------------------------------------------------- UPerNet


def test_upernet_defaults_are_the_published_setting():
    with torch.device("meta"):
        model = build("upernet", 150)
    assert model.backbone.backbone_name == "resnet50"
    assert model.backbone.output_stride == 32  # no dilation: the FPN recovers detail
    assert [s[1].out_channels for s in model.ppm.stages] == [512] * 4
    assert [s[0].output_size for s in model.ppm.stages] == [1, 2, 3, 6]
    assert [lat[0].in_channels for lat in model.lateral] == [256, 512, 1024]
    assert model.fuse[0].in_channels == 4 * 512


def test_upernet_fuses_all_four_stages_and_pools_the_last():
    torch.manual_seed(0)
    model = build("upernet", 5, **SMALL_UPERNET).eval()
    seen = []
    model.ppm.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 67, 93))
        base = model.decode(feats)
        assert seen == [feats["s32"]] and seen[0] is feats["s32"]  # the PPM reads stage 4 only
        for key in ("s4", "s8", "s16", "s32"):
            changed = {**feats, key: feats[key] + torch.randn_like(feats[key])}
            assert not torch.allclose(model.decode(changed), base), key  # each stage is read
        unused = {**feats, "s2": feats["s2"] + 1}
        torch.testing.assert_close(model.decode(unused), base)  # the stem is not


def test_upernet_aux_head_only_while_training_and_options_checked():
    model = build("upernet", 5, aux_weight=0.4, **SMALL_UPERNET)
    x = torch.randn(2, 3, 48, 64)
    out, aux = model.train()(x)
    assert out.shape == aux.shape == (2, 5, 48, 64)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 5, 48, 64)
    with pytest.raises(SegflowError, match="'upernet'.*bins"):
        build("upernet", 5, bins=[], **SMALL_UPERNET)
    with pytest.raises(SegflowError, match="'upernet'.*channels"):
        build("upernet", 5, **{**SMALL_UPERNET, "channels": 0})
