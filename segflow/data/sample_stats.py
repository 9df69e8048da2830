"""Per-sample statistics that validation checks: decode every image and mask exactly once.

One row per manifest row (same order), so a failed check can name the sample id and its files.
A file that does not decode is recorded (``image_error``/``mask_error``), never raised: one run
must report every bad file, not stop at the first one. So is a file whose header says more than
``dataset.max_pixels`` pixels: the adapter's readers refuse it before decoding.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segflow.data.datasets.base import IGNORE_INDEX, DatasetAdapter
from segflow.data.images import one_line
from segflow.data.manifest import Manifest
from segflow.errors import SegflowError

IDENTITY = np.arange(256, dtype=np.uint8)

#: Columns of :func:`sample_stats` besides the ``pixels_<class id>`` counts.
STAT_COLUMNS = [
    "manifest_row",
    "id",
    "split",
    "image_path",
    "mask_path",
    "image_sha256",
    "image_error",
    "mask_error",
    "image_height",
    "image_width",
    "mask_height",
    "mask_width",
    "labels_outside_table",
    "pixels_ignore",
    "mask_values",
]


def pixel_column(class_id: int) -> str:
    """Name of the column holding the pixel count of one train id in one mask."""
    return f"pixels_{class_id}"


def sample_stats(manifest: Manifest, adapter: DatasetAdapter, num_workers: int = 1) -> pd.DataFrame:
    """Decode every sample of ``manifest`` with ``adapter`` and return one row of stats per sample.

    Columns: :data:`STAT_COLUMNS` and one ``pixels_<id>`` per class. ``*_error`` is the decode
    error message (None when the file decodes); sizes and label counts are null when the file
    did not decode. ``labels_outside_table`` lists the stored mask values that the class table
    does not define or that map to neither a class id nor 255 (empty when there are none);
    ``pixels_ignore`` counts the pixels that map to 255, and ``mask_values`` is
    ``{stored value: pixels}``, so a report can say which values were ignored. Threads suffice
    for speed: OpenCV releases the GIL while it decodes.
    """
    class_ids = [c.id for c in manifest.classes]
    allowed = np.zeros(256, dtype=bool)
    allowed[[i for i in class_ids if 0 <= i < 256]] = True
    allowed[IGNORE_INDEX] = True
    frame = manifest.frame.reset_index(drop=True)
    records = list(frame.itertuples(index=True))

    def one(rec) -> dict:
        return _stats_for(rec, adapter, class_ids, allowed)

    if num_workers > 1 and len(records) > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            rows = list(pool.map(one, records))
    else:
        rows = [one(rec) for rec in records]

    columns = STAT_COLUMNS + [pixel_column(i) for i in class_ids]
    stats = pd.DataFrame(rows, columns=columns)
    counts = ["image_height", "image_width", "mask_height", "mask_width", "pixels_ignore"]
    counts += [pixel_column(i) for i in class_ids]
    stats = stats.astype({c: "Int64" for c in counts})
    for c in ("image_error", "mask_error", "labels_outside_table"):
        # pandas turns a missing object into NaN; keep the documented None for "no value".
        stats[c] = stats[c].astype(object).where(stats[c].notna(), None)
    return stats


def _stats_for(rec, adapter: DatasetAdapter, class_ids: list[int], allowed: np.ndarray) -> dict:
    row: dict = {
        "manifest_row": rec.Index,
        "id": rec.id,
        "split": rec.split,
        "image_path": rec.image_path,
        "mask_path": rec.mask_path,
        "image_sha256": rec.image_sha256,
    }
    image, row["image_error"] = _decode(adapter.read_image, Path(rec.image_path))
    if image is not None:
        row["image_height"], row["image_width"] = image.shape[:2]
    raw, row["mask_error"] = _decode(adapter.read_mask_values, Path(rec.mask_path))
    if raw is not None:
        row["mask_height"], row["mask_width"] = raw.shape[:2]
        value_counts = np.bincount(raw.ravel(), minlength=256)
        lut = IDENTITY if adapter.label_lut is None else adapter.label_lut
        hist = np.bincount(lut, weights=value_counts, minlength=256).astype(np.int64)
        outside = set(adapter.unknown_values(value_counts))
        outside |= {int(v) for v in np.flatnonzero((value_counts > 0) & ~allowed[lut])}
        row["labels_outside_table"] = sorted(outside)
        row["pixels_ignore"] = int(hist[IGNORE_INDEX])
        row["mask_values"] = {int(v): int(value_counts[v]) for v in np.flatnonzero(value_counts)}
        for i in class_ids:
            row[pixel_column(i)] = int(hist[i]) if 0 <= i < 256 else 0
    return row


def _decode(read, path: Path) -> tuple[np.ndarray | None, str | None]:
    """(array, None) when ``read(path)`` works, else (None, a message that names the file)."""
    try:
        return read(path), None
    except (SegflowError, OSError) as exc:  # OSError: file gone or unreadable since ingest
        message = str(exc)
        return None, message if str(path) in message else f"{path}: {message}"
    except cv2.error as exc:  # an adapter's own decode that OpenCV refused: one line, not a crash
        return None, f"{path}: not decodable ({one_line(exc)})"
