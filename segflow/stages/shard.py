"""Stage shard: validated manifest -> data/shards/<split>/*.arrow and data/shards/index.json."""

from __future__ import annotations

from segflow.config import Params
from segflow.data.datasets import open_dataset
from segflow.data.manifest import read_manifest
from segflow.data.shards import write_shards
from segflow.data.validate import require_passed
from segflow.logs import console
from segflow.paths import MANIFEST, SHARDS, VALIDATION_SUMMARY


def main(params: Params) -> None:
    require_passed(VALIDATION_SUMMARY)
    p = params.shard
    resize = (p.resize_height, p.resize_width) if p.resize_height else None
    index = write_shards(
        read_manifest(MANIFEST),
        open_dataset(params),
        SHARDS,
        rows_per_shard=p.rows_per_shard,
        resize=resize,
        image_codec=p.image_codec,
        jpeg_quality=p.jpeg_quality,
    )
    samples = ", ".join(f"{s} {v['num_samples']}" for s, v in sorted(index["splits"].items()))
    console.print(
        f"shard: {samples} samples -> {SHARDS} (content hash {index['content_hash'][:12]})"
    )
