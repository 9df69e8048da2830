"""data/manifest.parquet: one row per sample, the single input of every later data stage.

Columns: ``id, split, image_path, mask_path, image_sha256, mask_sha256, height, width``.
``height``/``width`` come from the image header and are null when the header cannot be read;
validation (not ingest) decides whether that is fatal, so that one run reports every bad file.
The dataset name and class table (with each class's stored mask values and the values that mean
"ignore", when the dataset's class table sets them) travel in the Parquet schema metadata, so the
manifest alone says how to read its masks and what the labels mean.

Two things stop ingest at once, before the file is hashed, because what they point at must not
land in the manifest or any report: an image or mask that resolves outside the dataset root (a
symlink to /etc/shadow named like an image), and one whose header says it has more than
``dataset.max_pixels`` pixels (a decompression bomb, which validate and shard would decode).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from segflow.data.datasets.base import ClassInfo, DatasetAdapter
from segflow.data.images import check_pixels, header_size
from segflow.errors import SegflowError
from segflow.io import atomic_path

COLUMNS = [
    "id",
    "split",
    "image_path",
    "mask_path",
    "image_sha256",
    "mask_sha256",
    "height",
    "width",
]
_META_KEY = b"segflow"


@dataclass
class Manifest:
    frame: pd.DataFrame
    classes: list[ClassInfo]
    dataset: str
    #: Stored mask values that mean "ignore" (a folder dataset's class table); None: the
    #: adapter's fixed mapping.
    ignore_values: list[int] | None = None

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name]

    @property
    def splits(self) -> list[str]:
        return sorted(self.frame["split"].unique())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _header_size(path: Path, max_pixels: int, what: str) -> tuple[int | None, int | None]:
    """(height, width) from the header only; None when it cannot be read (validation reports
    it, by file name); more than ``max_pixels`` stops ingest naming the file and its size."""
    size = header_size(path, path, max_pixels, what)
    if size is None:
        return None, None
    check_pixels(path, *size, max_pixels, what)
    return size


def build_manifest(adapter: DatasetAdapter) -> Manifest:
    """Collect every sample of ``adapter`` with content hashes and image sizes.

    Each file passes the adapter's root boundary and the pixel limit before it is hashed.
    """
    rows = []
    for ref in adapter.samples():
        image, mask = Path(ref.image), Path(ref.mask)
        for p in (image, mask):
            adapter.inside_root(p)
            if not p.is_file():
                raise SegflowError(f"{p}: file listed for sample {ref.id!r} does not exist")
        height, width = _header_size(image, adapter.max_pixels, "image")
        _header_size(mask, adapter.max_pixels, "mask")
        rows.append(
            {
                "id": ref.id,
                "split": ref.split,
                "image_path": str(image.resolve()),
                "mask_path": str(mask.resolve()),
                "image_sha256": sha256_file(image),
                "mask_sha256": sha256_file(mask),
                "height": height,
                "width": width,
            }
        )
    if not rows:
        raise SegflowError(f"dataset {adapter.name!r}: no samples found")
    frame = pd.DataFrame(rows, columns=COLUMNS).astype({"height": "Int64", "width": "Int64"})
    ignore = None if adapter.ignore_values is None else list(adapter.ignore_values)
    return Manifest(
        frame=frame, classes=adapter.classes(), dataset=adapter.name, ignore_values=ignore
    )


def write_manifest(manifest: Manifest, path: str | Path) -> None:
    """Write atomically: a failed ingest leaves the previous manifest as it was."""
    table = pa.Table.from_pandas(manifest.frame, preserve_index=False)
    meta = {"dataset": manifest.dataset, "classes": [c.to_dict() for c in manifest.classes]}
    if manifest.ignore_values is not None:
        meta["ignore_values"] = manifest.ignore_values
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), _META_KEY: json.dumps(meta)}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise SegflowError(
            f"{path}: manifest not found; run the ingest stage first (dvc repro ingest)"
        )
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise SegflowError(f"{path}: not a segflow manifest (no class table in its metadata)")
    meta = json.loads(raw)
    return Manifest(
        frame=table.to_pandas(),
        classes=[ClassInfo.from_dict(c) for c in meta["classes"]],
        dataset=meta["dataset"],
        ignore_values=meta.get("ignore_values"),
    )
