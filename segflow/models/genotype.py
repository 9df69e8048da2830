"""An Auto-DeepLab architecture as data: the cell (blocks of two branches) and the network path.

A genotype file is JSON, written by the search stage (reports/search/genotype.json) and read
by the ``autodeeplab`` model::

    {"cell": [[["atrous_5x5", 1], ["sep_conv_3x3", 0]], ...],   # one entry per block
     "path": [4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8]}         # output stride of each layer

A branch is ``[op, input]``. Inputs are numbered as in the cell's list of hidden states: 0 is
the output of the cell two layers back, 1 the previous cell, ``2 + j`` the output of block j
of this cell, so block i may read inputs 0 .. i + 1. The zero op is part of the search space
(it lets the search say "no edge") but never of a genotype: a kept branch that computes
nothing is a decoding bug. A path starts at stride 4 or 8 (the stem is at 4) and moves at
most one level (x2 or /2) per layer, between 4 and 32.

The default, :data:`PAPER_GENOTYPE`, is the architecture Auto-DeepLab found on Cityscapes
(Liu et al., CVPR 2019, Fig. 3), as released in the authors' TensorFlow DeepLab code
(``nas_network.py``: operations and hidden-state indices of its cell, backbone [0, 0, 0, 1, 2,
1, 2, 2, 3, 3, 2, 1] in levels of stride 4 x 2^level). That code lists a cell's hidden states
as [previous cell, cell two back, blocks...], so its indices 0 and 1 are swapped here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from segflow.errors import SegflowError

#: The 8 candidate operations of the cell, in the order of the search's alpha columns.
OPS = (
    "sep_conv_3x3",
    "sep_conv_5x5",
    "atrous_3x3",
    "atrous_5x5",
    "avg_pool_3x3",
    "max_pool_3x3",
    "skip",
    "zero",
)
ZERO = OPS.index("zero")
STRIDES = (4, 8, 16, 32)

Branch = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    """A decoded architecture: ``cell[block] = ((op, input), (op, input))``, ``path`` strides."""

    cell: tuple[tuple[Branch, Branch], ...]
    path: tuple[int, ...]

    def to_json(self) -> dict:
        return {
            "cell": [[[op, i] for op, i in block] for block in self.cell],
            "path": list(self.path),
        }


PAPER_GENOTYPE = Genotype(
    cell=(
        (("atrous_5x5", 0), ("sep_conv_3x3", 1)),
        (("sep_conv_3x3", 0), ("atrous_3x3", 1)),
        (("sep_conv_3x3", 3), ("sep_conv_3x3", 0)),
        (("sep_conv_5x5", 4), ("sep_conv_5x5", 2)),
        (("sep_conv_5x5", 3), ("atrous_5x5", 5)),
    ),
    path=(4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8),
)


def parse_genotype(data: object, source: str = "genotype") -> Genotype:
    """Validate a genotype mapping; each error names ``source`` and the field (``cell[2][0]``)."""
    if not isinstance(data, dict):
        raise SegflowError(f"{source}: must be a JSON object with 'cell' and 'path'")
    unknown = sorted(set(data) - {"cell", "path"})
    if unknown:
        raise SegflowError(f"{source}: unknown field(s) {', '.join(unknown)}")
    return Genotype(_parse_cell(data.get("cell"), source), _parse_path(data.get("path"), source))


def _parse_cell(cell: object, source: str) -> tuple[tuple[Branch, Branch], ...]:
    if not isinstance(cell, list) or not cell:
        raise SegflowError(f"{source}: cell: must be a non-empty list of blocks")
    blocks = []
    for b, block in enumerate(cell):
        if not isinstance(block, list) or len(block) != 2:
            raise SegflowError(f"{source}: cell[{b}]: a block is a list of two [op, input]")
        branches = []
        for k, branch in enumerate(block):
            field = f"{source}: cell[{b}][{k}]"
            if not isinstance(branch, list) or len(branch) != 2:
                raise SegflowError(f"{field}: a branch is [op, input]")
            op, inp = branch
            if op == "zero":
                raise SegflowError(f"{field}: the zero op (no edge) cannot be a kept branch")
            if op not in OPS:
                raise SegflowError(
                    f"{field}: unknown op {op!r}; known: {', '.join(OPS[:ZERO] + OPS[ZERO + 1 :])}"
                )
            if isinstance(inp, bool) or not isinstance(inp, int) or not 0 <= inp <= b + 1:
                raise SegflowError(
                    f"{field}: input {inp!r} must be an integer in 0..{b + 1} "
                    "(0, 1: the two previous cells; 2 + j: block j of this cell)"
                )
            branches.append((op, inp))
        blocks.append(tuple(branches))
    return tuple(blocks)


def _parse_path(path: object, source: str) -> tuple[int, ...]:
    if not isinstance(path, list) or not path:
        raise SegflowError(f"{source}: path: must be a non-empty list of strides")
    for i, s in enumerate(path):
        if s not in STRIDES or isinstance(s, bool):
            raise SegflowError(f"{source}: path[{i}]: stride {s!r} is not one of {STRIDES}")
    if path[0] not in (4, 8):
        raise SegflowError(f"{source}: path[0]: the first layer must be at stride 4 or 8")
    for i in range(1, len(path)):
        if path[i] not in (path[i - 1] // 2, path[i - 1], path[i - 1] * 2):
            raise SegflowError(
                f"{source}: path[{i}]: impossible stride jump {path[i - 1]} -> {path[i]} "
                "(a layer moves at most one level, x2 or /2)"
            )
    return tuple(path)


def load_genotype(path: str | Path) -> Genotype:
    """Read and validate a genotype JSON file; every error names the file."""
    path = Path(path)
    if not path.is_file():
        raise SegflowError(f"{path}: genotype file not found; run the search stage")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SegflowError(f"{path}: not valid JSON ({exc})") from None
    return parse_genotype(data, str(path))
