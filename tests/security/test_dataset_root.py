"""The dataset root is a boundary: no dataset file may lead out of it, unless the user says so.

A dataset is untrusted input. A symlink named like an image that points at a secret (the issue
saw /etc/shadow) used to be read, hashed into the manifest and named in the validation report.
Now every image, mask, class table and split list that resolves outside ``dataset.root`` stops
ingest in one line naming the link and its target, before a byte of the target is read, for
every adapter; ``dataset.follow_symlinks_outside_root: true`` lets a root of links into a shared
store through. Links that stay inside the root were always fine and still are.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from segflow.data.datasets import open_dataset_by_name
from segflow.data.manifest import build_manifest
from segflow.errors import SegflowError
from tests.data import helpers
from tests.project import Project, make_project

#: What a secret outside the root holds; none of it, nor its hash, may appear in any output.
SECRET = b"root:$6$s3cr3t-hash-that-must-not-leak:19000:0:99999:7:::\n"
SECRET_SHA = hashlib.sha256(SECRET).hexdigest()

#: Each adapter's tiny dataset: a maker writing under a directory, returning the dataset root.
MAKERS = {
    "camvid": lambda d: helpers.make_camvid_like(d / "camvid"),
    "voc": lambda d: helpers.make_voc_like(d),
    "cityscapes": lambda d: helpers.make_cityscapes_like(d / "cityscapes"),
    "ade20k": lambda d: helpers.make_ade20k_like(d),
    "folder": lambda d: helpers.make_folder_dataset(d / "folder").parent,
}


def _secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    secret = outside / "shadow"
    secret.write_bytes(SECRET)
    return secret


def _link(path: Path, target: Path) -> None:
    """Replace dataset file ``path`` by a symlink to ``target``."""
    path.unlink()
    path.symlink_to(target)


def _refusal(call) -> str:
    with pytest.raises(SegflowError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    assert SECRET.decode().strip() not in message and SECRET_SHA not in message
    return message


# -- every adapter, images and masks --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("which", ["image", "mask"])
def test_an_image_or_mask_linked_outside_the_root_stops_ingest_naming_link_and_target(
    tmp_path, name, which
):
    root = MAKERS[name](tmp_path / "data")
    first = next(open_dataset_by_name(name, root).samples())
    link = first.image if which == "image" else first.mask
    secret = _secret(tmp_path)
    _link(link, secret)

    message = _refusal(lambda: build_manifest(open_dataset_by_name(name, root)))

    assert str(link) in message and str(secret) in message
    assert "outside the dataset root" in message
    assert "dataset.follow_symlinks_outside_root" in message


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_with_the_opt_in_a_file_outside_the_root_is_read(tmp_path, name):
    root = MAKERS[name](tmp_path / "data")
    first = next(open_dataset_by_name(name, root).samples())
    store = tmp_path / "store"
    store.mkdir()
    kept = store / first.image.name
    shutil.copy(first.image, kept)
    _link(first.image, kept)

    adapter = open_dataset_by_name(name, root, follow_symlinks_outside_root=True)
    frame = build_manifest(adapter).frame

    row = frame[frame["id"] == first.id].iloc[0]
    assert row["image_path"] == str(kept.resolve())
    assert row["image_sha256"] == hashlib.sha256(kept.read_bytes()).hexdigest()


def test_a_symlink_that_stays_inside_the_root_is_accepted(tmp_path):
    root = MAKERS["folder"](tmp_path / "data")
    first = next(open_dataset_by_name("folder", root).samples())
    inside = root / "store" / first.image.name
    inside.parent.mkdir()
    shutil.copy(first.image, inside)
    _link(first.image, inside)

    frame = build_manifest(open_dataset_by_name("folder", root)).frame

    assert frame[frame["id"] == first.id].iloc[0]["image_path"] == str(inside.resolve())


def test_a_directory_linked_outside_the_root_is_refused_at_its_first_file(tmp_path):
    root = MAKERS["folder"](tmp_path / "data")
    outside = tmp_path / "outside_images"
    shutil.move(root / "images" / "val", outside)
    (root / "images" / "val").symlink_to(outside, target_is_directory=True)

    message = _refusal(lambda: build_manifest(open_dataset_by_name("folder", root)))

    assert str(root / "images" / "val") in message and str(outside) in message


def test_a_root_that_is_itself_a_symlink_bounds_the_files_by_its_target(tmp_path):
    real = MAKERS["folder"](tmp_path / "data")
    root = tmp_path / "current"
    root.symlink_to(real, target_is_directory=True)

    frame = build_manifest(open_dataset_by_name("folder", root)).frame

    assert len(frame) == 8 and all(p.startswith(str(real.resolve())) for p in frame["image_path"])


# -- class tables and split lists ---------------------------------------------------------------


def test_a_class_table_linked_outside_the_root_is_refused_before_it_is_parsed(tmp_path):
    root = MAKERS["folder"](tmp_path / "data")
    secret = _secret(tmp_path)
    _link(root / "classes.yaml", secret)

    for classes_file in (None, root / "classes.yaml"):  # the default, and named in params.yaml
        message = _refusal(
            lambda cf=classes_file: open_dataset_by_name("folder", root, classes_file=cf)
        )
        assert str(root / "classes.yaml") in message and str(secret) in message


def test_a_class_table_the_user_keeps_outside_the_root_is_theirs_and_is_read(tmp_path):
    root = MAKERS["folder"](tmp_path / "data")
    configs = tmp_path / "configs"
    configs.mkdir()
    own = shutil.move(root / "classes.yaml", configs / "classes.yaml")

    adapter = open_dataset_by_name("folder", root, classes_file=own)

    assert len(adapter.classes()) == 3


def test_a_split_list_linked_outside_the_root_is_refused(tmp_path):
    secret = _secret(tmp_path)
    lists = {
        "camvid": lambda root: root / "train.txt",
        "voc": lambda root: root / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt",
        "folder": lambda root: root / "splits" / "train.txt",
    }
    roots = {
        "camvid": MAKERS["camvid"](tmp_path / "c"),
        "voc": MAKERS["voc"](tmp_path / "v"),
        "folder": helpers.make_folder_dataset(tmp_path / "f", split_lists=True).parent,
    }
    for name, listing in lists.items():
        link = listing(roots[name])
        _link(link, secret)

        message = _refusal(lambda n=name: list(open_dataset_by_name(n, roots[n]).samples()))

        assert str(link) in message and str(secret) in message, name


# -- the ingest stage, as a user runs it ----------------------------------------------------------


@pytest.fixture
def ingested(tmp_path) -> tuple[Project, Path]:
    """A folder-dataset project whose first ingest succeeded, one image an in-root symlink."""
    data = tmp_path / "dataset"
    helpers.make_folder_dataset(data, n_train=3, n_val=1, n_test=1)
    image = data / "images" / "train" / "train_0.png"
    inside = data / "store" / "train_0.png"
    inside.parent.mkdir()
    shutil.move(image, inside)
    image.symlink_to(inside)
    project = make_project(tmp_path, dataset={"name": "folder", "root": str(data)})
    result = project.stage("ingest")
    assert result.returncode == 0, result.stderr
    return project, data


def _manifest(project: Project) -> pd.DataFrame:
    return pd.read_parquet(project.root / "data" / "manifest.parquet")


@pytest.mark.integration
def test_ingest_records_a_symlink_inside_the_root_at_its_target(ingested):
    project, data = ingested
    row = _manifest(project).set_index("id").loc["train_0"]
    assert row["image_path"] == str((data / "store" / "train_0.png").resolve())


@pytest.mark.integration
def test_ingest_refuses_a_link_out_of_the_root_in_one_line_and_leaks_nothing(ingested, tmp_path):
    project, data = ingested
    manifest = project.digest("data/manifest.parquet")
    link = data / "images" / "val" / "val_0.png"
    secret = _secret(tmp_path)
    _link(link, secret)

    result = project.stage("ingest")

    assert result.returncode != 0
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert str(link) in errors[0] and str(secret) in errors[0]
    assert project.digest("data/manifest.parquet") == manifest
    for path in (p for p in project.root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        assert SECRET.strip() not in content and SECRET_SHA.encode() not in content, path
    assert SECRET.decode().strip() not in output and SECRET_SHA not in output


@pytest.mark.integration
def test_ingest_with_the_opt_in_reads_a_file_outside_the_root(ingested, tmp_path):
    project, data = ingested
    image = data / "images" / "val" / "val_0.png"
    kept = tmp_path / "store" / "val_0.png"
    kept.parent.mkdir()
    shutil.move(image, kept)
    image.symlink_to(kept)
    project.set_params(dataset={"follow_symlinks_outside_root": True})

    result = project.stage("ingest")

    assert result.returncode == 0, result.stderr
    row = _manifest(project).set_index("id").loc["val_0"]
    assert row["image_path"] == str(kept.resolve())
