"""Auto-DeepLab: the paper's network by default, any searched genotype, S/M/L sizes."""

from __future__ import annotations

import json

import pytest
import torch

from segflow.errors import SegflowError
from segflow.models import build
from segflow.models.genotype import PAPER_GENOTYPE
from segflow.models.summary import model_summary
from segflow.search.decode import decode
from segflow.search.supernet import Supernet

SMALL = {"filter_multiplier": 4, "aspp_channels": 16}


def test_the_default_is_the_papers_cell_on_the_papers_path():
    model = build("autodeeplab", 19, **SMALL)
    assert model.genotype == PAPER_GENOTYPE
    # B x F x s / 4 channels at stride s: 4,4,4,8,16,8,16,16,32,32,16,8 with B = 5, F = 4.
    widths = [cell.out_channels for cell in model.cells]
    assert widths == [5 * 4 * s // 4 for s in PAPER_GENOTYPE.path]
    assert model.low_level_index == 2 and model.output_stride == 8
    assert [c.out_channels for c in (model.stem[0][0], model.stem[1][0], model.stem[2][0])] == [
        64,
        64,
        128,
    ]


def test_it_builds_from_a_decoded_supernet_genotype_and_keeps_odd_sizes(tmp_path):
    net = Supernet(5, layers=5, filter_multiplier=2, blocks=4, seed=3)
    with torch.no_grad():
        net.alpha.normal_(generator=torch.Generator().manual_seed(1))
        net.beta.normal_(generator=torch.Generator().manual_seed(2))
    genotype = decode(net.alpha, net.beta)
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(genotype.to_json()))
    model = build("autodeeplab", 5, genotype=str(path), **SMALL)
    assert model.genotype == genotype and len(model.cells) == 5
    x = torch.randn(2, 3, 61, 83)
    out = model.train()(x)
    assert out.shape == (2, 5, 61, 83)
    out.logsumexp(1).mean().backward()
    with torch.no_grad():
        assert model.eval()(x[:1, :, :37, :45]).shape == (1, 5, 37, 45)
    inline = build("autodeeplab", 5, genotype=genotype.to_json(), **SMALL)
    assert inline.genotype == genotype


@pytest.mark.parametrize(("f", "paper_millions"), [(20, 10.15), (32, 21.62), (48, 44.42)])
def test_s_m_l_have_the_papers_parameter_counts(f, paper_millions):
    # Auto-DeepLab-S/M/L with 19 classes (Cityscapes), Table 4 of the paper.
    row = model_summary("autodeeplab", 19, (64, 128), filter_multiplier=f)
    assert row["params"] / 1e6 == pytest.approx(paper_millions, abs=0.01)


def test_drop_path_grows_with_depth_and_training_steps_and_is_off_in_eval():
    model = build("autodeeplab", 3, drop_path=0.3, drop_path_steps=10, **SMALL).train()
    assert model._drop_prob(11) == 0.0  # step 0: the ramp starts at 0
    for _ in range(5):
        model(torch.randn(2, 3, 32, 32))
    assert int(model.steps) == 5
    assert model._drop_prob(5) < model._drop_prob(11) == pytest.approx(0.15)
    model.steps.fill_(100)
    assert model._drop_prob(11) == pytest.approx(0.3)
    assert model.eval()._drop_prob(11) == 0.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backbone": "resnet18"}, "train.backbone must be null"),
        ({"output_stride": 16}, "train.output_stride must be null"),
        ({"filter_multiplier": 0}, "filter_multiplier must be > 0"),
        ({"cells": 3}, "unknown option(s) cells"),
    ],
)
def test_bad_options_are_errors_naming_them(options, message):
    with pytest.raises(SegflowError) as err:
        build("autodeeplab", 3, **options)
    assert message in str(err.value)
