"""Which images ``segflow predict-many`` segments, and where each one's outputs go.

An input is a folder (every image under it, recursively), a glob (``'cams/*/2026-*.jpg'``, ``**``
recursive), a text file of paths (``.txt`` or ``.lst``: one path a line, relative to the file's
folder; blank lines and ``#`` comments skipped) or one image file. Each image gets a *key*, its
path relative to the folder, the glob's fixed prefix or the list's folder, without its suffix:
``<out>/labels/<key>.png``. Keys are what make a run resumable, so they depend only on the input
as named, not on what else is in the run; two images with one key (``a.png`` and ``a.jpg``) are
an error naming both, before anything runs.

A path a list names that does not exist is not an error here: it becomes a failed row of the
manifest, like a corrupt image, and the other images are still segmented. ``s3://`` prefixes wait
for segflow's object-storage layer; until then they are refused in one line.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segflow.errors import SegflowError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LIST_SUFFIXES = (".txt", ".lst")


@dataclass(frozen=True)
class Item:
    """One image to segment: its path (absolute) and its output key."""

    path: Path
    key: str


def list_inputs(sources: list[str]) -> list[Item]:
    """The images of every source, in a stable order, with unique keys."""
    items: list[Item] = []
    for source in sources:
        items.extend(_items(source))
    seen: dict[str, Path] = {}
    unique = []
    for item in items:
        if item.key in seen:
            if seen[item.key] == item.path:
                continue  # the same image named twice (a folder and a glob over it)
            raise SegflowError(
                f"{seen[item.key]} and {item.path}: both would be written as {item.key}.png; "
                "rename one or segment them in separate runs (--out)"
            )
        seen[item.key] = item.path
        unique.append(item)
    if not unique:
        raise SegflowError(f"{', '.join(sources)}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return unique


def _items(source: str) -> list[Item]:
    if source.startswith("s3://"):
        raise SegflowError(
            f"{source}: s3:// inputs need segflow's object-storage layer, which does not exist "
            "yet; copy the images to a local or mounted folder"
        )
    if glob.has_magic(source):
        base = _fixed_prefix(source)
        paths = sorted(Path(p) for p in glob.glob(source, recursive=True))
        found = [p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise SegflowError(f"{source}: the pattern matches no image")
        return [Item(p.resolve(), _key(p, base)) for p in found]
    path = Path(source)
    if path.is_dir():
        found = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        return [Item(p.resolve(), _key(p, path)) for p in found]
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _listed(path)
    if path.is_file():
        return [Item(path.resolve(), path.stem)]
    raise SegflowError(f"{source}: no such file, folder or glob match")


def _listed(list_file: Path) -> list[Item]:
    """The paths a list file names; relative ones from the list's folder."""
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SegflowError(f"{list_file}: cannot read the list of images ({exc})") from None
    items = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        named = Path(entry)
        path = named if named.is_absolute() else list_file.parent / named
        # An absolute entry keeps its whole path as key (without the root): still unique.
        key_of = named.relative_to(named.anchor) if named.is_absolute() else named
        items.append(Item(path.resolve(), _clean_key(PurePosixPath(*key_of.parts))))
    return items


def _fixed_prefix(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: keys are relative to it."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _key(path: Path, base: Path) -> str:
    return _clean_key(PurePosixPath(*path.relative_to(base).parts))


def _clean_key(relative: PurePosixPath) -> str:
    """The path without its suffix; ``..`` parts (a list entry above its folder) become
    ``__`` so that no output is written outside ``--out``."""
    parts = ["__" if p == ".." else p for p in relative.with_suffix("").parts]
    return "/".join(parts)
