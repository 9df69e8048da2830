"""Decoding the continuous architecture: Viterbi over beta, strongest branches of alpha."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from segflow.models.genotype import OPS, ZERO, parse_genotype
from segflow.search.decode import (
    decode,
    decode_cell,
    num_edges,
    path_log_prob,
    transition_mask,
    transition_probs,
    viterbi,
)
from segflow.search.supernet import Supernet


def _all_paths(layers: int) -> list[list[int]]:
    """Every level sequence a network can take: from the stem at level 0, one move per layer."""
    paths = []
    for levels in itertools.product(range(4), repeat=layers):
        prev, ok = 0, True
        for k in levels:
            ok &= abs(k - prev) <= 1
            prev = k
        if ok:
            paths.append(list(levels))
    return paths


@pytest.mark.parametrize("layers", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_viterbi_finds_the_most_probable_of_all_valid_paths(layers, seed):
    beta = (
        torch.randn(
            layers, 4, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        * 2
    )
    probs = transition_probs(beta).numpy()
    best = max(_all_paths(layers), key=lambda path: path_log_prob(probs, path))
    found = viterbi(probs)
    assert path_log_prob(probs, found) == pytest.approx(path_log_prob(probs, best), abs=1e-12)
    assert found == best


def test_a_beta_that_favours_a_planted_path_decodes_to_it():
    planted = [0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3]  # touches both boundaries, stride 4 and 32
    beta = torch.zeros(len(planted), 4, 3)
    prev = 0
    for layer, k in enumerate(planted):
        beta[layer, prev, k - prev + 1] = 5.0  # the out-edge of the node the path is at
        prev = k
    genotype = decode(torch.zeros(num_edges(5), len(OPS)), beta)
    assert genotype.path == tuple(4 * 2**k for k in planted)


def test_the_beta_chain_never_leaves_the_trellis():
    # Uniform beta: at stride 4 the mass of "finer" and at 32 that of "coarser" is not lost
    # off the grid, it is shared by the edges that exist; the first layer is at 4 or 8.
    probs = transition_probs(torch.zeros(4, 4, 3, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(probs[0, 0], [0.5, 0.5, 0, 0])
    assert probs[0, 1:].sum() == 0  # the stem is at stride 4 only
    np.testing.assert_allclose(probs[3, 0], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(probs[3, 3], [0, 0, 0.5, 0.5])
    np.testing.assert_allclose(probs[3, 1], [1 / 3, 1 / 3, 1 / 3, 0])
    for layer in range(4):
        for j in range(4):
            reachable = j <= layer  # from the stem, one level per layer
            assert probs[layer, j].sum() == pytest.approx(1.0 if reachable else 0.0)
    assert transition_mask(2).sum() == 2 * 1 + 3 + 2  # layer 0: 2 edges; layer 1: 5


def test_each_block_keeps_its_two_strongest_distinct_inputs_and_never_the_zero_op():
    rng = np.random.default_rng(0)
    for _ in range(20):
        alpha = rng.normal(size=(num_edges(5), len(OPS)))
        alpha[:, ZERO] += 10  # zero dominates every edge; it must still never be chosen
        cell = decode_cell(alpha, 5)
        for b, block in enumerate(cell):
            inputs = [i for _, i in block]
            assert len(set(inputs)) == 2 and all(0 <= i <= b + 1 for i in inputs)
            assert all(op != "zero" for op, _ in block)
        parse_genotype({"cell": [[list(x) for x in blk] for blk in cell], "path": [4]})


def test_cell_decoding_ranks_inputs_by_their_strongest_non_zero_op():
    alpha = np.zeros((num_edges(2), len(OPS)))
    # Block 0 (edges 0, 1): input 1 has a strong atrous 5x5; input 0 a weaker max pool.
    alpha[1, OPS.index("atrous_5x5")] = 4.0
    alpha[0, OPS.index("max_pool_3x3")] = 2.0
    # Block 1 (edges 2..4): input 2 (block 0) via skip, input 0 via sep 5x5; input 1 weak.
    alpha[4, OPS.index("skip")] = 3.0
    alpha[2, OPS.index("sep_conv_5x5")] = 2.5
    alpha[3, OPS.index("avg_pool_3x3")] = 1.0
    assert decode_cell(alpha, 2) == (
        (("atrous_5x5", 1), ("max_pool_3x3", 0)),
        (("skip", 2), ("sep_conv_5x5", 0)),
    )


def test_alpha_and_beta_are_drawn_once_from_the_seed_not_on_every_forward():
    net = Supernet(3, layers=2, filter_multiplier=1, blocks=2, seed=7).eval()
    again = Supernet(3, layers=2, filter_multiplier=1, blocks=2, seed=7)
    assert torch.equal(net.alpha, again.alpha) and torch.equal(net.beta, again.beta)
    before = (net.alpha.detach().clone(), net.beta.detach().clone())
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        first, second = net(x), net(x)
    assert torch.equal(first, second)
    assert torch.equal(net.alpha, before[0]) and torch.equal(net.beta, before[1])
    assert first.shape == (1, 3, 33, 47)


def test_the_supernet_weighs_each_edge_by_its_transition_probability():
    # Planting a path in beta makes the off-path edges' probabilities vanish; their cells then
    # receive (almost) no gradient, while the planted path's cells do.
    net = Supernet(2, layers=2, filter_multiplier=1, blocks=1, seed=0)
    with torch.no_grad():
        net.beta.zero_()
        net.beta[0, 0, 2] = 30.0  # stem (4) -> 8
        net.beta[1, 1, 1] = 30.0  # 8 -> 8
    net(torch.randn(2, 3, 32, 32)).square().mean().backward()

    def grad(key: str) -> float:
        return sum(
            p.grad.abs().sum().item() for p in net.cells[key].parameters() if p.grad is not None
        )

    assert grad("0_0_1") > 1e3 * max(grad("0_0_0"), 1e-30)
    assert grad("1_1_1") > 1e3 * max(grad("1_1_0"), grad("1_1_2"), 1e-30)
