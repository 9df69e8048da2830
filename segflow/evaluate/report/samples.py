"""Which test images the report shows: the worst, the median and the best by their own mIoU.

The first images of a split show nothing in particular; the worst image shows how the model
fails, the best what it does when it works, the median what a typical image gets. Each image's
mIoU is that of its own confusion counts (the classes present in its truth or prediction, the
rule of :func:`segflow.evaluate.bootstrap.miou_of_counts`), of the served prediction. An image
with no scored pixel has no mIoU and is never picked.

With ``evaluate.num_samples_report`` above 3 the others are spread evenly over the ranks in
between (the worst, the median and the best always among them); ties go to the earlier image,
so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from segflow.evaluate.report.tables import percent


@dataclass(frozen=True)
class PickedSample:
    """One picked image: its position in the split, its rank (0 = worst) and mIoU."""

    index: int
    rank: int
    of: int
    miou: float

    @property
    def role(self) -> str:
        """``worst``, ``median``, ``best`` (``only`` for a single image), else the rank."""
        if self.of == 1:
            return "only"
        if self.rank == 0:
            return "worst"
        if self.rank == self.of - 1:
            return "best"
        if self.rank == (self.of - 1) // 2:
            return "median"
        return f"rank {self.rank + 1} (1 = worst)"

    def caption(self, sample_id: str, split: str) -> str:
        return f"{self.role} of {self.of} {split} images: {sample_id}, mIoU {percent(self.miou)}"


def pick_samples(mious: Sequence[float], count: int) -> list[PickedSample]:
    """``count`` images by rank of ``mious`` (one per image, NaN: not scored), worst first."""
    scored = [i for i, m in enumerate(mious) if m == m]
    order = sorted(scored, key=lambda i: (mious[i], i))
    n = len(order)
    if count <= 0 or n == 0:
        return []
    if count == 1:
        ranks = [(n - 1) // 2]
    elif count >= n:
        ranks = list(range(n))
    else:
        ranks = sorted({k * (n - 1) // (count - 1) for k in range(count)})
        median = (n - 1) // 2
        if count >= 3 and median not in ranks:  # the rank nearest the median becomes it
            inner = ranks[1:-1]
            nearest = min(inner, key=lambda r: (abs(r - median), r))
            ranks = sorted({*ranks, median} - {nearest})
    return [PickedSample(order[r], r, n, float(mious[order[r]])) for r in ranks]
