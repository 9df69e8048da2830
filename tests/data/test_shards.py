"""Shards: what write_shards stores, what index.json says about it, and atomic replacement."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from segflow.data.datasets.base import ClassInfo, DatasetAdapter, SampleRef
from segflow.data.loader import ShardDataset
from segflow.data.manifest import build_manifest
from segflow.data.shards import read_index, verify_shards, write_pointer, write_shards
from segflow.data.store import local_shards
from segflow.errors import SegflowError

NUM_CLASSES = 4


class TinyAdapter(DatasetAdapter):
    """A few random PNG pairs in tmp_path; masks hold train ids 0..3 and some 255."""

    name = "tiny"

    def __init__(self, root: Path, counts: dict[str, int], size=(20, 30), seed=0):
        self.refs = []
        rng = np.random.default_rng(seed)
        root.mkdir(parents=True, exist_ok=True)
        for split, n in counts.items():
            for i in range(n):
                sid = f"{split}_{i:03d}"
                mask = rng.integers(0, NUM_CLASSES, size, dtype=np.uint8)
                mask[rng.random(size) < 0.1] = 255
                image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                cv2.imwrite(str(root / f"{sid}.png"), image)
                cv2.imwrite(str(root / f"{sid}_mask.png"), mask)
                self.refs.append(
                    SampleRef(sid, split, root / f"{sid}.png", root / f"{sid}_mask.png")
                )

    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(i, f"class{i}", (60 * i, 0, 0)) for i in range(NUM_CLASSES)]

    def samples(self) -> Iterator[SampleRef]:
        return iter(self.refs)


def shard(tmp_path: Path, counts=None, out="shards", **kwargs) -> tuple[TinyAdapter, dict]:
    adapter = TinyAdapter(tmp_path / "raw", counts or {"train": 7, "val": 3})
    index = write_shards(
        build_manifest(adapter), adapter, tmp_path / out, **{"rows_per_shard": 3, **kwargs}
    )
    return adapter, index


def read_rows(path: Path) -> tuple[int, pa.Table]:
    reader = pa.ipc.open_file(pa.memory_map(str(path)))
    return reader.num_record_batches, reader.read_all()


def decode_mask(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def test_shards_store_every_sample_exactly_in_manifest_order(tmp_path):
    adapter, index = shard(tmp_path)
    for split in ("train", "val"):
        refs = [r for r in adapter.refs if r.split == split]
        rows = [
            read_rows(tmp_path / "shards" / f["path"])[1] for f in index["splits"][split]["files"]
        ]
        table = pa.concat_tables(rows)
        assert table.column("id").to_pylist() == [r.id for r in refs]
        for ref, img, msk, h, w in zip(
            refs,
            *(table.column(c).to_pylist() for c in ("image", "mask", "height", "width")),
            strict=True,
        ):
            stored = cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)
            np.testing.assert_array_equal(
                cv2.cvtColor(stored, cv2.COLOR_BGR2RGB), adapter.read_image(ref.image)
            )
            np.testing.assert_array_equal(decode_mask(msk), adapter.read_mask(ref.mask))
            assert (h, w) == (20, 30)


def test_rows_per_shard_bounds_every_file_and_names_follow_the_split(tmp_path):
    _, index = shard(tmp_path)
    files = index["splits"]["train"]["files"]
    assert [f["path"] for f in files] == [f"train/train-{i:05d}.arrow" for i in range(3)]
    assert [f["rows"] for f in files] == [3, 3, 1]
    for f in files:
        batches, table = read_rows(tmp_path / "shards" / f["path"])
        assert batches == 1 and table.num_rows == f["rows"]
    assert index["splits"]["train"]["num_samples"] == 7
    assert index["splits"]["val"]["num_samples"] == 3


def test_index_counts_class_pixels_exactly_as_stored_in_the_shards(tmp_path):
    _, index = shard(tmp_path, resize=(13, 17))
    assert index["num_classes"] == NUM_CLASSES and index["ignore_index"] == 255
    for split, info in index["splits"].items():
        counts = np.zeros(256, np.int64)
        for f in info["files"]:
            for data in read_rows(tmp_path / "shards" / f["path"])[1].column("mask").to_pylist():
                counts += np.bincount(decode_mask(data).ravel(), minlength=256)
        assert info["class_pixels"] == counts[:NUM_CLASSES].tolist(), split
        assert info["ignored_pixels"] == counts[255]
        assert sum(info["class_pixels"]) + info["ignored_pixels"] == info["num_samples"] * 13 * 17


def test_index_content_hash_covers_the_sha256_of_every_file(tmp_path):
    _, index = shard(tmp_path)
    hashes = []
    for info in index["splits"].values():
        for f in info["files"]:
            digest = hashlib.sha256((tmp_path / "shards" / f["path"]).read_bytes()).hexdigest()
            assert f["sha256"] == digest
            hashes.append(digest)
    assert index["content_hash"] == hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()
    assert read_index(tmp_path / "shards") == index


def test_same_inputs_give_byte_identical_shards(tmp_path):
    adapter = TinyAdapter(tmp_path / "raw", {"train": 9})
    manifest = build_manifest(adapter)
    first = write_shards(manifest, adapter, tmp_path / "a", rows_per_shard=4, workers=2)
    second = write_shards(manifest, adapter, tmp_path / "b", rows_per_shard=4, workers=1)
    assert first["content_hash"] == second["content_hash"]
    for f in first["splits"]["train"]["files"]:
        assert (tmp_path / "a" / f["path"]).read_bytes() == (
            tmp_path / "b" / f["path"]
        ).read_bytes()


def test_resize_keeps_only_original_labels_in_masks(tmp_path):
    adapter, index = shard(tmp_path, counts={"train": 2}, resize=(41, 11))
    assert index["resize"] == [41, 11]
    assert index["splits"]["train"]["sizes"] == [[41, 11]]
    table = read_rows(tmp_path / "shards" / "train/train-00000.arrow")[1]
    for ref, data in zip(adapter.refs, table.column("mask").to_pylist(), strict=True):
        mask = decode_mask(data)
        assert mask.shape == (41, 11)
        expected = cv2.resize(
            adapter.read_mask(ref.mask), (11, 41), interpolation=cv2.INTER_NEAREST_EXACT
        )
        np.testing.assert_array_equal(mask, expected)


def test_jpeg_codec_compresses_images_but_keeps_masks_lossless(tmp_path):
    adapter, index = shard(tmp_path, counts={"train": 2}, image_codec="jpg", jpeg_quality=90)
    assert index["image_codec"] == "jpg"
    table = read_rows(tmp_path / "shards" / "train/train-00000.arrow")[1]
    for ref, img, msk in zip(
        adapter.refs,
        table.column("image").to_pylist(),
        table.column("mask").to_pylist(),
        strict=True,
    ):
        assert img[:2] == b"\xff\xd8"  # JPEG start-of-image marker
        assert msk[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(decode_mask(msk), adapter.read_mask(ref.mask))


def test_label_outside_the_class_table_names_the_mask_file(tmp_path):
    adapter = TinyAdapter(tmp_path / "raw", {"train": 2})
    bad = adapter.refs[1].mask
    cv2.imwrite(str(bad), np.full((20, 30), 7, np.uint8))
    with pytest.raises(SegflowError, match=rf"{bad.name}.*\[7\].*outside 0..3"):
        write_shards(build_manifest(adapter), adapter, tmp_path / "shards", rows_per_shard=4)


def test_mask_and_image_of_different_sizes_are_an_error(tmp_path):
    adapter = TinyAdapter(tmp_path / "raw", {"train": 1})
    cv2.imwrite(str(adapter.refs[0].mask), np.zeros((10, 30), np.uint8))
    with pytest.raises(SegflowError, match="must match"):
        write_shards(build_manifest(adapter), adapter, tmp_path / "shards", rows_per_shard=4)


def test_failed_write_leaves_the_previous_shards_intact(tmp_path):
    adapter, index = shard(tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "shards").rglob("*") if p.is_file()}
    manifest = build_manifest(adapter)
    adapter.refs[-1].image.write_bytes(b"not a png")  # the last sample: fails late in the run
    with pytest.raises(SegflowError, match="not decodable"):
        write_shards(manifest, adapter, tmp_path / "shards", rows_per_shard=3)
    after = {p: p.read_bytes() for p in (tmp_path / "shards").rglob("*") if p.is_file()}
    assert after == before
    assert read_index(tmp_path / "shards")["content_hash"] == index["content_hash"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_index_names_the_path_and_the_stage(tmp_path):
    with pytest.raises(SegflowError, match=r"index.json.*dvc repro shard"):
        read_index(tmp_path / "nowhere")


def test_bad_shard_settings_are_errors(tmp_path):
    adapter = TinyAdapter(tmp_path / "raw", {"train": 1})
    manifest = build_manifest(adapter)
    with pytest.raises(SegflowError, match="rows_per_shard"):
        write_shards(manifest, adapter, tmp_path / "s", rows_per_shard=0)
    with pytest.raises(SegflowError, match="image_codec"):
        write_shards(manifest, adapter, tmp_path / "s", rows_per_shard=1, image_codec="webp")


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "footer":  # same size, the Arrow footer overwritten
        path.write_bytes(data[:-40] + b"\0" * 40)
    elif how == "body":  # same size, one byte of a PNG flipped: only the hash sees it
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    else:
        path.unlink()


def test_intact_shards_pass_the_cheap_and_the_full_check(tmp_path):
    _, index = shard(tmp_path)
    assert verify_shards(tmp_path / "shards") == index
    assert verify_shards(tmp_path / "shards", full_hash=True) == index
    assert all(f["bytes"] > 0 for s in index["splits"].values() for f in s["files"])


@pytest.mark.parametrize("how", ["truncated", "footer", "missing"])
def test_a_damaged_shard_is_named_with_the_stage_that_rebuilds_it(tmp_path, how):
    shard(tmp_path)
    victim = tmp_path / "shards" / "train" / "train-00001.arrow"
    _damage(victim, how)
    with pytest.raises(SegflowError) as exc:
        verify_shards(tmp_path / "shards")
    message = str(exc.value)
    assert str(victim) in message and "dvc repro shard" in message
    assert "\n" not in message


def test_only_the_full_check_reads_every_byte(tmp_path):
    shard(tmp_path)
    victim = tmp_path / "shards" / "val" / "val-00000.arrow"
    _damage(victim, "body")
    verify_shards(tmp_path / "shards")  # sizes and footers still agree
    with pytest.raises(SegflowError, match=f"{victim}: content differs from the sha256"):
        verify_shards(tmp_path / "shards", full_hash=True)


def test_a_stray_shard_beside_the_listed_ones_is_named(tmp_path):
    shard(tmp_path)
    stray = tmp_path / "shards" / "train" / "train-00099.arrow"
    stray.write_bytes((tmp_path / "shards" / "train" / "train-00000.arrow").read_bytes())
    with pytest.raises(SegflowError, match=f"{stray}: shard not listed in"):
        verify_shards(tmp_path / "shards")


def test_a_pointer_in_data_shards_leads_every_reader_to_the_shards_elsewhere(tmp_path):
    """shard.uri naming another directory (or a bucket): data/shards keeps only the index,
    marked as a pointer, and readers given data/shards (``segflow shards``) follow it."""
    _, index = shard(tmp_path, out="elsewhere")
    write_pointer(tmp_path / "data" / "shards", {**index, "uri": str(tmp_path / "elsewhere")})
    assert [p.name for p in (tmp_path / "data" / "shards").iterdir()] == ["index.json"]
    assert local_shards(tmp_path / "data" / "shards") == tmp_path / "elsewhere"
    assert verify_shards(tmp_path / "data" / "shards", full_hash=True) == index
    ids = [s["id"] for s in ShardDataset(tmp_path / "data" / "shards", "val")]
    assert ids == ["val_000", "val_001", "val_002"]


def test_the_local_default_index_names_no_uri(tmp_path):
    """With shard.uri a local directory nothing about the shards changes: no uri, no pointer."""
    _, index = shard(tmp_path)
    assert not {"uri", "objects", "pointer"} & set(read_index(tmp_path / "shards"))
    assert local_shards(tmp_path / "shards") == tmp_path / "shards"
