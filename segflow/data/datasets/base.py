"""What every dataset adapter provides.

An adapter turns one on-disk layout into two things: a list of :class:`SampleRef` (id, split,
image path, mask path) and a class table. It also knows how to read its own masks into *train
ids* (0..C-1, with :data:`IGNORE_INDEX` for everything that is not scored), because the raw
encodings differ: CamVid stores 11 for "Unlabelled", Cityscapes stores 34 label ids, VOC stores
palette indices, ADE20K stores 0 for "other". A user's ``folder`` dataset says in its class table
which stored value is which class (binary masks are often 0/255). Everything downstream of
ingest sees train ids only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

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
    """

    name: str = ""

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
        """Decode an image file to an H x W x 3 uint8 RGB array."""
        return read_rgb(path)

    def read_mask_values(self, path: Path) -> np.ndarray:
        """Decode a mask file to its values as stored (before the mapping to train ids)."""
        return read_label_png(path)

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


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image to RGB uint8; a file OpenCV cannot decode is a :class:`SegflowError`."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise SegflowError(f"{path}: image is not decodable (corrupt or not an image file)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label_png(path: Path) -> np.ndarray:
    """Decode a single-channel label image as stored (no palette conversion) to uint8."""
    data = np.fromfile(str(path), dtype=np.uint8)
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if mask is None:
        raise SegflowError(f"{path}: mask is not decodable (corrupt or not an image file)")
    if mask.ndim != 2:
        raise SegflowError(
            f"{path}: mask has {mask.shape[2]} channels; expected one label value per pixel"
        )
    if mask.dtype != np.uint8:
        raise SegflowError(f"{path}: mask dtype {mask.dtype}; expected 8-bit labels")
    return mask


def require_dir(path: Path, layout: str) -> Path:
    """Fail with a message naming the path and the layout expected when a root is missing."""
    if not path.is_dir():
        raise SegflowError(
            f"dataset root {path} does not exist or is not a directory; expected {layout}"
        )
    return path
