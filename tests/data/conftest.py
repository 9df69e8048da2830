"""Fixtures: tiny datasets on disk in each adapter's layout (see tests/data/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data import helpers
from tests.project import CAMVID


@pytest.fixture
def folder_classes_file(tmp_path: Path) -> Path:
    """classes.yaml of a folder dataset with split sub-directories (4 train, 2 val, 2 test)."""
    return helpers.make_folder_dataset(tmp_path / "folder")


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    return helpers.make_camvid_like(tmp_path / "camvid")


@pytest.fixture
def voc_devkit(tmp_path: Path) -> Path:
    return helpers.make_voc_like(tmp_path)


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    return helpers.make_cityscapes_like(tmp_path / "cityscapes")


@pytest.fixture
def ade20k_dir(tmp_path: Path) -> Path:
    return helpers.make_ade20k_like(tmp_path)


@pytest.fixture
def camvid_shared() -> Path:
    """The shared CamVid copy, read in place; tests that need it skip where it is absent."""
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"shared CamVid copy not found at {CAMVID}")
    return CAMVID
