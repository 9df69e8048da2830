"""What `segflow predict-many` segments, where each output goes, and what a re-run skips."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from segflow.deploy.inputs import list_inputs
from segflow.deploy.manifest import ManifestWriter, is_done, read_manifest
from segflow.errors import SegflowError


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def keys(items) -> list[str]:
    return [i.key for i in items]


def test_a_folder_gives_every_image_under_it_keyed_by_its_relative_path(tmp_path):
    for name in ("b.png", "a.JPG", "cams/left/c.jpeg", "notes.txt", "cams/d.tif"):
        touch(tmp_path / "in" / name)
    items = list_inputs([str(tmp_path / "in")])
    assert keys(items) == ["a", "b", "cams/d", "cams/left/c"]
    assert all(i.path.is_absolute() for i in items)


def test_a_glob_is_keyed_from_its_fixed_prefix(tmp_path):
    for name in ("day1/a.png", "day1/b.jpg", "day2/a.png", "day2/x.txt"):
        touch(tmp_path / "cams" / name)
    items = list_inputs([f"{tmp_path}/cams/day*/*"])
    assert keys(items) == ["day1/a", "day1/b", "day2/a"]
    with pytest.raises(SegflowError, match=r"day9\*: the pattern matches no image"):
        list_inputs([f"{tmp_path}/cams/day9*"])


def test_a_list_file_names_paths_relative_to_itself_missing_ones_included(tmp_path):
    touch(tmp_path / "imgs" / "a.png")
    outside = touch(tmp_path / "elsewhere" / "b.png")
    listing = tmp_path / "imgs" / "todo.txt"
    listing.write_text(f"# today\na.png\n\n{outside}\nmissing.png\n../elsewhere/b.png\n")
    items = list_inputs([str(listing)])
    assert keys(items) == [
        "a",
        str(outside.with_suffix("")).lstrip("/"),  # absolute: the whole path, inside --out
        "missing",  # not there: its manifest row will say so
        "__/elsewhere/b",  # no output above --out
    ]
    assert items[2].path == (tmp_path / "imgs" / "missing.png").resolve()


def test_two_images_with_one_output_name_and_s3_are_refused_in_one_line(tmp_path):
    touch(tmp_path / "in" / "a.png")
    touch(tmp_path / "in" / "a.jpg")
    with pytest.raises(SegflowError, match=r"a\.(png|jpg) and .*a\.(png|jpg): both would be"):
        list_inputs([str(tmp_path / "in")])
    with pytest.raises(SegflowError, match="s3://bucket/x: s3:// inputs need segflow's object"):
        list_inputs(["s3://bucket/x"])
    with pytest.raises(SegflowError, match="nothing: no such file, folder or glob match"):
        list_inputs([str(tmp_path / "nothing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegflowError, match="empty: no images"):
        list_inputs([str(tmp_path / "empty")])


def test_done_means_ok_outputs_present_and_the_same_file(tmp_path):
    image = touch(tmp_path / "a.png", b"pixels")
    out = tmp_path / "out"
    label = touch(out / "labels" / "a.png")
    stat = os.stat(image)
    row = {"input": str(image), "labels": "labels/a.png", "overlay": None, "status": "ok",
           "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}  # fmt: skip
    writer = ManifestWriter(out / "manifest.jsonl", {})
    writer.append(row)
    writer.close()
    rows = read_manifest(out / "manifest.jsonl")
    assert is_done(rows[str(image)], out, overlay=False)
    assert not is_done(rows[str(image)], out, overlay=True)  # no overlay written yet
    assert not is_done({**row, "status": "failed"}, out, overlay=False)  # failed: try again
    label.unlink()
    assert not is_done(row, out, overlay=False)  # output gone
    touch(out / "labels" / "a.png")
    image.write_bytes(b"new pixels")
    assert not is_done(row, out, overlay=False)  # the image changed


def test_a_manifest_cut_by_a_kill_keeps_its_whole_rows(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps({"input": "/a.png", "status": "ok"}) + '\n{"input": "/b.p')
    assert list(read_manifest(path)) == ["/a.png"]
