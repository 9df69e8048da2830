"""Synthetic street scenes: deterministic bytes, every class in train, the layout ingest reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segflow.config import SyntheticParams
from segflow.data.datasets.base import read_label_png, read_rgb
from segflow.data.datasets.synthetic import SyntheticDataset
from segflow.data.synthetic import CLASSES, generate_dataset, generate_sample
from segflow.errors import SegflowError

H, W = 48, 64


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def make(out_dir: Path, seed: int = 0, num_train: int = 6, num_val: int = 2, num_test: int = 2):
    ds = SyntheticDataset(out_dir, num_train, num_val, num_test, H, W, seed)
    ds.prepare()
    return ds


def test_the_same_seed_writes_byte_identical_pngs(tmp_path):
    make(tmp_path / "a", seed=3)
    make(tmp_path / "b", seed=3)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(a) == 2 * (6 + 2 + 2)
    assert a == b


def test_another_seed_draws_other_scenes(tmp_path):
    a = files(make(tmp_path / "a", seed=0).out_dir)
    b = files(make(tmp_path / "b", seed=1).out_dir)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.startswith("images/"))


def test_every_class_appears_in_every_training_image(tmp_path):
    ds = make(tmp_path / "s", num_train=12)
    present = set()
    for ref in ds.samples():
        mask = ds.read_mask(ref.mask)
        assert mask.shape == (H, W) and mask.max() < len(CLASSES)
        if ref.split == "train":
            assert set(np.unique(mask)) == set(range(len(CLASSES))), ref.id
            present |= set(np.unique(mask).tolist())
    assert present == {c.id for c in ds.classes()}
    assert {"sky", "building", "road", "pavement", "pole", "car", "person", "tree"} == {
        c.name for c in ds.classes()
    }


def test_prepare_writes_the_ingest_layout_and_nothing_outside_out_dir(tmp_path):
    ds = make(tmp_path / "out", num_train=2, num_val=1, num_test=1)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    refs = list(ds.samples())
    assert [(r.split, r.id) for r in refs] == [
        ("train", "train_0000"),
        ("train", "train_0001"),
        ("val", "val_0000"),
        ("test", "test_0000"),
    ]
    for r in refs:
        assert r.image == tmp_path / "out" / "images" / r.split / f"{r.id}.png"
        assert r.mask == tmp_path / "out" / "masks" / r.split / f"{r.id}.png"
        assert read_rgb(r.image).shape == (H, W, 3)
        assert read_label_png(r.mask).shape == (H, W)
    assert len(files(tmp_path / "out")) == 8


def test_val_and_test_scenes_do_not_depend_on_the_number_of_train_scenes(tmp_path):
    small = files(make(tmp_path / "a", num_train=2).out_dir)
    large = files(make(tmp_path / "b", num_train=7).out_dir)
    for key in small:
        assert small[key] == large[key]


def test_a_smaller_count_leaves_no_stale_scenes_behind(tmp_path):
    make(tmp_path / "s", num_train=5)
    make(tmp_path / "s", num_train=2)
    assert sorted(p.name for p in (tmp_path / "s" / "images" / "train").iterdir()) == [
        "train_0000.png",
        "train_0001.png",
    ]


def test_generate_dataset_writes_what_the_synthetic_params_describe(tmp_path):
    params = SyntheticParams(num_train=3, num_val=2, num_test=1, height=32, width=40, seed=5)
    assert generate_dataset(tmp_path / "d", params) == 6
    ds = SyntheticDataset(tmp_path / "d", 3, 2, 1, 32, 40, 5)
    assert all(read_rgb(r.image).shape == (32, 40, 3) for r in ds.samples())
    same = SyntheticDataset(tmp_path / "e", 3, 2, 1, 32, 40, 5)
    same.prepare()
    assert files(tmp_path / "d") == files(tmp_path / "e")


def test_listing_samples_before_generation_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(SegflowError, match=r"train_0000\.png: synthetic sample not generated"):
        list(SyntheticDataset(tmp_path / "none", 1, 1, 1, H, W, 0).samples())


def test_images_are_not_separable_by_colour_alone(tmp_path):
    """A nearest-mean-colour classifier must stay well short of solving the task."""
    images, masks = zip(*(generate_sample(0, "train", i, H, W) for i in range(8)), strict=True)
    pixels = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.float32)
    labels = np.concatenate([m.ravel() for m in masks])
    means = np.stack([pixels[labels == c].mean(0) for c in range(len(CLASSES))])
    guess = np.argmin(((pixels[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (guess == labels).mean() < 0.8


@pytest.mark.parametrize("dataset", ["folder", "camvid"])
def test_the_synthesize_stage_draws_nothing_for_another_dataset(tmp_path, monkeypatch, dataset):
    """Only `dataset.name: synthetic` reads data/synthetic/: for any other the stage leaves it
    empty (DVC needs the declared out), replacing the scenes of an earlier synthetic run."""
    from segflow.config import Params
    from segflow.stages import synthesize

    monkeypatch.chdir(tmp_path)
    small = {"num_train": 2, "num_val": 1, "num_test": 1, "height": H, "width": W}
    synthesize.main(Params.model_validate({"synthetic": small}))
    assert len([p for p in Path("data/synthetic").rglob("*") if p.is_file()]) > 0
    other = Params.model_validate({"dataset": {"name": dataset}, "synthetic": small})
    synthesize.main(other)
    assert list(Path("data/synthetic").iterdir()) == []
