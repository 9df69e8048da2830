"""One predict-many actor, without Ray: the served path per image, failures as rows."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from segflow.deploy.batch import Segmenter
from segflow.errors import SegflowError
from segflow.evaluate.inference import window_starts
from segflow.evaluate.serving import ServingSpec, load_predictor


def actor(trained, tmp_path, spec: ServingSpec, max_pixels: int = 10**8) -> Segmenter:
    data = trained.checkpoint.read_bytes()
    return Segmenter(
        str(trained.checkpoint), hashlib.sha256(data).hexdigest(), spec.to_dict(),
        trained.classes, str(tmp_path / "out"), True, max_pixels, 1,
    )  # fmt: skip


def test_a_large_image_goes_through_sliding_windows_when_the_spec_says_so(trained, tmp_path):
    """A 1200x1600 photo at its own scale (no training scale in the spec): the network only
    ever sees training-crop windows, and the label map comes back at the photo's size."""
    spec = ServingSpec(mode="sliding", options={"crop": [32, 48], "overlap": 0.0})
    segmenter = actor(trained, tmp_path, spec)
    seen: list[tuple[int, int]] = []
    network = segmenter.predictor.network
    network.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    scene = trained.val_images()[0]
    big = cv2.resize(scene, (1600, 1200), interpolation=cv2.INTER_NEAREST)
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))

    row = segmenter.one(path, "big")

    assert row["status"] == "ok", row["reason"]
    assert (row["height"], row["width"]) == (1200, 1600)
    windows = len(window_starts(1200, 32, 32)) * len(window_starts(1600, 48, 48))
    assert set(seen) == {(32, 48)} and len(seen) == windows
    labels = cv2.imread(str(tmp_path / "out" / row["labels"]), cv2.IMREAD_UNCHANGED)
    expected = load_predictor(trained.checkpoint, spec, "cpu").labels(big)
    assert np.array_equal(labels, expected)


def test_every_failure_of_one_image_is_its_rows_reason(trained, tmp_path):
    segmenter = actor(trained, tmp_path, trained.spec, max_pixels=1000)
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((40, 40, 3), np.uint8))  # 1600 pixels > 1000
    missing = segmenter.one(tmp_path / "missing.png", "missing")
    assert missing["status"] == "failed" and "missing.png: no such file" in missing["reason"]
    too_big = segmenter.one(big, "big")
    assert "more than dataset.max_pixels 1,000; refused before decoding" in too_big["reason"]
    assert not (tmp_path / "out" / "labels").exists()


def test_weights_changed_after_the_driver_checked_them_are_refused(trained, tmp_path):
    copy = tmp_path / "model.pt"
    copy.write_bytes(trained.checkpoint.read_bytes())
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    copy.write_bytes(copy.read_bytes() + b"\0")
    with pytest.raises(SegflowError, match="model.pt: changed since it was checked"):
        Segmenter(str(copy), digest, trained.spec.to_dict(), [], str(tmp_path), False, 10**8, 1)
