"""Stage ingest: dataset on disk -> data/manifest.parquet (one row per sample, with hashes)."""

from __future__ import annotations

from segflow.config import Params
from segflow.data.datasets import open_dataset
from segflow.data.manifest import build_manifest, write_manifest
from segflow.logs import console
from segflow.paths import MANIFEST


def main(params: Params) -> None:
    manifest = build_manifest(open_dataset(params))
    write_manifest(manifest, MANIFEST)
    counts = manifest.frame["split"].value_counts().sort_index().to_dict()
    console.print(f"ingest: {manifest.dataset} {counts} -> {MANIFEST}")
