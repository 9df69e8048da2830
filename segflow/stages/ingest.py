"""Stage ingest: dataset on disk -> data/manifest.parquet (one row per sample, with hashes).

With ``dataset.holdout_groups`` the train samples of those groups become the split ``dev``
(segflow.data.groups): a development split that shares no group (sequence, patient) with train.
"""

from __future__ import annotations

from segflow.config import Params
from segflow.data.datasets import open_dataset
from segflow.data.groups import DEV_SPLIT, hold_out
from segflow.data.manifest import Manifest, build_manifest, write_manifest
from segflow.logs import console
from segflow.paths import MANIFEST


def held_out_manifest(params: Params) -> Manifest:
    """The dataset's manifest, with ``dataset.holdout_groups``' train samples moved to dev."""
    manifest = build_manifest(open_dataset(params))
    ds = params.dataset
    if ds.holdout_groups:  # whole groups of train become the development split
        frame = manifest.frame
        frame["split"] = hold_out(
            list(frame["split"]), list(frame["id"]), ds.group_pattern, ds.holdout_groups
        )
    return manifest


def main(params: Params) -> None:
    manifest = held_out_manifest(params)
    ds = params.dataset
    if ds.holdout_groups:
        held = int((manifest.frame["split"] == DEV_SPLIT).sum())
        console.print(
            f"ingest: {held} train samples of {ds.holdout_groups} held out as {DEV_SPLIT}"
        )
    write_manifest(manifest, MANIFEST)
    counts = manifest.frame["split"].value_counts().sort_index().items()
    samples = ", ".join(f"{split} {n}" for split, n in counts)
    console.print(f"ingest: {manifest.dataset}: {samples} samples -> {MANIFEST}")
