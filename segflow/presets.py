"""Presets: complete, commented params.yaml files for published settings (configs/presets/).

A preset is a file, not code: ``segflow init --preset NAME --root DIR`` copies it to
``DIR/params.yaml`` after checking that it loads through the params schema, so what the user
gets is what the file in the repository says, comments included. Nothing is merged or
inherited (mmsegmentation's config chains are what this avoids): one file, every key.
"""

from __future__ import annotations

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


def write_preset(name: str, root: str | Path, force: bool = False) -> Path:
    """Write preset ``name`` to ``root/params.yaml``; an existing file needs ``force``."""
    text = preset_text(name)
    out = Path(root) / "params.yaml"
    if out.exists() and not force:
        raise SegflowError(f"{out}: already exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out
