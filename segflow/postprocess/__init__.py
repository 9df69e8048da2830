"""Post-processing of network outputs: the fully connected CRF and probability storage."""

from segflow.postprocess.crf import (
    CRFParams,
    SplitResult,
    crf_over_split,
    crf_over_split_serial,
    dense_crf,
    refine_labels,
)
from segflow.postprocess.probs import ProbRecord, list_ids, load_probs, save_probs

__all__ = [
    "CRFParams",
    "ProbRecord",
    "SplitResult",
    "crf_over_split",
    "crf_over_split_serial",
    "dense_crf",
    "list_ids",
    "load_probs",
    "refine_labels",
    "save_probs",
]
