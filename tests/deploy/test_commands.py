"""`segflow predict-many` and `segflow export` as a user runs them, against a real sqlite store.

Each test starts the segflow command (and predict-many a local Ray) as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest

from segflow.deploy.registered import attach_onnx
from segflow.evaluate.serving import load_predictor
from segflow.lifecycle.registration import register_model
from tests.data.helpers import _palette, image_for, tiny_mask, write_rgb
from tests.project import segflow_cli
from tests.train.conftest import NUM_CLASSES, SIZE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registered(trained, tmp_path_factory) -> dict:
    """The trained model as version 1 of segflow-deploy (alias challenger), with its ONNX,
    in a sqlite store of this module (registered once: the export takes seconds)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(root / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    version = register_model(
        run.info.run_id, "deploy", {"miou": 0.5}, 0.5, trained.spec.to_dict(), trained.classes,
        trained.checkpoint, "a" * 64, prefix="segflow",
    )  # fmt: skip
    record = attach_onnx(version, trained.checkpoint, trained.spec.to_dict(), trained.classes)
    yield {"uri": uri, "model": "models:/segflow-deploy@challenger", "onnx": record}
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def scenes(folder: Path, count: int) -> list[Path]:
    """Band scenes like the training data, at twice the training scale."""
    rng = np.random.default_rng(7)
    palette = _palette(NUM_CLASSES)
    paths = []
    for i in range(count):
        path = folder / f"cam{i % 2}" / f"frame_{i:03d}.png"
        write_rgb(path, image_for(rng, tiny_mask(rng, SIZE, list(range(NUM_CLASSES))), palette))
        paths.append(path)
    return paths


def outputs(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``out`` but the manifest, with its modification time and size."""
    return {
        str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in out.rglob("*")
        if p.is_file() and p.name != "manifest.jsonl"
    }


def test_predict_many_records_a_corrupt_image_goes_on_and_a_rerun_writes_nothing_new(
    trained, registered, tmp_path
):
    images = scenes(tmp_path / "images", 19)
    broken = tmp_path / "images" / "cam1" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 20)
    args = ("predict-many", "images", "--model", registered["model"], "--out", "out",
            "--overlay", "--actors", "1")  # fmt: skip

    first = segflow_cli(*args, uri=registered["uri"], cwd=tmp_path)
    assert first.returncode == 3, first.stderr  # some failed
    assert "Traceback" not in first.stderr + first.stdout
    assert f"failed: {broken}: image is not decodable" in first.stdout
    assert "predict-many: 20 images: 19 written, 0 already done, 1 failed in " in first.stdout
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and {r["input"] for r in rows} == {str(p) for p in [*images, broken]}
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["input"] for r in failed] == [str(broken)]
    assert "not decodable" in failed[0]["reason"] and failed[0]["labels"] is None
    served = load_predictor(trained.checkpoint, trained.spec, "cpu")
    for row in rows:
        if row["status"] != "ok":
            continue
        assert row["ms"] > 0 and (row["height"], row["width"]) == SIZE
        labels = cv2.imread(str(out / row["labels"]), cv2.IMREAD_UNCHANGED)
        image = cv2.cvtColor(cv2.imread(row["input"]), cv2.COLOR_BGR2RGB)
        assert np.array_equal(labels, served.labels(image)), row["input"]  # the served path
        assert cv2.imread(str(out / row["overlay"])).shape == (*SIZE, 3)
    assert (out / "labels" / "cam0" / "frame_000.png").is_file()  # keys keep the sub-folders
    before = outputs(out)
    assert len(before) == 38  # 19 label maps + 19 overlays; no model copy left behind

    again = segflow_cli(*args, uri=registered["uri"], cwd=tmp_path)
    assert again.returncode == 3, again.stderr
    assert "20 images: 0 written, 19 already done, 1 failed" in again.stdout
    assert outputs(out) == before  # nothing new, nothing rewritten
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and [r["input"] for r in rows if r["status"] == "failed"] == [
        str(broken)
    ]

    # A label map deleted is done again, the rest stays as it was; with the corrupt file gone,
    # nothing failed this time (its earlier row stays in the manifest, for the record).
    (out / "labels" / "cam0" / "frame_000.png").unlink()
    broken.unlink()
    third = segflow_cli(*args, uri=registered["uri"], cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "19 images: 1 written, 18 already done, 0 failed" in third.stdout
    after = outputs(out)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"labels/cam0/frame_000.png", "overlays/cam0/frame_000.png"}


def test_export_of_a_registered_version_downloads_the_registered_onnx_checked(registered, tmp_path):
    result = segflow_cli(
        "export", registered["model"], "--format", "onnx", "--out", "deploy",
        uri=registered["uri"], cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"export: {registered['model']} -> deploy/model.onnx")
    assert "(the registered ONNX export, sha256 checked)" in result.stdout
    data = (tmp_path / "deploy" / "model.onnx").read_bytes()
    assert hashlib.sha256(data).hexdigest() == registered["onnx"]["sha256"]["onnx"]
    assert json.loads((tmp_path / "deploy" / "export.json").read_text())["format"] == "onnx"


def test_export_of_a_checkpoint_file_and_its_errors_in_one_line(trained, tmp_path):
    serving = trained.serving_file(tmp_path)
    uri = f"sqlite:///{tmp_path / 'unused.db'}"
    ok = segflow_cli(
        "export", str(trained.checkpoint), "--serving", str(serving), "--format", "torchscript",
        "--out", "ts", uri=uri, cwd=tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == (
        f"export: {trained.checkpoint} -> ts/model.torchscript.pt, ts/export.json (torchscript; "
        "single inference at 16x24, no CRF; checked against the served path)\n"
    )
    assert (tmp_path / "ts" / "model.torchscript.pt").is_file()
    assert (tmp_path / "ts" / "export.json").is_file()
    for args, message in (
        (("--format", "tflite"), "error: --format tflite: one of onnx, torchscript\n"),
        (("--serving", "nothing.json"), "error: nothing.json: no serving spec for "),
    ):
        bad = segflow_cli(
            "export", str(trained.checkpoint), "--out", "x", *args, uri=uri, cwd=tmp_path
        )
        assert bad.returncode == 1 and bad.stderr.startswith(message), bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    assert not (tmp_path / "unused.db").exists()  # a checkpoint file needs no tracking store
