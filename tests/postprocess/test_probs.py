from __future__ import annotations

import numpy as np
import pytest

from segflow.errors import SegflowError
from segflow.postprocess.probs import EPS, list_ids, load_probs, save_probs


def random_softmax(rng: np.random.Generator, shape=(11, 24, 32), scale=4.0) -> np.ndarray:
    logits = rng.normal(0.0, scale, shape)
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


def sample(rng: np.random.Generator, probs: np.ndarray):
    h, w = probs.shape[1:]
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, probs.shape[0], (h, w)).astype(np.uint8)
    label[0, :5] = 255
    return image, label


def test_uint8_round_trip_keeps_image_label_and_probs_within_the_quantisation_bound(tmp_path):
    rng = np.random.default_rng(0)
    probs = random_softmax(rng)
    image, label = sample(rng, probs)
    save_probs(tmp_path, "a", image, label, probs)
    rec = load_probs(tmp_path, "a")
    assert np.array_equal(rec.image, image) and np.array_equal(rec.label, label)
    assert rec.probs.dtype == np.float32 and rec.probs.shape == probs.shape
    np.testing.assert_allclose(rec.probs.sum(axis=0), 1.0, atol=1e-5)
    assert rec.probs.min() >= EPS * 0.9
    # Each stored value is within 0.5/255 of p; renormalising by a sum within C*(0.5/255+eps)
    # of 1 adds at most that relative error: |p' - p| <= (C + 1) * (0.5/255 + eps) / (1 - C*..).
    c = probs.shape[0]
    delta = 0.5 / 255 + EPS
    bound = (c + 1) * delta / (1 - c * delta)
    err = np.abs(rec.probs - probs).max()
    assert err <= bound
    assert err > 1e-4  # it really was quantised (not stored as float)


def test_uint8_keeps_the_argmax_unless_the_top_two_are_within_one_step(tmp_path):
    rng = np.random.default_rng(1)
    probs = random_softmax(rng, scale=1.0)  # soft: many close calls
    image, label = sample(rng, probs)
    save_probs(tmp_path, "a", image, label, probs)
    restored = load_probs(tmp_path, "a").probs
    top2 = np.sort(probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1.0 / 255
    same = restored.argmax(axis=0) == probs.argmax(axis=0)
    assert clear.mean() > 0.9
    assert same[clear].all()


def test_float16_is_closer_than_uint8_and_files_are_small(tmp_path):
    rng = np.random.default_rng(2)
    probs = random_softmax(rng)
    image, label = sample(rng, probs)
    p8 = save_probs(tmp_path / "u8", "a", image, label, probs, dtype="uint8")
    p16 = save_probs(tmp_path / "f16", "a", image, label, probs, dtype="float16")
    err8 = np.abs(load_probs(p8).probs - probs).max()
    err16 = np.abs(load_probs(p16).probs - probs).max()
    assert err16 < 2e-3 and err16 < err8
    assert p8.stat().st_size < probs.nbytes / 4  # float32 would be probs.nbytes


def test_list_ids_is_sorted_and_ignores_other_files(tmp_path):
    rng = np.random.default_rng(3)
    probs = random_softmax(rng, shape=(3, 4, 5))
    image, label = sample(rng, probs)
    for sid in ("b_2", "a-1", "c.3"):
        save_probs(tmp_path, sid, image, label, probs)
    (tmp_path / "notes.txt").write_text("x")
    assert list_ids(tmp_path) == ["a-1", "b_2", "c.3"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"sample_id": "../x"}, "sample id"),
        ({"dtype": "int4"}, "dtype"),
        ({"label": np.zeros((3, 3), np.uint8)}, "label"),
        ({"probs": np.zeros((3, 4, 4), np.float32)}, "probs"),
        ({"image": np.zeros((4, 5), np.uint8)}, "image"),
    ],
)
def test_save_rejects_bad_ids_dtypes_and_shapes(tmp_path, change, match):
    args = {
        "sample_id": "ok",
        "image": np.zeros((4, 5, 3), np.uint8),
        "label": np.zeros((4, 5), np.uint8),
        "probs": np.full((3, 4, 5), 1 / 3, np.float32),
    }
    args.update(change)
    with pytest.raises(SegflowError, match=match):
        save_probs(tmp_path, args["sample_id"], args["image"], args["label"], args["probs"],
                   dtype=change.get("dtype", "uint8"))  # fmt: skip
    assert list_ids(tmp_path) == []


def test_missing_file_or_directory_names_the_path(tmp_path):
    with pytest.raises(SegflowError, match="nope.npz"):
        load_probs(tmp_path, "nope")
    with pytest.raises(SegflowError, match="missing"):
        list_ids(tmp_path / "missing")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SegflowError, match="bad.npz"):
        load_probs(tmp_path, "bad")
