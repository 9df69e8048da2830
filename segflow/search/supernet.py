"""The Auto-DeepLab supernet: every cell op and every down/up-sampling path at once.

Cell level: each edge (input -> block) is a mixed op, the softmax(alpha)-weighted sum of the
candidate ops of :data:`segflow.models.genotype.OPS` (the zero op contributes nothing and is
not run). One alpha (edges x ops) is shared by every cell of the network.

Network level (eq. 6 of the paper): node (l, k) at stride s = 4 x 2^k is

    H[l, k] = sum over j in {k - 1, k, k + 1} of P[l, j, k] * Cell_ljk(H[l - 2, k], H[l - 1, j])

with ``P = transition_probs(beta)`` (softmax over each node's outgoing edges, see decode.py),
each term a cell with its own weights, at the node's stride with ``F x s / 4`` channels per
block. Where H[l - 2, k] does not exist yet, the stem's stride-4 output stands in (and its
stride-2 output before layer 0). At the last layer a 3-branch ASPP head per stride (1x1, 3x3
at rate 96 / s, image pooling) predicts the classes; the heads' logits are upsampled and summed.

alpha and beta are created once, here, from the seeded generator: never redrawn in forward.

**Where beta's gradient comes from.** Every node's sum goes through a BatchNorm before anything
reads it (the next cells' ReLU-1x1-BN preprocessing, the heads' BN), which undoes the node's
scale. So beta is only learnt from how the inputs of a node with several inputs compete; a node
with one input (both nodes of layer 0, the coarsest node of the first layers) passes no signal
back to the beta that scales it, except through the heads' image-pooling branch (measured on a
fresh L = 3 supernet: layer 0's beta gradients 10-200x smaller than the later layers'). The
decoder, however, starts its Viterbi path from layer 0. ``head_weights="marginal"`` multiplies
each last-layer head's class scores by the chain's probability of ending at its stride
(:func:`segflow.search.decode.level_marginals`), so which output stride serves the task reaches
every layer's beta through the chain; ``"sum"`` adds the heads as the paper does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.models.autodeeplab import Preprocess, level_sizes, make_op
from segflow.models.genotype import OPS, STRIDES, ZERO
from segflow.search.decode import (
    LEVELS,
    level_marginals,
    num_edges,
    reachable,
    transition_probs,
)


class MixedOp(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList(make_op(name, c, affine=False) for name in OPS)

    def forward(self, x: Tensor, weights: Tensor, aux_skip: float = 0.0) -> Tensor:
        # The zero op's output is 0: not computed (its weight still takes part in the softmax).
        out = sum(weights[i] * op(x) for i, op in enumerate(self.ops) if i != ZERO)
        # DARTS-'s auxiliary skip: outside the softmax, so skip need not win alpha to pass
        # the gradient through (Chu et al. 2021).
        return out + aux_skip * x if aux_skip else out


class SearchCell(nn.Module):
    def __init__(self, prev_prev: int, prev: int, c: int, blocks: int) -> None:
        super().__init__()
        self.pre0 = Preprocess(prev_prev, c, affine=False)
        self.pre1 = Preprocess(prev, c, affine=False)
        self.blocks = blocks
        self.edges = nn.ModuleList(MixedOp(c) for _ in range(num_edges(blocks)))

    def forward(
        self,
        s0: Tensor,
        s1: Tensor,
        size: tuple[int, int],
        weights: Tensor,
        aux_skip: float = 0.0,
    ) -> Tensor:
        states = [self.pre0(s0, size), self.pre1(s1, size)]
        e = 0
        for _ in range(self.blocks):
            h = 0
            for state in states:
                h = h + self.edges[e](state, weights[e], aux_skip)
                e += 1
            states.append(h)
        return torch.cat(states[2:], dim=1)


class SearchHead(nn.Module):
    """The search's light ASPP: 1x1, 3x3 at rate 96 / stride, image pooling -> class scores."""

    def __init__(self, inp: int, num_classes: int, stride: int, width: int) -> None:
        super().__init__()
        rate = max(1, 96 // stride)
        self.conv1 = nn.Sequential(nn.Conv2d(inp, width, 1, bias=False), nn.BatchNorm2d(width))
        self.atrous = nn.Sequential(
            nn.Conv2d(inp, width, 3, padding=rate, dilation=rate, bias=False),
            nn.BatchNorm2d(width),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(inp, width, 1))
        self.classifier = nn.Conv2d(3 * width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])
        feats = torch.cat([self.conv1(x), self.atrous(x), pooled], dim=1)
        return self.classifier(F.relu(feats))


class Supernet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        layers: int = 12,
        filter_multiplier: int = 8,
        blocks: int = 5,
        seed: int = 0,
        head_weights: str = "sum",
    ) -> None:
        super().__init__()
        self.layers, self.blocks = layers, blocks
        self.head_weights = head_weights
        f, b = filter_multiplier, blocks
        half = max(1, f * b // 2)
        self.stem = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(half),
                    nn.ReLU(inplace=True),
                ),
                nn.Sequential(
                    nn.Conv2d(half, f * b, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(f * b),
                    nn.ReLU(inplace=True),
                ),
            ]
        )
        self.stem_channels = (half, f * b)
        out = [f * b * 2**k for k in range(LEVELS)]  # a node's channels (B blocks x F x s/4)
        self.cells = nn.ModuleDict()
        for layer in range(layers):
            for j in reachable(layer - 1):
                for k in (j - 1, j, j + 1):
                    if k not in reachable(layer):
                        continue
                    prev = out[j] if layer > 0 else f * b
                    prev_prev = self._prev_prev_channels(layer, k, out)
                    self.cells[_key(layer, j, k)] = SearchCell(prev_prev, prev, f * 2**k, b)
        self.heads = nn.ModuleDict(
            {
                str(k): SearchHead(out[k], num_classes, STRIDES[k], f * b)
                for k in reachable(layers - 1)
            }
        )
        #: DARTS-'s auxiliary skip coefficient on every mixed op (0: off); the search loop
        #: decays it linearly to 0 (:func:`segflow.search.loop.aux_skip_coefficient`).
        self.aux_skip = 0.0
        gen = torch.Generator().manual_seed(seed)
        self.alpha = nn.Parameter(1e-3 * torch.randn(num_edges(blocks), len(OPS), generator=gen))
        self.beta = nn.Parameter(1e-3 * torch.randn(layers, LEVELS, 3, generator=gen))

    def _prev_prev_channels(self, layer: int, k: int, out: list[int]) -> int:
        if layer == 0:
            return self.stem_channels[0]
        if layer >= 2 and k in reachable(layer - 2):
            return out[k]
        return self.stem_channels[1]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.beta]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.alpha, dim=-1)
        probs = transition_probs(self.beta)
        s2 = self.stem[0](x)
        s4 = self.stem[1](s2)
        sizes = level_sizes(s4.shape[-2:], LEVELS)
        two_back: dict[int, Tensor] = {}
        last: dict[int, Tensor] = {0: s4}
        for layer in range(self.layers):
            nodes: dict[int, Tensor] = {}
            for k in reachable(layer):
                s0 = s2 if layer == 0 else two_back.get(k, s4)
                total = 0
                for j in (k - 1, k, k + 1):
                    key = _key(layer, j, k)
                    if key in self.cells:
                        cell = self.cells[key]
                        total = total + probs[layer, j, k] * cell(
                            s0, last[j], sizes[k], weights, self.aux_skip
                        )
                nodes[k] = total
            two_back, last = last, nodes
        # "marginal": each head counts with the chain's probability of ending at its stride.
        ends = level_marginals(probs)[-1] if self.head_weights == "marginal" else None
        logits = 0
        for k, h in last.items():
            scores = self.heads[str(k)](h) * (ends[k] if ends is not None else 1.0)
            logits = logits + F.interpolate(
                scores, size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        return logits


def _key(layer: int, source: int, target: int) -> str:
    return f"{layer}_{source}_{target}"
