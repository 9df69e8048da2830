"""What every dataset adapter provides.

An adapter turns one on-disk layout into two things: a list of :class:`SampleRef` (id, split,
image path, mask path) and a class table. It also knows how to read its own masks into *train
ids* (0..C-1, with :data:`IGNORE_INDEX` for everything that is not scored), because the raw
encodings differ: CamVid stores 11 for "Unlabelled", Cityscapes stores 34 label ids, VOC stores
palette indices, ADE20K stores 0 for "other". Everything downstream of ingest sees train ids only.
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
    """One row of a class table: train id, name and the RGB colour used to draw it."""

    id: int
    name: str
    color: tuple[int, int, int]

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "color": list(self.color)}

    @staticmethod
    def from_dict(d: dict) -> ClassInfo:
        return ClassInfo(int(d["id"]), str(d["name"]), tuple(int(c) for c in d["color"]))


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

    def read_image(self, path: Path) -> np.ndarray:
        """Decode an image file to an H x W x 3 uint8 RGB array."""
        return read_rgb(path)

    def read_mask(self, path: Path) -> np.ndarray:
        """Decode a mask file to an H x W uint8 array of train ids (255 = ignore)."""
        raw = read_label_png(path)
        return raw if self.label_lut is None else self.label_lut[raw]


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
