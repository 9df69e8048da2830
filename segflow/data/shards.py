"""data/shards/: the samples of every split as encoded image + mask bytes in Arrow IPC files.

Layout::

    <out_dir>/index.json
    <out_dir>/<split>/<split>-00000.arrow   rows: id, image, mask, height, width,
                                            native_image, native_mask

Why Arrow IPC *file* format (not Parquet, not loose PNGs): an IPC file can be opened with
``pa.memory_map`` and its binary columns read zero-copy straight out of the page cache, and the
footer gives random access to each record batch. A training worker therefore pays only for the
PNG/JPEG decode it has to do anyway. Parquet pages would need a decode (and usually a
decompress) pass on every read, and loose files cost an open/stat/read per sample, which is what
dominates on network filesystems. The bytes inside are still ordinary PNG/JPEG, so any image
library can read a row.

Images are PNG (lossless) or JPEG (smaller, ~3x faster to decode); masks are always PNG because
a lossy mask would invent labels. ``index.json`` carries the class table, per-split counts and
class pixel counts (for class weighting and validation reports) and ``content_hash``, which
training tags its runs with.

With ``resize``, every split except train also keeps each sample at its original resolution
(``native_image`` PNG, ``native_mask``; null otherwise): evaluation predicts at the training
scale but scores against the original masks, as published figures are measured, and the CRF
runs on the original image.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from segflow.data import store
from segflow.data.datasets.base import IGNORE_INDEX, DatasetAdapter
from segflow.data.manifest import Manifest, sha256_file
from segflow.data.store import INDEX_NAME
from segflow.errors import SegflowError
from segflow.io import atomic_dir, write_json

IMAGE_CODECS = ("png", "jpg")

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("mask", pa.binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("native_image", pa.binary()),
        ("native_mask", pa.binary()),
    ]
)
#: The split the model trains on: the only one not kept at native resolution as well.
TRAIN_SPLIT = "train"


def write_shards(
    manifest: Manifest,
    adapter: DatasetAdapter,
    out_dir: Path,
    rows_per_shard: int,
    resize: tuple[int, int] | None = None,
    image_codec: str = "png",
    jpeg_quality: int = 95,
    workers: int = 2,
) -> dict:
    """Encode every sample of ``manifest`` into shards under ``out_dir`` and return the index.

    ``resize`` is (height, width). The whole output is built in a temp directory and swapped in
    at the end, so a failure (a corrupt file, a bad label) leaves the previous shards intact.
    Output bytes depend only on the inputs: rows keep manifest order, and the encoders used
    (OpenCV PNG/JPEG, Arrow IPC without compression) are deterministic.
    """
    if rows_per_shard <= 0:
        raise SegflowError(f"shard.rows_per_shard: must be positive (got {rows_per_shard})")
    if image_codec not in IMAGE_CODECS:
        raise SegflowError(
            f"shard.image_codec: must be one of {IMAGE_CODECS} (got {image_codec!r})"
        )
    num_classes = len(manifest.classes)
    out_dir = Path(out_dir)
    index: dict = {
        "dataset": manifest.dataset,
        "classes": [c.to_dict() for c in manifest.classes],
        "num_classes": num_classes,
        "ignore_index": IGNORE_INDEX,
        "splits": {},
        "content_hash": "",
        "resize": list(resize) if resize else None,
        "image_codec": image_codec,
    }
    encode = _Encoder(adapter, num_classes, resize, image_codec, jpeg_quality)
    with atomic_dir(out_dir) as tmp, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for split in manifest.splits:
            frame = manifest.split(split)
            refs = list(zip(frame["id"], frame["image_path"], frame["mask_path"], strict=True))
            encode.keep_native = resize is not None and split != TRAIN_SPLIT
            index["splits"][split] = _write_split(tmp, split, refs, rows_per_shard, encode, pool)
        file_hashes = [f["sha256"] for s in index["splits"].values() for f in s["files"]]
        index["content_hash"] = content_hash(file_hashes)
        write_json(tmp / INDEX_NAME, index)
    return index


def write_pointer(out_dir: Path, index: dict) -> None:
    """Replace ``out_dir`` with just ``index.json``: ``index`` (which names the shards' ``uri``)
    marked as a pointer. Readers given ``out_dir`` follow it to the URI (:func:`store.follow`);
    it is what DVC tracks when the shards live elsewhere."""
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / INDEX_NAME, {**index, store.POINTER_KEY: True})


def content_hash(file_hashes: Iterable[str]) -> str:
    """sha256 over the sorted per-file hashes: one name for the exact shard contents."""
    return hashlib.sha256("\n".join(sorted(file_hashes)).encode()).hexdigest()


def shard_index_path(out_dir: str | Path) -> str:
    """Where the shards' index lives (for messages; read it with :func:`read_index`)."""
    return store.join(out_dir, INDEX_NAME)


def read_index(out_dir: str | Path) -> dict:
    """Load ``<out_dir>/index.json`` (a directory or an object-store prefix); a missing one
    means the shard stage has not run."""
    return store.read_index(out_dir, "run the shard stage (dvc repro shard)")


def split_hash(index: dict, split: str) -> str:
    """Content hash of one split's shard files (the gate's notion of "the same test set")."""
    splits = index.get("splits", {})
    if split not in splits:
        raise SegflowError(f"shard index: no split {split!r} (have {sorted(splits)})")
    return content_hash(f["sha256"] for f in splits[split]["files"])


def verify_shards(out_dir: str | Path, full_hash: bool = False) -> dict:
    """Check the shards against their index before any worker reads them; return the index.

    A damaged shard found inside a Ray worker surfaces as a long traceback that names no file,
    after Ray has retried the worker. Checked here instead, in the driver, it is one line naming
    the file. Every run checks what is cheap: each listed file exists with the size the index
    recorded, its Arrow footer opens with the expected schema (and, on a local disk, where it
    costs nothing, the row count), and no stray ``.arrow`` file sits beside them. ``full_hash``
    also re-hashes every byte against the index's per-file sha256 and ``content_hash`` (seconds
    per GB; ``segflow shards --verify``). ``out_dir`` may be an object-store prefix: sizes come
    from the store's metadata, the footer from one ranged read, the hashes from streaming each
    object; a message then names the object's URI.
    """
    where = store.location(store.follow(out_dir))
    index = read_index(where)
    index_path = shard_index_path(where)
    fix = "run dvc repro shard"
    listed = set()
    for split, info in index.get("splits", {}).items():
        for entry in info.get("files", []):
            path = store.object_uri(where, index, entry["path"])
            listed.add(path)
            size = store.object_size(path, fix)
            if size is None:
                raise SegflowError(f"{path}: shard listed in {index_path} is missing; {fix}")
            if "bytes" in entry and size != entry["bytes"]:
                raise SegflowError(
                    f"{path}: shard is {size} bytes, {index_path} says "
                    f"{entry['bytes']}; it is damaged or from another run; {fix}"
                )
            _check_footer(path, None if store.is_remote(where) else entry["rows"], fix)
            if full_hash and store.sha256_object(path, fix) != entry["sha256"]:
                raise SegflowError(
                    f"{path}: content differs from the sha256 in {index_path}; {fix}"
                )
        split_dir = store.object_uri(where, index, split)
        for stray in sorted(set(store.list_objects(split_dir, ".arrow", fix)) - listed):
            raise SegflowError(f"{stray}: shard not listed in {index_path}; {fix}")
    if full_hash:
        hashes = [f["sha256"] for s in index["splits"].values() for f in s["files"]]
        if content_hash(hashes) != index.get("content_hash"):
            raise SegflowError(
                f"{index_path}: content_hash does not match its files' hashes; {fix}"
            )
    return index


def _check_footer(path: str, rows: int | None, fix: str) -> None:
    """Open the Arrow IPC footer (the end of the file) and compare the schema, and the row
    count when ``rows`` is given (counting reads each batch: free when memory-mapped)."""
    try:
        source = pa.memory_map(path) if not store.is_remote(path) else store.open_object(path, fix)
        with source:
            reader = pa.ipc.open_file(source)
            schema = reader.schema
            if rows is not None:
                batches = range(reader.num_record_batches)
                num_rows = sum(reader.get_batch(i).num_rows for i in batches)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SegflowError(f"{path}: not a readable Arrow shard ({exc}); {fix}") from None
    if not schema.equals(SCHEMA):
        raise SegflowError(f"{path}: Arrow schema differs from segflow's shard schema; {fix}")
    if rows is not None and num_rows != rows:
        raise SegflowError(f"{path}: {num_rows} rows, the index says {rows}; it is damaged; {fix}")


class _Encoder:
    """Reads one sample through the adapter, optionally resizes, encodes, counts class pixels.

    Runs in a thread pool: cv2 decode/resize/encode release the GIL, so two threads keep both
    cores busy without the pickling cost of a process pool.
    """

    def __init__(
        self,
        adapter: DatasetAdapter,
        num_classes: int,
        resize: tuple[int, int] | None,
        image_codec: str,
        jpeg_quality: int,
    ) -> None:
        self.adapter = adapter
        self.num_classes = num_classes
        self.resize = resize
        self.ext = ".png" if image_codec == "png" else ".jpg"
        self.params = [] if image_codec == "png" else [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        self.keep_native = False

    def __call__(self, ref: tuple[str, str, str]) -> tuple:
        sample_id, image_path, mask_path = ref
        image = self.adapter.read_image(Path(image_path))
        mask = self.adapter.read_mask(Path(mask_path))
        if mask.dtype != np.uint8 or mask.ndim != 2:
            raise SegflowError(
                f"{mask_path}: read_mask gave {mask.dtype} {mask.shape}; expected uint8 H x W"
            )
        if image.shape[:2] != mask.shape[:2]:
            raise SegflowError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height); they must match"
            )
        native = (None, None)
        if self.keep_native:  # lossless, so evaluation sees exactly the original pixels
            native = (
                _encode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [], image_path),
                _encode(".png", np.ascontiguousarray(mask), [], mask_path),
            )
        if self.resize is not None:
            image, mask = _resize_pair(image, mask, self.resize)
        counts = np.bincount(mask.ravel(), minlength=256)
        bad = np.flatnonzero(counts[self.num_classes : IGNORE_INDEX])
        if bad.size:
            raise SegflowError(
                f"{mask_path}: train ids {(bad + self.num_classes).tolist()} are outside 0.."
                f"{self.num_classes - 1} and not the ignore label {IGNORE_INDEX}"
            )
        image_bytes = _encode(
            self.ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), self.params, image_path
        )
        mask_bytes = _encode(".png", np.ascontiguousarray(mask), [], mask_path)
        height, width = mask.shape
        return sample_id, image_bytes, mask_bytes, height, width, *native, counts


def _resize_pair(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to (height, width): area averaging when shrinking the image (no aliasing), linear
    when enlarging, and always nearest for the mask so every pixel keeps a real label.

    ``INTER_NEAREST_EXACT`` samples at pixel centres like the image's interpolation does; plain
    ``INTER_NEAREST`` samples at corners and would shift the mask by up to half a pixel.
    """
    height, width = size
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    return resize_image(image, size), mask


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB image at (height, width): area averaging when shrinking, linear when enlarging.

    The one function that takes an image to the training scale: the shard stage, evaluation
    and the served model all call it, so the network sees the same pixels in all three.
    """
    height, width = size
    if tuple(image.shape[:2]) == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )


def _encode(ext: str, array: np.ndarray, params: list[int], source: str) -> bytes:
    ok, buf = cv2.imencode(ext, array, params)
    if not ok:
        raise SegflowError(f"{source}: OpenCV could not encode it as {ext}")
    return buf.tobytes()


def _write_split(
    root: Path,
    split: str,
    refs: list[tuple[str, str, str]],
    rows_per_shard: int,
    encode: _Encoder,
    pool: ThreadPoolExecutor,
) -> dict:
    (root / split).mkdir(parents=True, exist_ok=True)
    class_pixels = np.zeros(256, dtype=np.int64)
    files = []
    sizes: set[tuple[int, int]] = set()
    for number, start in enumerate(range(0, len(refs), rows_per_shard)):
        # pool.map keeps input order, so the output does not depend on thread timing.
        rows = list(pool.map(encode, refs[start : start + rows_per_shard]))
        for *_, height, width, _image, _mask, counts in rows:
            class_pixels += counts
            sizes.add((height, width))
        rel = f"{split}/{split}-{number:05d}.arrow"
        _write_shard(root / rel, rows)
        files.append(
            {
                "path": rel,
                "rows": len(rows),
                "bytes": (root / rel).stat().st_size,
                "sha256": sha256_file(root / rel),
            }
        )
    return {
        "num_samples": len(refs),
        "files": files,
        "class_pixels": class_pixels[: encode.num_classes].tolist(),
        "ignored_pixels": int(class_pixels[IGNORE_INDEX]),
        # Distinct (height, width) of the stored samples: evaluation batches full-size images
        # only when they all agree.
        "sizes": [list(s) for s in sorted(sizes)],
    }


def _write_shard(path: Path, rows: list[tuple]) -> None:
    """One record batch per file: rows_per_shard bounds both the file and the batch."""
    ids, images, masks, heights, widths, native_images, native_masks, _ = zip(*rows, strict=True)
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(images, pa.binary()),
            pa.array(masks, pa.binary()),
            pa.array(heights, pa.int32()),
            pa.array(widths, pa.int32()),
            pa.array(native_images, pa.binary()),
            pa.array(native_masks, pa.binary()),
        ],
        schema=SCHEMA,
    )
    try:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            writer.write_batch(batch)
    except OSError as exc:  # Arrow's error (a full disk...) names no file: say which one
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OSError(exc.errno, reason, str(path)) from exc
