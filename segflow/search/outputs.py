"""The search stage's reports: the genotype, alpha and beta per epoch (CSV + heat maps).

``reports/search/genotype.json`` is what train reads. ``reports/search/history/`` holds:

* ``search_curve.csv``: per epoch both losses, LR, time, the decoded path and the diagnostics
  of :mod:`segflow.search.diagnostics` (entropies, moves, path stability, param-free share);
* ``entropy.csv``: per epoch the normalised entropy of each cell edge's alpha and of each
  trellis node's beta;
* ``op_weights.csv``: per epoch the mean softmax(alpha) of each op over the cell's edges
  (a DVC plot: how the op mix moves once the architecture steps start);
* ``stride_share.csv``: per epoch the probability of each stride under the beta chain,
  averaged over the layers (a DVC plot: the network drifting finer or coarser);
* ``expected_stride.csv``: per epoch and layer the stride expected under the beta chain;
* ``alpha.csv`` / ``beta.csv``: every alpha weight and beta transition probability per epoch;
* ``alpha_epoch_NNN.png`` / ``beta_epoch_NNN.png``: heat maps of the same.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from segflow.io import atomic_dir, write_json
from segflow.models.genotype import OPS, PAPER_GENOTYPE, STRIDES, Genotype
from segflow.search.decode import (
    LEVELS,
    blocks_of_edges,
    decode,
    level_marginals,
    transition_probs,
)

CURVE_COLUMNS = (
    "epoch",
    "weight_loss",
    "arch_loss",
    "lr",
    "arch_updates",
    "epoch_seconds",
    "path",
    # segflow/search/diagnostics.py: is the search deciding anything?
    "alpha_entropy",
    "beta_entropy",
    "alpha_move",
    "beta_move",
    "path_changed",
    "path_stable_epochs",
    "param_free_share",
    "aux_skip",
)


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def stride_marginals(beta: list | np.ndarray) -> np.ndarray:
    """(layers x 4): probability of each stride at each layer under the beta chain."""
    probs = transition_probs(torch.as_tensor(np.asarray(beta), dtype=torch.float64))
    return level_marginals(probs).numpy()


def final_genotype(arch_history: list[dict]) -> Genotype:
    last = arch_history[-1]
    return decode(np.asarray(last["alpha"]), torch.tensor(last["beta"]))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _edge_names(blocks: int) -> list[str]:
    return [f"block{b}<-{_input_name(i)}" for b in range(blocks) for i in range(2 + b)]


def _input_name(i: int) -> str:
    return ("cell-2", "cell-1")[i] if i < 2 else f"block{i - 2}"


TRANSITIONS = [(j, k) for j in range(LEVELS) for k in (j - 1, j, j + 1) if 0 <= k < LEVELS]


def write_history(history: list[dict], arch_history: list[dict], out_dir: Path) -> None:
    """All files of ``history/`` into ``out_dir`` (an existing, empty directory)."""
    _write_csv(
        out_dir / "search_curve.csv",
        list(CURVE_COLUMNS),
        [
            [r[c] if c != "path" else "-".join(map(str, r[c])) for c in CURVE_COLUMNS]
            for r in history
        ],
    )
    entropy_rows = [
        [r["epoch"], kind, i, value]
        for r in history
        for kind, key in (
            ("alpha_edge", "alpha_entropy_per_edge"),
            ("beta_node", "beta_entropy_per_node"),
        )
        for i, value in enumerate(r[key])
    ]
    _write_csv(out_dir / "entropy.csv", ["epoch", "kind", "index", "entropy"], entropy_rows)
    op_rows, share_rows, stride_rows, alpha_rows, beta_rows = [], [], [], [], []
    layers = len(arch_history[0]["beta"]) if arch_history else 0
    for epoch, arch in enumerate(arch_history, start=1):
        weights = _softmax(np.asarray(arch["alpha"]))
        op_rows.append([epoch, *np.round(weights.mean(0), 6)])
        marginals = stride_marginals(arch["beta"])
        share_rows.append([epoch, *np.round(marginals.mean(0), 6)])
        expected = marginals @ np.array(STRIDES)
        stride_rows += [[epoch, layer + 1, round(float(e), 4)] for layer, e in enumerate(expected)]
        names = _edge_names(blocks_of_edges(weights.shape[0]))
        alpha_rows += [
            [epoch, names[e], op, round(float(weights[e, o]), 6)]
            for e in range(weights.shape[0])
            for o, op in enumerate(OPS)
        ]
        probs = transition_probs(torch.tensor(arch["beta"], dtype=torch.float64)).numpy()
        beta_rows += [
            [epoch, layer + 1, STRIDES[j], STRIDES[k], round(float(probs[layer, j, k]), 6)]
            for layer in range(layers)
            for j, k in TRANSITIONS
        ]
        _heatmaps(weights, probs, names, epoch, out_dir)
    _write_csv(out_dir / "op_weights.csv", ["epoch", *OPS], op_rows)
    _write_csv(
        out_dir / "stride_share.csv", ["epoch", *(f"stride_{s}" for s in STRIDES)], share_rows
    )
    _write_csv(out_dir / "expected_stride.csv", ["epoch", "layer", "expected_stride"], stride_rows)
    _write_csv(out_dir / "alpha.csv", ["epoch", "edge", "op", "weight"], alpha_rows)
    header = ["epoch", "layer", "from_stride", "to_stride", "probability"]
    _write_csv(out_dir / "beta.csv", header, beta_rows)


def _heatmaps(
    weights: np.ndarray, probs: np.ndarray, edge_names: list[str], epoch: int, out_dir: Path
) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 0.28 * len(edge_names) + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(weights, cmap="viridis", vmin=0, vmax=max(float(weights.max()), 1e-6))
    ax.set_xticks(range(len(OPS)), OPS, rotation=45, ha="right")
    ax.set_yticks(range(len(edge_names)), edge_names, fontsize=7)
    ax.set_title(f"softmax(alpha), epoch {epoch}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out_dir / f"alpha_epoch_{epoch:03d}.png")

    table = np.array([[probs[layer, j, k] for j, k in TRANSITIONS] for layer in range(len(probs))])
    fig = Figure(figsize=(8, 0.35 * len(probs) + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(table, cmap="viridis", vmin=0, vmax=1)
    labels = [f"{STRIDES[j]}->{STRIDES[k]}" for j, k in TRANSITIONS]
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(probs)), [f"layer {i + 1}" for i in range(len(probs))])
    ax.set_title(f"beta transition probabilities, epoch {epoch}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out_dir / f"beta_epoch_{epoch:03d}.png")


def write_outputs(
    genotype: Genotype,
    history: list[dict],
    arch_history: list[dict],
    genotype_path: Path,
    history_dir: Path,
) -> None:
    """The stage's two outs, each written atomically."""
    with atomic_dir(history_dir) as tmp:
        write_history(history, arch_history, tmp)
    write_json(genotype_path, genotype.to_json())


def disabled_outputs(genotype_path: Path, history_dir: Path) -> None:
    """Search off: the paper's genotype, and header-only CSVs of the three that dvc.yaml plots.

    train depends on the genotype; the CSVs exist so that ``dvc plots show`` finds every
    declared plot (an empty one) instead of reporting "failed to load some plots" on the
    default pipeline, where the search is off.
    """
    with atomic_dir(history_dir) as tmp:
        _write_csv(tmp / "search_curve.csv", list(CURVE_COLUMNS), [])
        _write_csv(tmp / "op_weights.csv", ["epoch", *OPS], [])
        _write_csv(tmp / "stride_share.csv", ["epoch", *(f"stride_{s}" for s in STRIDES)], [])
    write_json(genotype_path, PAPER_GENOTYPE.to_json())
