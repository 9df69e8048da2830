"""Presets: every file loads through the params schema, and `segflow init` writes one safely."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from segflow.config import Params, load_params
from segflow.presets import PRESETS_DIR, list_presets

REQUIRED = {"camvid-cpu", "camvid-gpu", "cityscapes", "voc", "ade20k", "folder"}


def test_the_published_presets_are_files_in_the_repo():
    assert set(list_presets()) >= REQUIRED


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_each_preset_is_a_complete_params_file_that_loads_through_the_schema(name):
    path = PRESETS_DIR / f"{name}.yaml"
    params = load_params(path)
    raw = yaml.safe_load(path.read_text())
    # Complete: every key of every section is written out, none left to a hidden default.
    for section, fields in Params.model_fields.items():
        if isinstance(raw[section], dict):
            assert set(raw[section]) == set(fields.annotation.model_fields), section
    assert name.split("-")[0] == params.dataset.name
    # Each says where its figures are, or that none were measured yet: never a guessed one.
    figures = [line for line in path.read_text().splitlines() if line.startswith("# Figures:")]
    assert len(figures) == 1
    assert "benchmarks/RESULTS.md" in figures[0] or "not yet measured" in figures[0]


def test_dataset_presets_name_their_dataset_and_gpu_ones_use_the_gpu():
    assert load_params(PRESETS_DIR / "voc.yaml").dataset.voc_train_aug
    assert load_params(PRESETS_DIR / "ade20k.yaml").train.model_options == {"aux_weight": 0.4}
    assert load_params(PRESETS_DIR / "camvid-gpu.yaml").train.use_gpu
    cpu = load_params(PRESETS_DIR / "camvid-cpu.yaml").train
    assert not cpu.use_gpu and cpu.ema_decay > 0 and cpu.bf16 == "auto"


def segflow(*args: str) -> subprocess.CompletedProcess:
    """The `segflow` command as the console script runs it (main() and its error handling)."""
    command = [sys.executable, "-c", "from segflow.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_init_writes_the_preset_and_refuses_to_overwrite_without_force(tmp_path):
    done = segflow("init", "--preset", "camvid-cpu", "--dir", str(tmp_path / "proj"))
    assert done.returncode == 0, done.stderr
    written = tmp_path / "proj" / "params.yaml"
    assert written.read_text() == (PRESETS_DIR / "camvid-cpu.yaml").read_text()

    written.write_text("seed: 7\n")
    refused = segflow("init", "--preset", "voc", "--dir", str(tmp_path / "proj"))
    assert refused.returncode == 1
    assert "already exists; pass --force" in refused.stderr and "Traceback" not in refused.stderr
    assert written.read_text() == "seed: 7\n"  # nothing lost

    forced = segflow("init", "--preset", "voc", "--dir", str(tmp_path / "proj"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_params(written).dataset.name == "voc"


def test_an_unknown_preset_lists_the_known_ones(tmp_path):
    done = segflow("init", "--preset", "kitti", "--dir", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "preset 'kitti' is unknown" in done.stderr
    assert all(name in done.stderr for name in REQUIRED)
    assert not (tmp_path / "params.yaml").exists()


def test_init_with_root_points_dataset_root_at_the_data_and_keeps_the_comments(tmp_path):
    data = tmp_path / "my data" / "camvid"
    data.mkdir(parents=True)
    done = segflow("init", "--preset", "camvid-cpu", "--root", str(data), "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "params.yaml").read_text()
    assert load_params(tmp_path / "params.yaml").dataset.root == str(data.resolve())
    preset = (PRESETS_DIR / "camvid-cpu.yaml").read_text()
    # Only the dataset.root line differs from the committed preset.
    pairs = zip(preset.splitlines(), written.splitlines(), strict=True)
    changed = [(a, b) for a, b in pairs if a != b]
    assert len(changed) == 1 and changed[0][0].strip().startswith("root:")


def test_init_with_a_missing_root_writes_nothing(tmp_path):
    done = segflow(
        "init", "--preset", "camvid-cpu", "--root", str(tmp_path / "nope"), "--dir", str(tmp_path)
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "nope: no such directory" in done.stderr
    assert not (tmp_path / "params.yaml").exists()
