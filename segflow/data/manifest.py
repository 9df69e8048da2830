"""data/manifest.parquet: one row per sample, the single input of every later data stage.

Columns: ``id, split, image_path, mask_path, image_sha256, mask_sha256, height, width``.
``height``/``width`` come from the image header and are null when the header cannot be read;
validation (not ingest) decides whether that is fatal, so that one run reports every bad file.
The dataset name and class table (with each class's stored mask values and the values that mean
"ignore", when the dataset's class table sets them) travel in the Parquet schema metadata, so the
manifest alone says how to read its masks and what the labels mean.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from segflow.data.datasets.base import ClassInfo, DatasetAdapter
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


def _image_size(path: Path) -> tuple[int | None, int | None]:
    """(height, width) from the header only; None when it cannot be read."""
    try:
        with Image.open(path) as img:
            width, height = img.size
        return height, width
    except Exception:  # any unreadable header is reported by validation, by file name
        return None, None


def build_manifest(adapter: DatasetAdapter) -> Manifest:
    """Collect every sample of ``adapter`` with content hashes and image sizes."""
    rows = []
    for ref in adapter.samples():
        for p in (ref.image, ref.mask):
            if not Path(p).is_file():
                raise SegflowError(f"{p}: file listed for sample {ref.id!r} does not exist")
        height, width = _image_size(ref.image)
        rows.append(
            {
                "id": ref.id,
                "split": ref.split,
                "image_path": str(Path(ref.image).resolve()),
                "mask_path": str(Path(ref.mask).resolve()),
                "image_sha256": sha256_file(ref.image),
                "mask_sha256": sha256_file(ref.mask),
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
