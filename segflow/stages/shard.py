"""Stage shard: validated manifest -> shards at shard.uri, and data/shards/index.json.

With the default shard.uri (data/shards) the shards are written there. With an object-store
prefix (or another directory) they are built in a temp directory beside data/shards, uploaded
(:func:`segflow.data.store.publish_shards`: the objects, then index.json last), and data/shards
keeps only a pointer: the index with the URI, so DVC sees a new version of the data and the
driver holds no copy of it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from segflow.config import Params
from segflow.data.datasets import open_dataset
from segflow.data.manifest import read_manifest
from segflow.data.shards import write_pointer, write_shards
from segflow.data.store import is_remote, location, publish_shards
from segflow.data.validate import require_passed
from segflow.logs import console
from segflow.paths import MANIFEST, SHARDS, VALIDATION_SUMMARY


def main(params: Params) -> None:
    require_passed(VALIDATION_SUMMARY)
    p = params.shard
    resize = (p.resize_height, p.resize_width) if p.resize_height else None

    def build(out_dir: str | Path) -> dict:
        return write_shards(
            read_manifest(MANIFEST),
            open_dataset(params),
            Path(out_dir),
            rows_per_shard=p.rows_per_shard,
            resize=resize,
            image_codec=p.image_codec,
            jpeg_quality=p.jpeg_quality,
        )

    if is_remote(p.uri):
        SHARDS.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".shards-upload-", dir=SHARDS.parent) as tmp:
            index = publish_shards(Path(tmp), p.uri, build(tmp))
        write_pointer(SHARDS, index)
    else:
        index = build(p.uri)
        if os.path.abspath(p.uri) != os.path.abspath(SHARDS):
            write_pointer(SHARDS, {**index, "uri": location(p.uri)})
    samples = ", ".join(f"{s} {v['num_samples']}" for s, v in sorted(index["splits"].items()))
    console.print(
        f"shard: {samples} samples -> {p.uri} (content hash {index['content_hash'][:12]})"
    )
