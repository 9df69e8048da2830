"""Presets: complete, commented params.yaml files for published settings (configs/presets/).

A preset is a file, not code: ``segflow init --preset NAME --root DATA`` copies it to
``./params.yaml`` (``--dir`` for another project directory) with ``dataset.root`` set to
``DATA``, after checking that the result loads through the params schema, so what the user
gets is what the file in the repository says, comments included. Nothing is merged or
inherited (mmsegmentation's config chains are what this avoids): one file, every key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from segflow.config import parse_params
from segflow.errors import SegflowError
from segflow.io import atomic_path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "configs" / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_text(name: str) -> str:
    """The preset's file text, validated; an unknown name lists the known ones."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_presets()) or f"none (no {PRESETS_DIR})"
        raise SegflowError(f"preset {name!r} is unknown; known presets: {known}")
    text = path.read_text()
    parse_params(yaml.safe_load(text), source=str(path))
    return text


# The ``root:`` line of the ``dataset:`` section (the first indented ``root:`` after it).
_DATASET_ROOT = re.compile(r"(^dataset:\n(?:(?:[ \t]+.*|[ \t]*)\n)*?[ \t]+root:)[^\n]*", re.M)


def with_dataset_root(text: str, root: str | Path) -> str:
    """``text`` with its ``dataset.root`` value replaced by ``root`` (comments kept)."""
    # A JSON string is a YAML string: quoted, so any path reads back unchanged.
    value = json.dumps(str(root))
    new, count = _DATASET_ROOT.subn(lambda m: f"{m.group(1)} {value}", text, count=1)
    if count != 1:
        raise SegflowError("preset has no dataset.root line to set")
    return new


def write_preset(
    name: str,
    project_dir: str | Path = ".",
    force: bool = False,
    dataset_root: str | Path | None = None,
) -> Path:
    """Write preset ``name`` to ``project_dir/params.yaml``; an existing file needs ``force``.

    ``dataset_root`` (made absolute, so the stages find it whatever their working directory)
    replaces the preset's placeholder ``dataset.root``.
    """
    text = preset_text(name)
    if dataset_root is not None:
        text = with_dataset_root(text, Path(dataset_root).expanduser().resolve())
        parse_params(yaml.safe_load(text), source=f"preset {name}")
    out = Path(project_dir) / "params.yaml"
    if out.exists() and not force:
        raise SegflowError(f"{out}: already exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out
