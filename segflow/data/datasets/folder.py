"""A user's own dataset: images and masks in two folders, a class table in YAML.

::

    root/classes.yaml                 classes: [{id: 0, name: road, color: [128, 64, 128]}, ...]
                                      (``dataset.classes_file``; a bare list works too)
    root/images/<split>/<stem>.<ext>  ext: png jpg jpeg bmp tif tiff
    root/masks/<split>/<stem>.png     one label value per pixel

Mask values: each class entry may say which stored value(s) mean it, ``value: 255`` or
``value: [1, 2]``; without ``value`` it is the class id. Binary datasets (ISBI-2012 membranes,
most medical and industrial sets) store 0 and 255, so without this a 0/255 mask would lose its
foreground to "ignore". The values that mean "ignore" are ``ignore: [...]`` beside ``classes:``
(default 255, unless a class claims 255). A stored value that is neither a class's nor ignore is
an error naming it. The mapping is applied when masks are read (validate, shard), so everything
after sees train ids 0..C-1 and 255.

The split rule: when ``images/`` holds sub-directories (hidden ones aside), each one is a
split (``train``, ``val``, ``test`` or any other name) with its masks in ``masks/<split>/``.
Otherwise the images and masks lie flat in ``images/`` and ``masks/``, and
``root/splits/<split>.txt`` lists the stems of each split, one per line; images that no list
names are not used.

Images and masks are matched by file stem. An image without a mask, a mask without an image,
a stem in two splits (a leak between them) or two images with one stem is an error naming
the file. Class ids must be 0..C-1, each once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from segflow.data.datasets.base import (
    IGNORE_INDEX,
    ClassInfo,
    DatasetAdapter,
    SampleRef,
    require_dir,
)
from segflow.errors import SegflowError

LAYOUT = (
    "images/ and masks/ (split sub-directories images/<split>/, or flat with "
    "splits/<split>.txt lists of stems), and a class table (dataset.classes_file, default "
    "<root>/classes.yaml)"
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_EXTENSION = ".png"
SPLIT_ORDER = ("train", "val", "test")
REQUIRED_KEYS = {"id", "name", "color"}
#: The class table's format as README ("Your own dataset") documents it; every error about the
#: table ends with it, so the fix can be written without looking anything up.
CLASS_TABLE_FORMAT = (
    "a YAML mapping `classes:` with a list of {id, name, color: [r, g, b], value} entries "
    "(ids 0..C-1; value: the mask value(s) stored for the class, default its id), and "
    "optionally `ignore: [mask values]` beside it"
)


class ClassTableError(SegflowError):
    """A problem with the class table file: the params key to fix is ``dataset.classes_file``,
    not ``dataset.root`` (the check stage and ``segflow check-params`` name ``field``)."""

    field = "dataset.classes_file"


def read_class_table(
    path: Path, read_text: Callable[[Path], str] = Path.read_text
) -> tuple[list[ClassInfo], tuple[int, ...]]:
    """Parse and check a class table: the classes (ids 0..C-1) and the stored ignore values.

    ``read_text`` reads the file: the adapter's, which refuses a table outside the dataset root.
    """
    if not path.is_file():
        raise ClassTableError(f"{path}: class table not found; expected {CLASS_TABLE_FORMAT}")
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        raise ClassTableError(f"{path}: not valid YAML: {exc}") from None
    ignore = None
    if isinstance(data, dict) and "classes" in data:
        if set(data) - {"classes", "ignore"}:
            extra = ", ".join(sorted(map(str, set(data) - {"classes", "ignore"})))
            raise ClassTableError(f"{path}: unknown key(s) {extra}; expected {CLASS_TABLE_FORMAT}")
        ignore = _mask_values(data.get("ignore", []), f"{path}: ignore")
        data = data["classes"]
    if not isinstance(data, list) or not data:
        raise ClassTableError(f"{path}: no classes; expected {CLASS_TABLE_FORMAT}")
    classes = [_class_entry(entry, f"{path}: entry {n}") for n, entry in enumerate(data)]
    classes.sort(key=lambda c: c.id)
    ids = [c.id for c in classes]
    if ids != list(range(len(classes))):
        raise ClassTableError(
            f"{path}: class ids must be 0..{len(classes) - 1}, each once; got {ids}"
        )
    if len(classes) > 255:
        raise ClassTableError(
            f"{path}: at most 255 classes (255 is the ignore label); got {len(classes)}"
        )
    owner: dict[int, ClassInfo] = {}
    for c in classes:
        for v in c.values:
            if v in owner:
                raise ClassTableError(
                    f"{path}: mask value {v} is given to both {owner[v].name!r} and {c.name!r}"
                )
            owner[v] = c
    if ignore is None:
        ignore = () if IGNORE_INDEX in owner else (IGNORE_INDEX,)
    for v in ignore:
        if v in owner:
            raise ClassTableError(f"{path}: ignore: mask value {v} is also class {owner[v].name!r}")
    return classes, ignore


def _class_entry(entry: object, where: str) -> ClassInfo:
    """One {id, name, color[, value]} entry; ``values`` says which stored values it covers."""
    if not isinstance(entry, dict) or not REQUIRED_KEYS <= set(entry) <= REQUIRED_KEYS | {"value"}:
        raise ClassTableError(
            f"{where}: expected the keys id, name, color (and optionally value); got {entry!r}"
        )
    colour = entry["color"]
    if (
        not isinstance(colour, list | tuple)
        or len(colour) != 3
        or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
    ):
        raise ClassTableError(f"{where}: color must be three integers 0..255; got {colour!r}")
    if not isinstance(entry["id"], int) or isinstance(entry["id"], bool):
        raise ClassTableError(f"{where}: id must be an integer; got {entry['id']!r}")
    values = _mask_values(entry.get("value", entry["id"]), f"{where}: value")
    if not values:
        raise ClassTableError(f"{where}: value must name at least one mask value")
    return ClassInfo(entry["id"], str(entry["name"]), tuple(colour), values)


def _mask_values(raw: object, where: str) -> tuple[int, ...]:
    """One mask value or a list of them, each an integer 0..255 (8-bit masks)."""
    items = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in items):
        raise ClassTableError(f"{where}: mask values are integers 0..255; got {raw!r}")
    return tuple(sorted(set(items)))


def value_lookup(
    classes: list[ClassInfo], ignore: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(lut, known): stored value -> train id (255 for ignore), and which values are defined."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    for c in classes:
        lut[list(c.values)] = c.id
        known[list(c.values)] = True
    known[list(ignore)] = True
    return lut, known


def _split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def _files_by_stem(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """Stem -> file for the files in ``folder`` with one of ``extensions`` (case-insensitive)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        if path.stem in found:
            raise SegflowError(
                f"{path}: stem {path.stem!r} also used by {found[path.stem]}; stems must be unique"
            )
        found[path.stem] = path
    return found


class FolderDataset(DatasetAdapter):
    name = "folder"

    def __init__(
        self,
        root: str | Path | None = None,
        classes_file: str | Path | None = None,
        **rules: Any,
    ) -> None:
        """``classes_file`` (default ``root/classes.yaml``) in a directory inside the root is a
        dataset file and must resolve inside it; one the user keeps elsewhere (configs/) is
        theirs, named in params.yaml, and is read where it is.
        """
        if root is None and classes_file is None:
            raise SegflowError(
                "dataset.root: required for the folder dataset (or dataset.classes_file)"
            )
        super().__init__(
            require_dir(Path(root) if root is not None else Path(classes_file).parent, LAYOUT),
            **rules,
        )
        self.image_dir, self.mask_dir = self.root / "images", self.root / "masks"
        for folder in (self.image_dir, self.mask_dir):
            if not folder.is_dir():
                raise SegflowError(f"{folder}: directory not found; expected {LAYOUT}")
        self.classes_file = (
            Path(classes_file) if classes_file is not None else self.root / "classes.yaml"
        )
        in_dataset = self.classes_file.parent.resolve().is_relative_to(self.root.resolve())
        self._classes, self.ignore_values = read_class_table(
            self.classes_file, self.read_text if in_dataset else Path.read_text
        )
        self.label_lut, self.known_values = value_lookup(self._classes, self.ignore_values)

    def classes(self) -> list[ClassInfo]:
        return list(self._classes)

    def samples(self) -> Iterator[SampleRef]:
        split_dirs = sorted(
            (p.name for p in self.image_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=_split_key,
        )
        pairs = self._from_subfolders(split_dirs) if split_dirs else self._from_split_lists()
        seen: dict[str, Path] = {}
        for split, stem, image, mask in pairs:
            if stem in seen:
                raise SegflowError(
                    f"image {image}: stem {stem!r} is also in another split ({seen[stem]})"
                )
            seen[stem] = image
            yield SampleRef(id=stem, split=split, image=image, mask=mask)

    def _match(self, images: dict[str, Path], masks: dict[str, Path], mask_dir: Path) -> None:
        for stem, image in images.items():
            if stem not in masks:
                raise SegflowError(
                    f"image {image} has no mask: expected {mask_dir / (stem + MASK_EXTENSION)}"
                )

    def _from_subfolders(self, splits: list[str]) -> list[tuple[str, str, Path, Path]]:
        for extra in sorted(
            p
            for p in self.mask_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name not in splits
        ):
            raise SegflowError(
                f"{extra}: masks of split {extra.name!r}, but no {self.image_dir / extra.name}"
            )
        out = []
        for split in splits:
            mask_dir = self.mask_dir / split
            images = _files_by_stem(self.image_dir / split, IMAGE_EXTENSIONS)
            masks = _files_by_stem(mask_dir, (MASK_EXTENSION,)) if mask_dir.is_dir() else {}
            self._match(images, masks, mask_dir)
            for stem, mask in masks.items():
                if stem not in images:
                    raise SegflowError(
                        f"mask {mask} has no image: expected "
                        f"{self.image_dir / split}/{stem}.<png|jpg|...>"
                    )
            out += [(split, stem, images[stem], masks[stem]) for stem in sorted(images)]
        return out

    def _from_split_lists(self) -> list[tuple[str, str, Path, Path]]:
        lists = sorted((self.root / "splits").glob("*.txt"), key=lambda p: _split_key(p.stem))
        if not lists:
            raise SegflowError(
                f"{self.image_dir}: no split sub-directories and no split lists "
                f"{self.root / 'splits'}/<split>.txt; expected {LAYOUT}"
            )
        images = _files_by_stem(self.image_dir, IMAGE_EXTENSIONS)
        masks = _files_by_stem(self.mask_dir, (MASK_EXTENSION,))
        for stem, mask in masks.items():
            if stem not in images:
                raise SegflowError(
                    f"mask {mask} has no image: expected {self.image_dir}/{stem}.<png|jpg|...>"
                )
        out = []
        for listing in lists:
            stems = [line.strip() for line in self.read_text(listing).splitlines() if line.strip()]
            for stem in sorted(set(stems)):
                if stem not in images:
                    raise SegflowError(
                        f"{listing}: lists {stem!r}, but there is no image "
                        f"{self.image_dir}/{stem}.<png|jpg|...>"
                    )
                self._match({stem: images[stem]}, masks, self.mask_dir)
                out.append((listing.stem, stem, images[stem], masks[stem]))
        return out
