"""Decompression bombs: an image is refused by its header, before anything decodes it.

A PNG of 65 bytes can say it is 40000 x 40000 (4.8 GB of RGB); a real 20000 x 20000 PNG of zeros
is 1.2 MB on disk and 1.2 GB decoded. ``dataset.max_pixels`` (default 100 M) bounds what any
stage decodes: ingest reads each header and stops at the first file over it, validate and shard
refuse it again when they read it (the file may have changed since ingest), and
``segflow predict`` applies the same limit to its image before it looks up a model. Every
refusal is one line naming the file and its size; a decoder's own error (``cv2.error``) is one
line naming the file too, never a traceback.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segflow.config import parse_params
from segflow.data.datasets import open_dataset_by_name
from segflow.data.datasets.base import read_label_png, read_rgb
from segflow.data.datasets.voc import read_index_png
from segflow.data.manifest import build_manifest
from segflow.data.sample_stats import sample_stats
from segflow.data.shards import write_shards
from segflow.errors import SegflowError
from tests.data import helpers
from tests.project import CODE_UNDER_TEST, Project, make_project

GIB = 1 << 30


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A valid PNG signature and IHDR (correct CRCs) claiming ``width x height`` RGB, and no data.

    Every reader that trusts the header would allocate ``3 * width * height`` bytes for it.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b""))
        + _chunk(b"IEND", b"")
    )


def png_of_zeros(width: int, height: int) -> bytes:
    """A real, fully decodable black RGB PNG: a few bytes per row on disk, 3 bytes per pixel
    decoded (the 1.2 MB / 1.2 GB kind of file that the issue saw take 10.7 GB at 30000^2)."""
    deflate = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
    )


@pytest.fixture
def bomb(tmp_path) -> Path:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_bomb())
    return path


def _one_line_refusal(call, *expected: str) -> str:
    started = time.perf_counter()
    with pytest.raises(SegflowError) as err:
        call()
    assert time.perf_counter() - started < 1.0, "the header alone should decide"
    message = str(err.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, message
    return message


# -- the readers ----------------------------------------------------------------------------------


def test_the_header_bomb_is_refused_by_every_reader_naming_the_file_and_its_size(bomb):
    assert len(bomb.read_bytes()) < 100
    for read in (read_rgb, read_label_png, read_index_png):
        _one_line_refusal(lambda r=read: r(bomb), str(bomb), "1,600,000,000 pixels", "max_pixels")


def test_an_image_over_max_pixels_is_refused_with_its_width_and_height(tmp_path):
    path = tmp_path / "big.png"
    helpers.write_rgb(path, np.zeros((64, 80, 3), np.uint8))

    _one_line_refusal(lambda: read_rgb(path, max_pixels=1000), str(path), "80x64", "1,000")
    assert read_rgb(path, max_pixels=64 * 80).shape == (64, 80, 3)  # the limit is inclusive


def test_a_file_that_is_not_an_image_is_not_decodable_naming_it(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("not an image")
    _one_line_refusal(lambda: read_rgb(path), str(path), "not decodable")


def test_max_pixels_cannot_exceed_pillows_own_hard_limit():
    hard = 2 * Image.MAX_IMAGE_PIXELS  # Pillow refuses larger images whatever we allow
    assert parse_params({"dataset": {"max_pixels": hard}}).dataset.max_pixels == hard
    with pytest.raises(SegflowError, match="dataset.max_pixels"):
        parse_params({"dataset": {"max_pixels": hard + 1}})


# -- ingest, validate and shard, in the library ------------------------------------------------


@pytest.fixture
def large_images(tmp_path) -> Path:
    """A folder dataset of 64 x 64 images: over a max_pixels of 1000."""
    return helpers.make_folder_dataset(tmp_path / "data", size=(64, 64)).parent


def test_ingest_refuses_an_image_over_max_pixels_before_hashing_it(large_images):
    adapter = open_dataset_by_name("folder", large_images, max_pixels=1000)
    first = next(adapter.samples())

    _one_line_refusal(lambda: build_manifest(adapter), str(first.image), "64x64", "1,000")


def test_validate_records_an_image_over_max_pixels_as_not_decodable_naming_it(large_images):
    manifest = build_manifest(open_dataset_by_name("folder", large_images))
    strict = open_dataset_by_name("folder", large_images, max_pixels=1000)

    stats = sample_stats(manifest, strict)

    for error, path in zip(stats["image_error"], stats["image_path"], strict=True):
        assert path in error and "64x64" in error, error


def test_shard_refuses_an_image_over_max_pixels_and_keeps_no_output(large_images, tmp_path):
    manifest = build_manifest(open_dataset_by_name("folder", large_images))
    strict = open_dataset_by_name("folder", large_images, max_pixels=1000)

    _one_line_refusal(
        lambda: write_shards(manifest, strict, tmp_path / "shards", rows_per_shard=4, workers=1),
        "64x64",
    )
    assert not (tmp_path / "shards").exists()


# -- the stages and the CLI, as a user runs them -----------------------------------------------


#: Runs the stage script given as argv[2] and writes its peak RSS (KiB) to the file argv[1].
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call([sys.executable, sys.argv[2]])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(str(peak))\n"
    "sys.exit(code)\n"
)


def run_measured(project: Project, stage: str) -> tuple[int, str, int]:
    """(exit code, output, peak RSS in bytes) of one stage script, measured for that process.

    Linux starts a child's peak RSS at its parent's when it forks (and keeps it across exec),
    so a stage started straight from a pytest worker that has grown to 1 GiB reports 1 GiB. A
    small launcher process starts the stage and reads its children's peak (only the stage).
    """
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE, str(peak_file), f"pipelines/{stage}.py"],
            cwd=project.root,
            env=project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
        return proc.returncode, proc.stdout.decode(), int(peak_file.read_text()) * 1024


@pytest.fixture
def validated(tmp_path) -> tuple[Project, Path]:
    """A folder-dataset project whose ingest and validate passed."""
    data = tmp_path / "dataset"
    helpers.make_folder_dataset(data, n_train=3, n_val=1, n_test=1)
    project = make_project(tmp_path, dataset={"name": "folder", "root": str(data)})
    for stage in ("ingest", "validate"):
        result = project.stage(stage)
        assert result.returncode == 0, result.stderr
    return project, data


def _one_error_line(code: int, output: str, *expected: str) -> str:
    assert code != 0, output
    assert "Traceback" not in output and "cv2.error" not in output, output
    lines = [line for line in output.splitlines() if line.startswith(("error:", "failed:"))]
    assert len(lines) == 1, output
    for text in expected:
        assert text in lines[0], output
    return lines[0]


@pytest.mark.integration
def test_ingest_refuses_the_header_bomb_in_one_line_and_keeps_the_manifest(validated):
    project, data = validated
    manifest = project.digest("data/manifest.parquet")
    image = data / "images" / "train" / "train_1.png"
    image.write_bytes(png_header_bomb())

    code, output, peak = run_measured(project, "ingest")

    _one_error_line(code, output, str(image), "1,600,000,000 pixels", "dataset.max_pixels")
    assert project.digest("data/manifest.parquet") == manifest
    assert peak < GIB, f"ingest peaked at {peak / GIB:.2f} GiB"


@pytest.mark.integration
def test_validate_refuses_a_real_large_image_by_its_header_without_decoding_it(validated):
    """The file turned into a 1.2 GB-when-decoded PNG after ingest: validate reads the header."""
    project, data = validated
    image = data / "images" / "val" / "val_0.png"
    image.write_bytes(png_of_zeros(20000, 20000))
    project.set_params(dataset={"max_pixels": 1_000_000})

    code, output, peak = run_measured(project, "validate")

    line = _one_error_line(code, output, "image decodable", str(image), "400,000,000 pixels")
    assert "1,000,000" in line
    assert peak < GIB, f"validate peaked at {peak / GIB:.2f} GiB"


@pytest.mark.integration
def test_ingest_refuses_an_image_over_a_small_max_pixels_naming_it(validated):
    project, data = validated
    project.set_params(dataset={"max_pixels": 1000})

    code, output, _ = run_measured(project, "ingest")

    _one_error_line(code, output, str(data / "images" / "train"), "48x32", "1,000")


@pytest.mark.integration
def test_predict_refuses_the_bomb_in_one_line_before_looking_up_any_model(bomb, tmp_path):
    """The model URI names nothing: reaching the registry would fail differently."""
    segflow = Path(sys.executable).parent / "segflow"
    result = subprocess.run(
        [str(segflow), "predict", str(bomb), "--model", "models:/no-such-model@champion"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **CODE_UNDER_TEST},
    )

    assert result.returncode == 1
    output = result.stdout + result.stderr
    _one_error_line(1, output, str(bomb), "1,600,000,000 pixels")
    assert "no-such-model" not in output
    assert not (tmp_path / "mlruns").exists()
