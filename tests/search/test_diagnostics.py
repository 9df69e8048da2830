"""The search's diagnostics: entropy of alpha and beta, path stability, the param-free share."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segflow.models.genotype import OPS, Genotype
from segflow.search.decode import num_edges
from segflow.search.diagnostics import (
    alpha_entropy,
    beta_entropy,
    epoch_diagnostics,
    param_free_share,
)
from segflow.search.loop import aux_skip_coefficient
from segflow.search.supernet import MixedOp


def test_entropy_is_one_at_the_uniform_start_and_zero_once_decided():
    alpha = np.zeros((num_edges(2), len(OPS)))
    np.testing.assert_allclose(alpha_entropy(alpha), 1.0)
    alpha[:, 3] = 50.0
    np.testing.assert_allclose(alpha_entropy(alpha), 0.0, atol=1e-12)
    beta = np.zeros((3, 4, 3))
    # Nodes with 2+ out-edges: layer 0: the stem (2 edges); layer 1: levels 0, 1; layer 2: 0-2.
    assert len(beta_entropy(beta)) == 1 + 2 + 3
    np.testing.assert_allclose(beta_entropy(beta), 1.0)
    beta[:, :, 2] = 50.0  # always coarser: every one of these nodes (levels 0-2) can go coarser
    np.testing.assert_allclose(beta_entropy(beta), 0.0, atol=1e-12)


def test_a_half_decided_edge_sits_between():
    alpha = np.zeros((1, len(OPS)))
    alpha[0, 0] = math.log(7.0)  # op 0 has probability 1/2, the others 1/14 each
    p = np.array([0.5] + [1 / 14] * 7)
    assert alpha_entropy(alpha)[0] == pytest.approx(-(p * np.log(p)).sum() / math.log(8))


def test_the_param_free_share_counts_pooling_and_skip_branches():
    cell = (
        (("skip", 0), ("sep_conv_3x3", 1)),
        (("max_pool_3x3", 0), ("avg_pool_3x3", 2)),
    )
    assert param_free_share(Genotype(cell, (4, 8))) == 0.75


def test_path_stability_counts_epochs_since_the_last_change():
    alpha, beta = np.zeros((2, len(OPS))), np.zeros((2, 4, 3))
    cell = ((("skip", 0), ("sep_conv_3x3", 1)),)
    first = epoch_diagnostics(alpha, beta, Genotype(cell, (4, 8)), None)
    assert first["path_changed"] == 0.0 and first["path_stable_epochs"] == 1
    records = [{**first, "path": [4, 8]}]
    for path in ([4, 8], [4, 8], [4, 4], [4, 4]):
        previous = {"record": records[-1], "alpha": alpha, "beta": beta + 0.5}
        r = epoch_diagnostics(alpha, beta, Genotype(cell, tuple(path)), previous)
        records.append({**r, "path": path})
    assert [r["path_stable_epochs"] for r in records] == [1, 2, 3, 1, 2]
    assert [r["path_changed"] for r in records] == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert records[-1]["beta_move"] == 0.5 and records[-1]["alpha_move"] == 0.0


def test_the_auxiliary_skip_decays_linearly_to_zero_and_adds_the_input():
    assert [aux_skip_coefficient(1.0, s, 4) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert aux_skip_coefficient(0.0, 0, 4) == 0.0
    op = MixedOp(2).eval()
    x, weights = torch.randn(1, 2, 5, 5), torch.softmax(torch.zeros(len(OPS)), 0)
    with torch.no_grad():
        assert torch.allclose(op(x, weights, 0.5), op(x, weights) + 0.5 * x)
