"""Stage ingest: dataset on disk -> data/manifest.parquet (one row per sample, with hashes)."""

from segflow.config import Params
from segflow.data.datasets import open_dataset
from segflow.data.manifest import build_manifest, write_manifest
from segflow.paths import MANIFEST
from segflow.stage import console, run_stage


def main(params: Params) -> None:
    manifest = build_manifest(open_dataset(params))
    write_manifest(manifest, MANIFEST)
    counts = manifest.frame["split"].value_counts().sort_index().to_dict()
    console.print(f"ingest: {manifest.dataset} {counts} -> {MANIFEST}")


if __name__ == "__main__":
    run_stage(main)
