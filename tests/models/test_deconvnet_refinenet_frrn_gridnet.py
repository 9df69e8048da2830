"""DeconvNet, RefineNet, FRRN and GridNet: the papers' sizes and layouts, any input size, options.

Overfitting two CamVid crops is tests/models/test_zoo.py's test, which covers every registered
model (these four included, at the SMALL widths declared there).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segflow.errors import SegflowError
from segflow.models import build
from segflow.models.backbones import build_backbone
from segflow.models.deconvnet import DeconvNet, deconvnet
from segflow.models.frrn import FRRN, FRRU, frrn
from segflow.models.gridnet import GridNet, TotalDropout, gridnet
from segflow.models.refinenet import RefineNet, refinenet
from segflow.models.summary import PUBLISHED, model_summary, published_count

#: How far a count may be from the paper's (the issue's bar): the papers round, count a
#: classifier for their own dataset, and some leave details (biases, BN) unstated.
TOLERANCE = 0.15

SMALL = {
    "deconvnet": (deconvnet, {"width": 8, "fc_channels": 32}),
    "refinenet/resnet18": (
        refinenet,
        {"backbone": "resnet18", "backbone_options": {"width": 8}, "features": 16},
    ),
    "refinenet/resnet50": (
        refinenet,
        {"backbone": "resnet50", "backbone_options": {"width": 8}, "features": 16},
    ),
    "frrn/A": (frrn, {"variant": "A", "width": 8, "residual_channels": 8}),
    "frrn/B": (frrn, {"variant": "B", "width": 8, "residual_channels": 8}),
    "gridnet": (gridnet, {"channels": [8, 8, 16, 16, 24]}),
    "gridnet/3x4": (gridnet, {"channels": [8, 16, 24], "columns": 2}),
}


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "count", [p for p in PUBLISHED if p.model in ("deconvnet", "refinenet", "frrn", "gridnet")],
    ids=lambda p: f"{p.model}{'-' + '-'.join(map(str, p.options.values())) if p.options else ''}",
)  # fmt: skip
def test_parameter_count_is_within_15_percent_of_the_papers(count):
    with torch.device("meta"):  # the paper's size (up to 252 M) without allocating it
        model = build(count.model, count.num_classes, **count.options)
    millions = _params(model) / 1e6
    print(f"{count.model} {count.options}: {millions:.2f} M, paper {count.millions} M")
    assert millions == pytest.approx(count.millions, rel=TOLERANCE), count.source


def test_the_counts_are_the_ones_built_here_to_a_tenth_of_a_million():
    # What the module docstrings state; a change of layout shows up here first.
    expected = {
        ("deconvnet", 21, ()): 251.80,
        ("refinenet", 21, ()): 118.05,
        ("frrn", 19, ("A",)): 17.71,
        ("frrn", 19, ()): 24.72,
        ("gridnet", 19, ()): 9.65,
    }
    with torch.device("meta"):
        for (name, classes, variant), millions in expected.items():
            options = {"variant": variant[0]} if variant else {}
            assert _params(build(name, classes, **options)) / 1e6 == pytest.approx(
                millions, abs=0.01
            ), name


def test_segflow_models_shows_the_published_count_of_the_default_build_only():
    assert model_summary("frrn", size=(64, 64))["paper_params"] == 24.8e6
    assert model_summary("gridnet", size=(64, 64))["paper_params"] == 9.86e6
    assert model_summary("frrn", size=(64, 64), variant="A")["paper_params"] == 17.7e6
    assert model_summary("gridnet", size=(64, 64), columns=2)["paper_params"] is None
    assert published_count("segnet") is None


@pytest.mark.parametrize("key", sorted(SMALL))
def test_logits_are_n_c_h_w_of_the_input_for_odd_sizes_and_every_weight_gets_a_gradient(key):
    fn, options = SMALL[key]
    torch.manual_seed(0)
    model = fn(5, **options).eval()
    with torch.no_grad():
        for h, w in ((33, 47), (67, 93), (64, 80), (97, 131)):
            assert model(torch.randn(1, 3, h, w)).shape == (1, 5, h, w)
    model.train()
    out = model(torch.randn(2, 3, 45, 51))
    assert out.shape == (2, 5, 45, 51)
    out.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing[:5]}"


def test_deconvnet_default_is_table_1_of_the_paper():
    with torch.device("meta"):
        model = deconvnet(21)
        assert model(torch.empty(1, 3, 224, 224)).shape == (1, 21, 224, 224)
    assert isinstance(model, DeconvNet)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules()) == 13
    assert (model.fc6.kernel_size, model.fc6.out_channels) == ((7, 7), 4096)
    assert (model.fc7.kernel_size, model.fc7.out_channels) == ((1, 1), 4096)
    assert model.deconv_fc6[0].kernel_size == (7, 7)
    # deconv5_1 .. deconv1_2, deepest first (Table 1): the mirror of VGG-16's 13 convs.
    decoder = [[layer[0].out_channels for layer in stage] for stage in model.decoder]
    assert decoder == [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64, 64]]
    assert all(
        isinstance(layer[0], torch.nn.ConvTranspose2d)
        and isinstance(layer[1], torch.nn.BatchNorm2d)
        for stage in model.decoder
        for layer in stage
    )
    assert model.classifier.kernel_size == (1, 1)


def test_deconvnet_fc6_at_224_is_the_papers_fully_connected_layer():
    # At the paper's 224 x 224 crops pool5 is 7 x 7 and fc6 a valid 7x7 conv to 1 x 1: the
    # padded fc6 here computes the same value at the centre of its 7 x 7 output.
    model = deconvnet(3, width=4, fc_channels=8).eval()
    pool5 = torch.randn(1, 32, 7, 7)
    with torch.no_grad():
        same = model.fc6(pool5)[:, :, 3, 3]
        valid = F.conv2d(pool5, model.fc6.weight, model.fc6.bias)[:, :, 0, 0]
    torch.testing.assert_close(same, valid)


def test_deconvnet_unpools_into_the_encoders_argmax_positions():
    model = deconvnet(3, width=4, fc_channels=8).eval()
    seen = {}
    model.decoder[-1].register_forward_pre_hook(lambda m, args: seen.update(unpooled=args[0]))
    last_of_block1 = model.backbone.stages[0][-1]  # conv1_2's ReLU: what pool1 pools
    last_of_block1.register_forward_hook(lambda m, i, o: seen.update(conv1=o.clone()))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))
    unpooled, conv1 = seen["unpooled"], seen["conv1"]
    assert unpooled.shape == conv1.shape
    # Where conv1_2's map is not its 2x2 block maximum, the unpooled map is zero.
    block_max = F.max_pool2d(conv1, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.all(unpooled[conv1 < block_max] == 0)
    assert (unpooled != 0).sum() <= unpooled.numel() // 4


def test_deconvnet_loads_a_torchvision_vgg16_bn_file(tmp_path):
    trunk = build_backbone("vgg16_bn", width=4)
    state = dict(trunk.state_dict())
    state |= {
        "classifier.0.weight": torch.randn(8, 32 * 49),
        "classifier.0.bias": torch.randn(8),
        "classifier.3.weight": torch.randn(8, 8),
        "classifier.3.bias": torch.randn(8),
        "classifier.6.weight": torch.randn(1000, 8),
        "classifier.6.bias": torch.randn(1000),
    }
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    model = deconvnet(3, pretrained=path, width=4, fc_channels=8)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(model.fc6.weight.flatten(1), state["classifier.0.weight"])
    assert torch.equal(model.fc7.bias, state["classifier.3.bias"])


def test_refinenet_default_is_the_4_cascaded_refinenet_101():
    with torch.device("meta"):
        model = refinenet(21)
        assert model(torch.empty(1, 3, 97, 131)).shape == (1, 21, 97, 131)
    assert isinstance(model, RefineNet)
    assert model.backbone.backbone_name == "resnet101" and model.backbone.output_stride == 32
    blocks = list(model.blocks)
    assert [b.reduce.in_channels for b in blocks] == [2048, 1024, 512, 256]  # s32 .. s4
    assert [b.reduce.out_channels for b in blocks] == [512, 256, 256, 256]
    assert [b.fuse is not None for b in blocks] == [False, True, True, True]
    assert all(len(b.adapt) == 2 and len(b.out_units) == 3 for b in blocks)
    assert all(len(b.crp.convs) == 4 and b.crp.pool.kernel_size == 5 for b in blocks)
    assert blocks[-1].out_conv is None and blocks[0].out_conv.out_channels == 256


def test_refinenet_chained_residual_pooling_adds_every_link_to_the_sum():
    model = refinenet(3, backbone="resnet18", features=4, crp_stages=2, dropout=0.0)
    crp = model.blocks[0].crp
    x = torch.randn(1, 8, 9, 11)
    with torch.no_grad():
        first = crp.convs[0](crp.pool(x))
        second = crp.convs[1](crp.pool(first))
        torch.testing.assert_close(crp(x), x + first + second)


def test_refinenet_loads_torchvision_resnet_weights_into_its_backbone(tmp_path):
    source = build_backbone("resnet18", width=8)
    path = tmp_path / "resnet18.pth"
    torch.save({**source.state_dict(), "fc.weight": torch.randn(10, 64)}, path)
    model = refinenet(3, backbone="resnet18", pretrained=path, backbone_options={"width": 8})
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


@pytest.mark.parametrize(
    ("variant", "encoder", "decoder"),
    [("A", [3, 4, 2, 2], [2, 2, 2]), ("B", [3, 4, 2, 2, 2], [2, 2, 2, 2])],
)
def test_frrn_layout_is_table_1_of_the_paper(variant, encoder, decoder):
    with torch.device("meta"):
        model = frrn(19, variant=variant)
    assert isinstance(model, FRRN)
    assert [len(units) for units in model.encoder] == encoder
    assert [len(units) for units in model.decoder] == decoder
    enc = [units[0].convs[0][0].out_channels for units in model.encoder]
    dec = [units[0].convs[0][0].out_channels for units in model.decoder]
    assert enc == [96, 192, 384, 384, 384][: len(encoder)]
    assert dec == [192] * (len(decoder) - 1) + [96]
    scales = [u.scale for units in [*model.encoder, *model.decoder] for u in units]
    assert max(scales) == 2 ** len(encoder) and scales[-1] == 2
    assert model.stem[0][0].kernel_size == (5, 5) and model.split.out_channels == 32


def test_frrn_residual_stream_stays_at_full_resolution_and_only_adds():
    model = frrn(4, variant="A", width=8, residual_channels=4).eval()
    shapes = []

    def record(unit, args, out):
        (_, z), (y2, z2) = args, out
        shapes.append((tuple(y2.shape[-2:]), tuple(z2.shape[-2:]), unit.scale))
        # z' - z is the unit's 1x1 projection, unpooled: constant over every scale x scale block.
        delta = z2 - z
        s = unit.scale
        blocks = delta.unflatten(-1, (-1, s)).unflatten(-3, (-1, s))
        assert torch.allclose(blocks, blocks[..., :1, :, :1].expand_as(blocks), atol=1e-6)

    for unit in model.modules():
        if isinstance(unit, FRRU):
            unit.register_forward_hook(record)
    with torch.no_grad():
        model(torch.randn(1, 3, 50, 70))  # padded to 64 x 80
    assert all(z == (64, 80) for _, z, _ in shapes)
    assert all(y == (64 // s, 80 // s) for y, _, s in shapes)


def test_gridnet_default_is_5_rows_by_6_columns_with_the_released_block_counts():
    with torch.device("meta"):
        model = gridnet(19)
    assert isinstance(model, GridNet)
    assert [len(col) for col in model.downs] == [4, 4, 4]  # 3 sub-sampling columns
    assert [len(col) for col in model.ups] == [4, 4, 4]  # 3 up-sampling columns
    laterals = [*model.lateral_down, *model.lateral_up]
    assert len(laterals) == 5 and all(len(col) == 5 for col in laterals)
    widths = [block[2].out_channels for block in model.lateral_up[0]]
    assert widths == [32, 64, 96, 128, 160]
    assert all(isinstance(b[2], torch.nn.Conv2d) for col in model.lateral_down for b in col)
    assert all(isinstance(b[2], torch.nn.ConvTranspose2d) for b in model.lateral_up[1])
    drops = [m for m in model.modules() if isinstance(m, TotalDropout)]
    assert len(drops) == 25 and all(d.p == 0.1 for d in drops)


def test_total_dropout_zeroes_whole_samples_in_training_and_nothing_in_eval():
    torch.manual_seed(0)
    drop = TotalDropout(0.3)
    x = torch.rand(4000, 2, 3, 3) + 1
    out = drop.train()(x)
    dropped = (out == 0).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((dropped | kept).all())  # each sample whole: zero or untouched, never rescaled
    assert dropped.float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.equal(drop.eval()(x), x)


def test_gridnet_with_every_lateral_dropped_is_the_conv_deconv_network_of_its_edges():
    # Total dropout of all lateral blocks leaves the grid's first and last column plus the
    # identity shortcuts: the left edge goes down, the right edge comes up.
    torch.manual_seed(0)
    model = gridnet(3, channels=[4, 8, 8], columns=2, total_dropout=0.999999).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)  # training mode: BN normalises by the batch in both passes
    nodes = [model.first(model.input_bn(x))]
    for d in model.downs[0]:
        nodes.append(d(nodes[-1]))
    for d_col in model.downs[1:]:
        new = [nodes[0]]
        for r, d in enumerate(d_col, start=1):
            new.append(nodes[r] + d(new[-1]))
        nodes = new
    for u_col in model.ups:
        new = [nodes[-1]]
        for r in reversed(range(len(nodes) - 1)):
            new.append(nodes[r] + u_col[r](new[-1]))
        nodes = new[::-1]
    torch.testing.assert_close(out, model.last(nodes[0]))


@pytest.mark.parametrize("fn", [deconvnet, refinenet, frrn, gridnet])
def test_unknown_option_is_an_error_naming_it(fn):
    with pytest.raises(SegflowError, match="unknown option.*dropout_rate"):
        fn(3, dropout_rate=0.3)


@pytest.mark.parametrize(
    ("fn", "kwargs", "message"),
    [
        (deconvnet, {"backbone": "vgg16"}, "needs backbone vgg16_bn"),
        (deconvnet, {"output_stride": 8}, "output_stride 32"),
        (refinenet, {"backbone": "mobilenet_v2"}, "ResNet backbone"),
        (refinenet, {"output_stride": 16}, "output_stride 32"),
        (refinenet, {"dropout": 1.0}, "option dropout"),
        (refinenet, {"crp_stages": 0}, "option crp_stages"),
        (frrn, {"variant": "C"}, "option variant"),
        (frrn, {"backbone": "resnet50"}, "no backbone"),
        (frrn, {"output_stride": 16}, "output_stride must be null or 32"),
        (gridnet, {"channels": [16]}, "option channels"),
        (gridnet, {"columns": 0}, "option columns"),
        (gridnet, {"total_dropout": 1.0}, "option total_dropout"),
        (gridnet, {"pretrained": "x.pth"}, "no backbone or pretrained"),
    ],
)
def test_invalid_settings_are_errors_naming_the_field(fn, kwargs, message):
    with pytest.raises(SegflowError, match=message):
        fn(3, **kwargs)
