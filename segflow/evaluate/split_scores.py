"""A split scored image by image through a served path: what the promotion gate compares.

The evaluate stage scores the new model on the gate's decision split with it, and the gate
scores the champion on the same split the same way (each with its own serving spec), so the
two per-image count arrays are comparable image for image. Counts are taken from the plain
argmax and, when the model serves a CRF, after it (the served path's counts are those).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.evaluate.crf_split import crf_over_split
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.serving import Predictor
from segflow.postprocess.crf_params import CRFParams


@dataclass
class SplitScores:
    """Sample ids and per-image counts ``(N, 3, C)``: ``raw`` (argmax) and ``crf`` (after the
    CRF; None when no CRF was given). ``served`` is what the served path returns."""

    ids: list[str]
    raw: np.ndarray
    crf: np.ndarray | None

    @property
    def served(self) -> np.ndarray:
        return self.raw if self.crf is None else self.crf


def score_split(
    predictor: Predictor,
    crf: CRFParams | None,
    shard_dir: str | Path,
    split: str,
    num_classes: int,
    images_per_task: int = 1,
) -> SplitScores:
    """Every image of ``split`` at its original resolution through ``predictor``'s network,
    then ``crf`` (if any); the probabilities live in a temporary directory only."""
    plain = Predictor(predictor.network, dataclasses.replace(predictor.spec, crf=None),
                      predictor.device)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="segflow-split-") as tmp:
        probs = Path(tmp) / "probs"
        pred = predict_split(plain, shard_dir, split, probs, num_classes)
        refined = None
        if crf is not None:
            refined = crf_over_split(
                probs, crf, num_classes, images_per_task=images_per_task, ids=pred.file_ids
            ).image_counts
    return SplitScores(pred.sample_ids, pred.image_counts, refined)
