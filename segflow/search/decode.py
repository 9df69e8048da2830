"""From the continuous architecture (alpha, beta) to a discrete genotype.

**Network level.** The search space is a trellis: layer l has a node at each level k (stride
4 x 2^k, k = 0..3) that the stem can reach in l + 1 moves, since each layer moves at most one
level; the stem itself is level 0 "before layer 0". ``beta[l, j, d]`` scores the edge from
node (l - 1, j) to node (l, j + d - 1), i.e. d = 0 goes one level finer, 1 stays, 2 goes one
level coarser. As in the paper, beta is normalised over each node's *outgoing* edges, so
:func:`transition_probs` is a Markov chain over levels, ``P[l, j, k]`` = probability of moving
from level j at layer l - 1 to level k at layer l, and the path of maximum probability is the
Viterbi path of that chain. Edges off the trellis (finer than stride 4, coarser than 32, from a
node the stem cannot reach yet) get probability 0 and are never decoded. Both the supernet's
forward pass and the decoder read beta only through :func:`transition_probs`, so the weight a
node's input gets in search is the one the decoder ranks.

**Cell level.** Every edge (input -> block) of the cell is a mixed op with a softmax over the
8 candidates. Per block the two inputs whose strongest *non-zero* op is strongest are kept, each
with that op: the zero op means "no edge" and never becomes a branch (as in DARTS).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from segflow.models.genotype import OPS, STRIDES, ZERO, Genotype

LEVELS = len(STRIDES)


def num_edges(blocks: int) -> int:
    """Cell edges: block i reads the two previous cells and the i blocks before it."""
    return sum(2 + i for i in range(blocks))


def edge_offsets(blocks: int) -> list[int]:
    """Index of the first edge of each block in alpha's rows."""
    return [sum(2 + j for j in range(i)) for i in range(blocks)]


def reachable(layer: int) -> range:
    """Levels with a node at ``layer`` (layer -1 is the stem, at level 0)."""
    return range(min(layer + 1, LEVELS - 1) + 1)


def transition_mask(layers: int) -> Tensor:
    """``mask[l, j, d]``: the edge from (l - 1, j) in direction d exists in the trellis."""
    mask = torch.zeros(layers, LEVELS, 3, dtype=torch.bool)
    for layer in range(layers):
        for j in reachable(layer - 1):
            for d in range(3):
                if 0 <= j + d - 1 < LEVELS:
                    mask[layer, j, d] = True
    return mask


def transition_probs(beta: Tensor) -> Tensor:
    """``P[l, j, k]`` (layers x 4 x 4): softmax of beta over each node's existing out-edges."""
    layers = beta.shape[0]
    mask = transition_mask(layers).to(beta.device)
    out = torch.softmax(beta.masked_fill(~mask, float("-inf")), dim=-1)
    out = torch.nan_to_num(out, nan=0.0)  # nodes without out-edges: all -inf rows
    probs = beta.new_zeros(layers, LEVELS, LEVELS)
    for d in range(3):
        for j in range(LEVELS):
            k = j + d - 1
            if 0 <= k < LEVELS:
                probs[:, j, k] = out[:, j, d]
    return probs


def level_marginals(probs: Tensor) -> Tensor:
    """(layers x 4): the probability of being at each level after each layer, starting from
    the stem at level 0 (differentiable: the supernet weighs its heads with the last row)."""
    p = torch.zeros(LEVELS, dtype=probs.dtype, device=probs.device)
    p[0] = 1.0
    out = []
    for layer_probs in probs:
        p = p @ layer_probs
        out.append(p)
    return torch.stack(out)


def viterbi(probs: np.ndarray) -> list[int]:
    """Levels of the maximum-probability path from the stem (level 0) through every layer."""
    probs = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logp = np.log(probs)
    layers = probs.shape[0]
    score = logp[0, 0].copy()  # from the stem, level 0
    back = np.zeros((layers, LEVELS), dtype=np.int64)
    for layer in range(1, layers):
        cand = score[:, None] + logp[layer]  # [from j, to k]
        back[layer] = cand.argmax(0)
        score = cand.max(0)
    path = [int(score.argmax())]
    for layer in range(layers - 1, 0, -1):
        path.append(int(back[layer, path[-1]]))
    return path[::-1]


def path_log_prob(probs: np.ndarray, levels: list[int]) -> float:
    """log P(path) under the chain (-inf for a path off the trellis)."""
    prev, total = 0, 0.0
    with np.errstate(divide="ignore"):
        for layer, k in enumerate(levels):
            total += float(np.log(probs[layer, prev, k]))
            prev = k
    return total


def decode_cell(alpha: np.ndarray, blocks: int) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Per block, the two strongest inputs with their strongest non-zero op."""
    weights = np.asarray(alpha, dtype=np.float64)
    weights = np.exp(weights - weights.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    nonzero = np.delete(np.arange(len(OPS)), ZERO)
    cell = []
    for b, start in enumerate(edge_offsets(blocks)):
        rows = weights[start : start + 2 + b][:, nonzero]
        best_op = nonzero[rows.argmax(1)]
        strength = rows.max(1)
        # Stable sort: ties go to the lower input index, so decoding is deterministic.
        keep = np.argsort(-strength, kind="stable")[:2]
        cell.append(tuple((OPS[int(best_op[i])], int(i)) for i in keep))
    return tuple(cell)


def decode(alpha: Tensor | np.ndarray, beta: Tensor | np.ndarray) -> Genotype:
    """The genotype of a supernet's (alpha, beta)."""
    alpha_np = alpha.detach().cpu().numpy() if isinstance(alpha, Tensor) else np.asarray(alpha)
    beta_t = beta.detach().cpu() if isinstance(beta, Tensor) else torch.as_tensor(beta)
    blocks = blocks_of_edges(alpha_np.shape[0])
    levels = viterbi(transition_probs(beta_t.double()).numpy())
    return Genotype(decode_cell(alpha_np, blocks), tuple(STRIDES[k] for k in levels))


def blocks_of_edges(edges: int) -> int:
    blocks = 0
    while num_edges(blocks) < edges:
        blocks += 1
    if num_edges(blocks) != edges:
        raise ValueError(f"{edges} alpha rows is no whole number of blocks")
    return blocks
