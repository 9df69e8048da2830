"""Validation: each rule catches its bad data and names the sample; the report is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from segflow.data.datasets.base import ClassInfo, DatasetAdapter, SampleRef
from segflow.data.manifest import build_manifest
from segflow.data.sample_stats import sample_stats
from segflow.data.validate import MASK_VALUES_RULE, RULES, validate

H, W = 12, 16
CLASSES = [ClassInfo(0, "road", (128, 64, 128)), ClassInfo(1, "car", (64, 0, 128))]


class ListAdapter(DatasetAdapter):
    """An adapter over an explicit list of samples, so a test can shape ids and splits freely."""

    name = "tiny"

    def __init__(self, refs: list[SampleRef], classes: list[ClassInfo] = CLASSES):
        self.refs = refs
        self._classes = classes

    def classes(self) -> list[ClassInfo]:
        return self._classes

    def samples(self):
        return iter(self.refs)


def write_sample(root: Path, split: str, sid: str, seed: int = 0) -> SampleRef:
    """Write a random image and its mask: left half road, right half car, one void pixel."""
    image = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[:, W // 2 :] = 1
    mask[0, 0] = 255
    (root / split).mkdir(parents=True, exist_ok=True)
    img_path, mask_path = root / split / f"{sid}.png", root / split / f"{sid}_mask.png"
    cv2.imwrite(str(img_path), image)
    cv2.imwrite(str(mask_path), mask)
    return SampleRef(sid, split, img_path, mask_path)


def clean_refs(root: Path) -> list[SampleRef]:
    ids = {"train": ["0001", "0002", "0003"], "val": ["0004", "0005"]}
    return [
        write_sample(root, split, sid, seed=int(sid)) for split, sids in ids.items() for sid in sids
    ]


def run(tmp_path: Path, refs: list[SampleRef], classes=CLASSES, **kwargs):
    adapter = ListAdapter(refs, classes)
    return validate(build_manifest(adapter), adapter, tmp_path / "report", **kwargs)


def failure_of(result, rule: str) -> str:
    lines = [line for line in result.failures if line.startswith(rule + ":")]
    assert lines, f"no failure for rule {rule!r} in {result.failures}"
    return lines[0]


def test_clean_dataset_passes_and_writes_results_summary_and_data_docs(tmp_path):
    result = run(tmp_path, clean_refs(tmp_path / "data"))
    assert result.success and result.failures == []
    report = tmp_path / "report"
    results = json.loads((report / "results.json").read_text())
    assert set(results) == {"samples", "splits", "classes"}
    assert all(r["success"] for r in results.values())
    summary = json.loads((report / "summary.json").read_text())
    assert summary["success"] is True
    assert set(summary["rules"]) == {r.name for r in RULES}
    assert summary["counts"]["splits"] == {"train": 3, "val": 2}
    assert (report / summary["data_docs"]).is_file()
    assert (report / "data_docs" / "index.html").read_text().count("validations/") >= 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_undecodable_images_are_all_reported_by_id_and_path_and_the_report_still_written(tmp_path):
    refs = clean_refs(tmp_path / "data")
    refs[1].image.write_bytes(refs[1].image.read_bytes()[:60])  # truncated PNG
    refs[3].image.write_bytes(np.random.default_rng(0).bytes(500))  # not an image at all
    result = run(tmp_path, refs)
    assert not result.success
    line = failure_of(result, "image decodable")
    assert line.startswith("image decodable: 2 samples: 0002 (")
    assert "0004 (" in line and str(refs[1].image) in line and str(refs[3].image) in line
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["success"] is False and summary["failures"] == result.failures
    assert summary["rules"]["image decodable"]["success"] is False
    assert summary["rules"]["mask decodable"]["success"] is True
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()


def test_undecodable_or_multichannel_masks_are_reported(tmp_path):
    refs = clean_refs(tmp_path / "data")
    refs[4].mask.write_bytes(b"not a png")
    cv2.imwrite(str(refs[2].mask), np.zeros((H, W, 3), np.uint8))  # a colour mask, not labels
    line = failure_of(run(tmp_path, refs), "mask decodable")
    assert line.startswith("mask decodable: 2 samples: 0003 (") and str(refs[4].mask) in line
    assert f"0003 ({refs[2].mask}: mask has 3 channels" in line


def test_mask_of_another_size_is_reported(tmp_path):
    refs = clean_refs(tmp_path / "data")
    cv2.imwrite(str(refs[0].mask), np.zeros((H, W + 2), np.uint8))
    line = failure_of(run(tmp_path, refs), "image and mask the same size")
    assert f"0001 ({refs[0].mask}: image {H}x{W}, mask {H}x{W + 2})" in line


def test_mask_label_outside_the_class_table_is_reported_with_its_values(tmp_path):
    refs = clean_refs(tmp_path / "data")
    mask = np.zeros((H, W), np.uint8)
    mask[0, :3] = [1, 7, 40]
    cv2.imwrite(str(refs[2].mask), mask)
    line = failure_of(run(tmp_path, refs), MASK_VALUES_RULE)
    assert line == f"{MASK_VALUES_RULE}: 1 sample: 0003 ({refs[2].mask}: values [7, 40])"


def test_duplicated_id_is_reported(tmp_path):
    refs = clean_refs(tmp_path / "data")
    extra = write_sample(tmp_path / "data", "train", "0002b", seed=9)
    refs.append(SampleRef("0002", "train", extra.image, extra.mask))
    result = run(tmp_path, refs)
    assert failure_of(result, "ids unique").startswith("ids unique: 1 id: 0002 (2 rows: train ")
    assert not any(line.startswith("splits disjoint") for line in result.failures)


def test_id_in_two_splits_is_reported(tmp_path):
    refs = clean_refs(tmp_path / "data")
    refs.append(write_sample(tmp_path / "data", "val", "0001", seed=7))
    line = failure_of(run(tmp_path, refs), "splits disjoint (no id in two splits)")
    assert line == "splits disjoint (no id in two splits): 1 id: 0001 (in train, val)"


def test_identical_image_in_two_splits_is_reported_as_a_leak(tmp_path):
    refs = clean_refs(tmp_path / "data")
    shutil.copy(refs[0].image, refs[3].image)  # val 0004 is a copy of train 0001
    result = run(tmp_path, refs)
    line = failure_of(result, "splits disjoint (no identical image sha256 in two splits)")
    assert "0001 (train: " in line and "0004 (val: " in line
    assert len(result.failures) == 1


def test_required_split_with_no_samples_is_reported(tmp_path):
    refs = clean_refs(tmp_path / "data")
    result = run(tmp_path, refs, required_splits=["train", "test"])
    line = failure_of(result, "every split non-empty")
    assert (
        line
        == "every split non-empty: 1 split: 'test' (required, but the manifest has no rows for it)"
    )
    train_only_missing = run(tmp_path, [r for r in refs if r.split == "val"])
    assert "'train' (required" in failure_of(train_only_missing, "every split non-empty")


def test_class_absent_from_train_is_reported_with_id_and_name(tmp_path):
    refs = clean_refs(tmp_path / "data")
    classes = [*CLASSES, ClassInfo(2, "bicyclist", (0, 128, 192))]
    bike = np.full((H, W), 2, np.uint8)
    cv2.imwrite(str(refs[4].mask), bike)  # bicyclist only in val
    result = run(tmp_path, refs, classes=classes)
    assert result.failures == [
        "every class present in train: 1 class with no train pixels: 2 bicyclist"
    ]


def test_sample_stats_counts_pixels_per_class_once_per_sample(tmp_path):
    refs = clean_refs(tmp_path / "data")
    refs[0].mask.write_bytes(b"broken")
    adapter = ListAdapter(refs)
    manifest = build_manifest(adapter)
    stats = sample_stats(manifest, adapter, num_workers=2)
    assert list(stats["id"]) == list(manifest.frame["id"])
    ok = stats.iloc[1]
    assert (ok["pixels_0"], ok["pixels_1"], ok["pixels_ignore"]) == (H * W // 2 - 1, H * W // 2, 1)
    assert ok["labels_outside_table"] == [] and ok["mask_error"] is None
    assert stats.iloc[0]["mask_error"].startswith(str(refs[0].mask))
    assert stats["pixels_0"].isna().tolist() == [True, False, False, False, False]
    assert stats.equals(sample_stats(manifest, adapter, num_workers=1))


def test_report_replaces_the_previous_one_whole(tmp_path):
    stale = tmp_path / "report" / "stale.txt"
    stale.parent.mkdir()
    stale.write_text("report from an earlier run")
    assert run(tmp_path, clean_refs(tmp_path / "data")).success
    assert not stale.exists() and (tmp_path / "report" / "summary.json").is_file()


def test_each_split_reports_its_share_of_ignored_pixels(tmp_path):
    result = run(tmp_path, clean_refs(tmp_path / "data"))  # one void pixel per mask
    share = pytest.approx(1 / (H * W), abs=1e-6)  # rounded to 6 digits, as in summary.json
    assert result.ignored_share == {"train": share, "val": share}
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["counts"]["ignored_share"] == {"train": 0.005208, "val": 0.005208}


def test_a_split_mostly_ignored_fails_naming_the_mask_values_found(tmp_path):
    """Masks stored as 0/255 read with the default mapping: the foreground silently ignored."""
    refs = clean_refs(tmp_path / "data")
    for ref in refs[:3]:  # the train split
        mask = np.zeros((H, W), np.uint8)
        mask[:, W // 4 :] = 255
        mask[0, 0] = 1
        cv2.imwrite(str(ref.mask), mask)
    result = run(tmp_path, refs, max_ignored_share=0.5)
    line = failure_of(result, "ignored pixels at most dataset.max_ignored_share")
    assert line.startswith("ignored pixels at most dataset.max_ignored_share: 1 split: train (")
    assert "75.0% of mask pixels ignored, limit 50%" in line
    assert "mask values found: 0 (24.5%), 1 (0.5%), 255 (75.0%)" in line
    assert "val (" not in line
    assert line.endswith("maps stored mask values to classes with `value:`")
    # The same data passes when the limit allows it.
    assert run(tmp_path, refs, max_ignored_share=0.8).success
