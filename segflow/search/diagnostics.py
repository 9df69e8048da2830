"""Is the search learning? Per-epoch measures of how decided alpha and beta are.

A search whose alpha and beta stay at their uniform start decodes to an architecture picked by
the 1e-3 noise of the initialisation (and by ties), not by the data. These numbers tell the two
apart, epoch by epoch:

* ``alpha_entropy``: per cell edge, the entropy of softmax(alpha) over the 8 ops, divided by
  log 8 (1.0: uniform, 0.0: one op); the record holds the mean and the list per edge;
* ``beta_entropy``: per trellis node with more than one out-edge, the entropy of its
  transition probabilities divided by the log of its number of out-edges (same scale);
* ``alpha_move`` / ``beta_move``: the largest change of any alpha or beta entry over the epoch
  (Adam moves each entry by at most about ``arch_lr`` per step, see loop.py);
* ``path_changed``: whether the decoded path differs from the previous epoch's, and
  ``path_stable_epochs``: for how many epochs in a row it has been the same (a search whose
  path stops changing before the end has settled);
* ``param_free_share``: the share of the decoded cell's branches that have no weights
  (pooling, skip). DARTS-like searches collapse towards them (Chu et al. 2021, DARTS-): a share
  near 1 is a cell that does nothing learnable.

The trainB loss of each epoch is the record's ``arch_loss`` (loop.py).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from segflow.models.genotype import Genotype
from segflow.search.decode import transition_mask, transition_probs

#: Ops without weights: a cell made of them only mixes and pools its inputs.
PARAM_FREE_OPS = frozenset({"avg_pool_3x3", "max_pool_3x3", "skip"})


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row of probabilities; 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(-1)


def alpha_entropy(alpha: np.ndarray | list) -> np.ndarray:
    """Per edge, the entropy of softmax(alpha) over the ops / log(number of ops), in [0, 1]."""
    a = np.asarray(alpha, dtype=np.float64)
    p = np.exp(a - a.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return _entropy(p) / math.log(a.shape[-1])


def beta_entropy(beta: np.ndarray | list) -> np.ndarray:
    """Per node (layer, level) with at least two out-edges, the entropy of its transition
    probabilities / log(its out-edges), in [0, 1]; nodes in layer-major order."""
    b = torch.as_tensor(np.asarray(beta), dtype=torch.float64)
    probs = transition_probs(b).numpy()  # [layer, from, to]
    edges = transition_mask(b.shape[0]).sum(-1).numpy()  # out-edges per (layer, from)
    keep = edges >= 2
    return _entropy(probs)[keep] / np.log(edges[keep])


def param_free_share(genotype: Genotype) -> float:
    """The share of the cell's kept branches whose op has no weights."""
    ops = [op for block in genotype.cell for op, _ in block]
    return sum(op in PARAM_FREE_OPS for op in ops) / len(ops)


def epoch_diagnostics(
    alpha: np.ndarray, beta: np.ndarray, genotype: Genotype, previous: dict | None
) -> dict:
    """The diagnostics of one epoch. ``previous``: alpha and beta as the epoch started and the
    last epoch's record (None in the first epoch), ``{"alpha", "beta", "record"}``; without it
    (no epoch before at all) the moves are left out."""
    a_ent, b_ent = alpha_entropy(alpha), beta_entropy(beta)
    record = {
        "alpha_entropy": float(a_ent.mean()),
        "beta_entropy": float(b_ent.mean()),
        "alpha_entropy_per_edge": [round(float(e), 6) for e in a_ent],
        "beta_entropy_per_node": [round(float(e), 6) for e in b_ent],
        "param_free_share": param_free_share(genotype),
    }
    prev_record = (previous or {}).get("record")
    if previous is not None:
        record["alpha_move"] = float(np.abs(alpha - np.asarray(previous["alpha"])).max())
        record["beta_move"] = float(np.abs(beta - np.asarray(previous["beta"])).max())
    changed = prev_record is not None and list(prev_record["path"]) != list(genotype.path)
    record["path_changed"] = float(changed)
    stable = 1 if prev_record is None or changed else int(prev_record["path_stable_epochs"]) + 1
    record["path_stable_epochs"] = stable
    return record
