"""The random baseline: only valid paths and cells, sized within the tolerance of a target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from segflow.errors import SegflowError
from segflow.models.autodeeplab import AutoDeepLab
from segflow.models.genotype import PAPER_GENOTYPE, Genotype, parse_genotype
from segflow.search.random_arch import (
    conv_flops,
    genotype_size,
    random_cell,
    random_genotype,
    random_path,
    sample_matched,
)
from tests.search.test_decode import _all_paths

OPTIONS = {"filter_multiplier": 2, "aspp_channels": 8, "low_level_channels": 4}


@pytest.mark.parametrize("layers", [1, 3, 6, 12])
def test_random_paths_follow_the_trellis_and_reach_every_valid_path(layers):
    rng = np.random.default_rng(0)
    paths = {random_path(rng, layers) for _ in range(3000)}
    for path in paths:  # the genotype's rules: start at 4 or 8, one level per layer, 4..32
        parse_genotype({"cell": [[["skip", 0], ["skip", 1]]], "path": list(path)})
    if layers <= 3:  # few enough to see them all
        assert paths == {tuple(4 * 2**k for k in p) for p in _all_paths(layers)}


@pytest.mark.parametrize("blocks", [1, 2, 5])
def test_random_cells_read_distinct_existing_inputs_with_non_zero_ops(blocks):
    rng = np.random.default_rng(1)
    ops_seen = set()
    for _ in range(300):
        cell = random_cell(rng, blocks)
        parse_genotype({"cell": [[list(b) for b in block] for block in cell], "path": [4]})
        for b, block in enumerate(cell):
            assert len({i for _, i in block}) == 2
            assert {i for _, i in block} <= set(range(b + 2))
        ops_seen |= {op for block in cell for op, _ in block}
    assert "zero" not in ops_seen and len(ops_seen) == 7  # every other op is drawn


def test_the_flop_count_matches_torch_flop_counter():
    genotype = Genotype(PAPER_GENOTYPE.cell[:2], (4, 8, 16))
    with torch.device("meta"):
        model = AutoDeepLab(genotype, 5, **OPTIONS).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, 32, 48, device="meta"))
    assert conv_flops(model, (32, 48)) == counter.get_total_flops()


def test_matched_samples_are_distinct_valid_and_within_ten_percent_of_the_target():
    target = Genotype(PAPER_GENOTYPE.cell[:2], (4, 8, 8, 16))
    goal = genotype_size(target, 5, (64, 64), **OPTIONS)
    found = sample_matched(
        target, 3, num_classes=5, size=(64, 64), model_options=OPTIONS, tolerance=0.1, seed=3
    )
    assert len({s.genotype for s in found}) == 3 and target not in {s.genotype for s in found}
    for s in found:
        assert s == genotype_size(s.genotype, 5, (64, 64), **OPTIONS)
        assert abs(s.params - goal.params) <= 0.1 * goal.params
        assert abs(s.gflops - goal.gflops) <= 0.1 * goal.gflops
        assert len(s.genotype.path) == 4 and len(s.genotype.cell) == 2
        parse_genotype(s.genotype.to_json())
    again = sample_matched(
        target, 3, num_classes=5, size=(64, 64), model_options=OPTIONS, tolerance=0.1, seed=3
    )
    assert again == found  # the seed decides the draws


def test_an_unreachable_tolerance_ends_in_one_line_after_the_draws_allowed():
    target = Genotype(PAPER_GENOTYPE.cell[:2], (4, 8, 16))
    with pytest.raises(SegflowError, match=r"only \d of 3 within 0% .* after 5 draws") as err:
        sample_matched(
            target, 3, num_classes=5, size=(64, 64), model_options=OPTIONS,
            tolerance=0.0, max_draws=5,
        )  # fmt: skip
    assert "\n" not in str(err.value)


def test_a_random_genotype_builds_and_runs():
    genotype = random_genotype(np.random.default_rng(2), 4, 2)
    model = AutoDeepLab(genotype, 3, **OPTIONS).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
