"""What every dataset adapter provides.

An adapter turns one on-disk layout into two things: a list of :class:`SampleRef` (id, split,
image path, mask path) and a class table. It also knows how to read its own masks into *train
ids* (0..C-1, with :data:`IGNORE_INDEX` for everything that is not scored), because the raw
encodings differ: CamVid stores 11 for "Unlabelled", Cityscapes stores 34 label ids, VOC stores
palette indices, ADE20K stores 0 for "other". A user's ``folder`` dataset says in its class table
which stored value is which class (binary masks are often 0/255). Everything downstream of
ingest sees train ids only.

A dataset on disk is untrusted input, and the base class holds the two rules every adapter
reads under: no file may resolve outside the dataset root (:meth:`DatasetAdapter.inside_root`,
unless ``dataset.follow_symlinks_outside_root``), and no image is decoded before its header says
it has at most ``dataset.max_pixels`` pixels (:mod:`segflow.data.images`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segflow.data.images import DEFAULT_MAX_PIXELS, checked_bytes, one_line
from segflow.errors import SegflowError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassInfo:
    """One row of a class table: train id, name and the RGB colour used to draw it.

    ``values`` are the mask values stored on disk for this class, for user datasets whose class
    table says so; empty when the adapter's own mapping applies (the built-in datasets).
    """

    id: int
    name: str
    color: tuple[int, int, int]
    values: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        d = {"id": self.id, "name": self.name, "color": list(self.color)}
        return {**d, "values": list(self.values)} if self.values else d

    @staticmethod
    def from_dict(d: dict) -> ClassInfo:
        return ClassInfo(
            int(d["id"]),
            str(d["name"]),
            tuple(int(c) for c in d["color"]),
            tuple(int(v) for v in d.get("values", ())),
        )


@dataclass(frozen=True)
class SampleRef:
    """One labelled sample on disk; ``id`` is unique across all splits of a dataset."""

    id: str
    split: str
    image: Path
    mask: Path


class DatasetAdapter:
    """Base class of the adapters: subclasses set ``name`` and implement ``classes``/``samples``.

    ``read_image`` and ``read_mask`` have defaults that suit PNG/JPEG files with one label per
    pixel; adapters whose masks need a mapping override ``label_lut`` or ``read_mask``.

    Subclasses call ``super().__init__(root, **rules)`` first: ``root`` is the boundary that
    :meth:`inside_root` enforces, and ``rules`` are the keyword arguments of this constructor
    (``open_dataset`` sets them from ``dataset.follow_symlinks_outside_root`` and
    ``dataset.max_pixels``). They must be known before the subclass reads its first file,
    because a folder dataset reads its class table in its constructor.
    """

    name: str = ""
    #: The boundary; None only for an adapter built in code over files it chose itself (tests),
    #: which has no dataset root to keep them in.
    root: Path | None = None
    follow_symlinks_outside_root: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __init__(
        self,
        root: str | Path,
        *,
        follow_symlinks_outside_root: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.follow_symlinks_outside_root = follow_symlinks_outside_root
        self.max_pixels = max_pixels

    def inside_root(self, path: str | Path) -> Path:
        """``path`` itself, when it resolves inside the dataset root; else a SegflowError.

        The one check of the root boundary: ingest calls it on every image and mask before it
        reads, hashes or records one, and the adapters on their class tables and split lists.
        A symlink (of the file or of a directory on its way) that leads out of the root names
        both ends, so the user sees what points where; the target's content is never read.
        Links that stay inside the root are fine. Hard links cannot be told from files.
        """
        path = Path(path)
        if self.follow_symlinks_outside_root or self.root is None:
            return path
        root = self.root.resolve()
        target = path.resolve()
        if not target.is_relative_to(root):
            raise SegflowError(
                f"{path}: links to {target}, outside the dataset root {root}; refused (set "
                "dataset.follow_symlinks_outside_root: true to read files outside the root)"
            )
        return path

    def read_text(self, path: Path) -> str:
        """A text file of the dataset (a split list, a class table), once it is inside the root."""
        return self.inside_root(path).read_text()

    def prepare(self) -> None:
        """Make the files exist before ``samples()`` is called (only synthetic generates any)."""

    def classes(self) -> list[ClassInfo]:
        raise NotImplementedError

    def samples(self) -> Iterator[SampleRef]:
        raise NotImplementedError

    #: 256-entry lookup table from raw mask value to train id, or None for the identity.
    label_lut: np.ndarray | None = None
    #: 256 flags: the stored values the class table defines, or None when every value maps
    #: (then only the train id it maps to is checked).
    known_values: np.ndarray | None = None
    #: Stored values that mean "ignore", when the dataset's class table sets them (else None).
    ignore_values: tuple[int, ...] | None = None

    def read_image(self, path: Path) -> np.ndarray:
        """Decode an image file to an H x W x 3 uint8 RGB array (at most ``max_pixels``)."""
        return read_rgb(path, self.max_pixels)

    def read_mask_values(self, path: Path) -> np.ndarray:
        """Decode a mask file to its values as stored (before the mapping to train ids)."""
        return read_label_png(path, self.max_pixels)

    def read_mask(self, path: Path) -> np.ndarray:
        """Decode a mask file to an H x W uint8 array of train ids (255 = ignore).

        A stored value the class table does not define is an error naming it: mapping it to
        "ignore" would hide it, and it has no train id.
        """
        raw = self.read_mask_values(path)
        unknown = self.unknown_values(np.bincount(raw.ravel(), minlength=256))
        if unknown:
            raise SegflowError(
                f"{path}: mask values {unknown} are not in the {self.name} class table"
            )
        return raw if self.label_lut is None else self.label_lut[raw]

    def unknown_values(self, value_counts: np.ndarray) -> list[int]:
        """The stored values present in ``value_counts`` (256 counts) that no class defines."""
        if self.known_values is None:
            return []
        return np.flatnonzero((value_counts > 0) & ~self.known_values).tolist()


def read_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image to RGB uint8; its header is checked against ``max_pixels`` first.

    A file OpenCV cannot decode, or one too large, is a :class:`SegflowError` naming it.
    """
    img = _decode(path, cv2.IMREAD_COLOR, max_pixels, "image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label_png(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a single-channel label image as stored (no palette conversion) to uint8."""
    mask = _decode(path, cv2.IMREAD_UNCHANGED, max_pixels, "mask")
    if mask.ndim != 2:
        raise SegflowError(
            f"{path}: mask has {mask.shape[2]} channels; expected one label value per pixel"
        )
    if mask.dtype != np.uint8:
        raise SegflowError(f"{path}: mask dtype {mask.dtype}; expected 8-bit labels")
    return mask


def _decode(path: Path, flags: int, max_pixels: int, what: str) -> np.ndarray:
    """OpenCV's decode of a file whose header passed ``max_pixels``; its errors name the file."""
    data = checked_bytes(path, max_pixels, what)
    try:
        img = cv2.imdecode(data, flags) if data.size else None
    except cv2.error as exc:  # e.g. a size OpenCV's own limit refuses: one line, not a traceback
        raise SegflowError(f"{path}: {what} is not decodable ({one_line(exc)})") from None
    if img is None:
        raise SegflowError(f"{path}: {what} is not decodable (corrupt or not an image file)")
    return img


def require_dir(path: Path, layout: str) -> Path:
    """Fail with a message naming the path and the layout expected when a root is missing."""
    if not path.is_dir():
        raise SegflowError(
            f"dataset root {path} does not exist or is not a directory; expected {layout}"
        )
    return path
