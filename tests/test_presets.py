"""Presets: small overlays on one commented base; `segflow init` writes one complete file."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from segflow import presets
from segflow.config import Params, load_params, parse_params
from segflow.errors import SegflowError
from segflow.presets import PRESETS_DIR, apply_overlay, list_presets, preset_text, write_preset

REQUIRED = {"camvid-cpu", "camvid-gpu", "cityscapes", "voc", "ade20k", "folder"}
PRESETS = list_presets()  # a preset added later is checked like the published ones
BASE = PRESETS_DIR / "base.yaml"


def written(name: str) -> Params:
    """The params a `segflow init --preset name` file loads to."""
    return parse_params(yaml.safe_load(preset_text(name)), source=name)


def assert_every_schema_key(raw: dict) -> None:
    """Complete: every key of every section is written out, none left to a hidden default."""
    assert set(raw) == set(Params.model_fields)
    for section, fields in Params.model_fields.items():
        if isinstance(raw[section], dict):
            assert set(raw[section]) == set(fields.annotation.model_fields), section


def test_the_published_presets_are_files_in_the_repo_and_the_base_is_not_one():
    assert set(list_presets()) >= REQUIRED
    assert "base" not in list_presets()


def test_the_base_holds_every_params_key_and_loads_through_the_schema():
    assert_every_schema_key(yaml.safe_load(BASE.read_text()))
    load_params(BASE)


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_writes_a_complete_params_file_that_loads_through_the_schema(name):
    text = preset_text(name)
    assert_every_schema_key(yaml.safe_load(text))
    written(name)  # raises unless the file loads through the params schema
    assert f"`segflow init --preset {name}`" in text
    # Each says where its figures are, or that none were measured yet: never a guessed one.
    figures = [line for line in text.splitlines() if line.startswith("# Figures:")]
    assert len(figures) == 1
    assert "benchmarks/RESULTS.md" in figures[0] or "not yet measured" in figures[0]


@pytest.mark.parametrize("name", PRESETS)
def test_an_overlay_holds_only_keys_whose_values_differ_from_the_base(name):
    base = yaml.safe_load(BASE.read_text())
    overlay = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())
    for section, fields in overlay.items():
        changed = fields.items() if isinstance(fields, dict) else [(None, fields)]
        for key, value in changed:
            in_base = base[section] if key is None else base[section][key]
            assert value != in_base, f"{name}.yaml repeats the base's {section}.{key}"


@pytest.mark.parametrize("name", PRESETS)
def test_the_written_file_is_the_base_with_the_overlays_comments_and_values(name):
    overlay_text = (PRESETS_DIR / f"{name}.yaml").read_text()
    text = preset_text(name)
    # The overlay's opening comment opens the file; every comment of the overlay is in it, in order.
    header = overlay_text.split("\n\n")[0]
    assert text.startswith(header + "\n\n")
    comments = [line.strip() for line in overlay_text.splitlines() if line.lstrip().startswith("#")]
    remaining = iter(line.strip() for line in text.splitlines())
    assert all(comment in remaining for comment in comments)
    # A section the overlay leaves alone is the base's text, comments included.
    overlay = yaml.safe_load(overlay_text)
    for block in BASE.read_text().split("\n\n")[1:]:
        if block.split(":")[0] not in overlay:
            assert block in text


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_init_writes_the_preset_and_refuses_to_overwrite_without_force(tmp_path):
    done = segflow("init", "--preset", "camvid-cpu", "--dir", str(tmp_path / "proj"))
    assert done.returncode == 0, done.stderr
    params_file = tmp_path / "proj" / "params.yaml"
    assert params_file.read_text() == preset_text("camvid-cpu")

    params_file.write_text("seed: 7\n")
    refused = segflow("init", "--preset", "voc", "--dir", str(tmp_path / "proj"))
    assert refused.returncode == 1
    assert "already exists; pass --force" in refused.stderr and "Traceback" not in refused.stderr
    assert params_file.read_text() == "seed: 7\n"  # nothing lost

    forced = segflow("init", "--preset", "voc", "--dir", str(tmp_path / "proj"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_params(params_file) == written("voc")


def test_dataset_presets_name_their_dataset_and_gpu_ones_use_the_gpu():
    assert all(name.split("-")[0] == written(name).dataset.name for name in REQUIRED)
    assert written("voc").dataset.voc_train_aug
    assert written("ade20k").train.model_options == {"aux_weight": 0.4}  # replaced, not merged
    assert written("camvid-gpu").train.use_gpu
    cpu = written("camvid-cpu").train
    assert not cpu.use_gpu and cpu.ema_decay > 0 and cpu.bf16 == "auto"


def segflow(*args: str) -> subprocess.CompletedProcess:
    """The `segflow` command as the console script runs it (main() and its error handling)."""
    command = [sys.executable, "-c", "from segflow.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_an_unknown_preset_lists_the_known_ones(tmp_path):
    done = segflow("init", "--preset", "kitti", "--dir", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "preset 'kitti' is unknown" in done.stderr
    assert all(name in done.stderr for name in REQUIRED)
    assert not (tmp_path / "params.yaml").exists()
    with pytest.raises(SegflowError, match="preset 'base' is unknown"):
        preset_text("base")


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_init_with_root_points_dataset_root_at_the_data_and_keeps_the_comments(tmp_path):
    data = tmp_path / "my data" / "camvid"
    data.mkdir(parents=True)
    done = segflow("init", "--preset", "camvid-cpu", "--root", str(data), "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "params.yaml").read_text()
    assert load_params(tmp_path / "params.yaml").dataset.root == str(data.resolve())
    # Only the dataset.root line differs from the preset as written without --root.
    pairs = zip(preset_text("camvid-cpu").splitlines(), text.splitlines(), strict=True)
    changed = [(a, b) for a, b in pairs if a != b]
    assert len(changed) == 1 and changed[0][0].strip().startswith("root:")


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_init_with_a_missing_root_writes_nothing(tmp_path):
    done = segflow(
        "init", "--preset", "camvid-cpu", "--root", str(tmp_path / "nope"), "--dir", str(tmp_path)
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "nope: no such directory" in done.stderr
    assert not (tmp_path / "params.yaml").exists()


BASE_TEXT = """\
# the base's opening comment

seed: 0

train:
  # what lr is
  lr: 0.01
  # what the model options are
  model_options:
    aspp_channels: 64
  epochs: 8   # an end-of-line comment
  note: ""
"""


def test_an_overlay_replaces_its_keys_lines_and_comments_and_leaves_every_other_line():
    overlay = """\
# preset x: what it is for

train:
  # why 0.05: measured
  lr: 0.05
  model_options: {aux_weight: 0.4}
"""
    expected = """\
# preset x: what it is for

seed: 0

train:
  # why 0.05: measured
  lr: 0.05
  # what the model options are
  model_options: {aux_weight: 0.4}
  epochs: 8   # an end-of-line comment
  note: ""
"""
    assert apply_overlay(BASE_TEXT, overlay, "base.yaml", "x.yaml") == expected


@pytest.mark.parametrize(
    ("overlay", "names"),
    [
        ("# x\n\ntrain:\n  learning_rate: 0.1\n", "train.learning_rate: not a key of base.yaml"),
        ("# x\n\ntrainer:\n  lr: 0.1\n", "trainer: not a key of base.yaml"),
        ("# x\n\nseed:\n  lr: 0.1\n", "seed: is a single key in base.yaml"),
        ("# x\n\ntrain: 0.1\n", "train: is a section in base.yaml"),
        ("# x\n\ntrain:\n\nseed: 1\n", "train: a section with no keys under it"),
        ("# x\n\ntrain:\n  lr: 0.1\n  lr: 0.2\n", "line 5: train.lr appears twice"),
        ("# x\n\ntrain:\n    lr: 0.1\n  epochs: 9\n", "line 5: train.epochs is not indented"),
        ("# x\n\ntrain:\n  # why\n\n  lr: 0.1\n", "line 4: a comment must sit directly above"),
        ("# x\ntrain:\n  lr: 0.1\n", "no opening comment"),
        ("# x\n\ntrain:\n  lr: [0.1\n", "not valid YAML at line"),
        # A block scalar's `#` line is text, which the line splice would take for a comment.
        ("# x\n\ntrain:\n  note: |\n    # text\n  lr: 0.2\n", "do not merge into base.yaml"),
    ],
)
def test_a_bad_overlay_is_a_one_line_error_naming_its_file_and_key(overlay, names):
    with pytest.raises(SegflowError) as raised:
        apply_overlay(BASE_TEXT, overlay, "base.yaml", "x.yaml")
    message = str(raised.value)
    assert message.startswith("x.yaml: ") and names in message and "\n" not in message


def test_init_of_a_preset_with_a_key_the_base_lacks_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "PRESETS_DIR", tmp_path)
    shutil.copy(BASE, tmp_path / "base.yaml")
    (tmp_path / "typo.yaml").write_text("# typo: lr misspelt\n\ntrain:\n  learning_rate: 0.1\n")
    with pytest.raises(SegflowError) as raised:
        write_preset("typo", tmp_path / "proj")
    assert str(raised.value) == (
        f"{tmp_path / 'typo.yaml'}: train.learning_rate: not a key of {tmp_path / 'base.yaml'}"
    )
    assert not (tmp_path / "proj" / "params.yaml").exists()
