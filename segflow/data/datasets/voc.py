"""PASCAL VOC 2012 segmentation, optionally with the SBD ``train_aug`` extension.

::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png          palette PNGs
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png       (train_aug) grayscale PNGs
    VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt (train_aug)

The root may be ``VOCdevkit`` or ``VOC2012`` itself. ``SegmentationClass`` PNGs are palette
images whose pixel values are the class indices (the palette only draws them), so they are
read as indices with PIL rather than decoded to colour; 255 marks object borders and "difficult"
regions and stays the ignore label. With ``train_aug`` the train split is the SBD list minus
every val id, so no val image leaks into training.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segflow.data.datasets.base import ClassInfo, DatasetAdapter, SampleRef, require_dir
from segflow.data.images import DEFAULT_MAX_PIXELS, checked_bytes
from segflow.errors import SegflowError

LAYOUT = (
    "VOCdevkit/VOC2012 (or VOC2012) with JPEGImages/, SegmentationClass/ and "
    "ImageSets/Segmentation/{train,val}.txt"
)

NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC devkit palette: the bits of the index spread over R, G and B, high bits first."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return colours


CLASSES: tuple[ClassInfo, ...] = tuple(
    ClassInfo(i, name, colour)
    for i, (name, colour) in enumerate(zip(NAMES, voc_colormap(21), strict=True))
)


def read_index_png(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Pixel values of a palette (P) or grayscale (L) PNG, without palette conversion.

    The header is checked against ``max_pixels`` before Pillow decodes a pixel.
    """
    data = checked_bytes(path, max_pixels, "mask")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("P", "L"):
                raise SegflowError(
                    f"{path}: mask mode is {img.mode}; expected a palette (P) or grayscale (L) "
                    "PNG of class indices"
                )
            return np.asarray(img, dtype=np.uint8).copy()
    except SegflowError:
        raise
    except Exception as exc:  # PIL raises several types for corrupt files; name the file
        raise SegflowError(f"{path}: mask is not decodable ({exc})") from None


def _find_voc2012(root: Path) -> Path:
    require_dir(root, LAYOUT)
    for base in (root / "VOC2012", root):
        if (base / "JPEGImages").is_dir():
            return base
    raise SegflowError(f"{root}: no JPEGImages/ in it or in {root / 'VOC2012'}; expected {LAYOUT}")


def _read_ids(listing: Path, read_text: Callable[[Path], str]) -> list[str]:
    if not listing.is_file():
        raise SegflowError(f"{listing}: split list not found; expected {LAYOUT}")
    # Some train_aug.txt copies carry "image mask" paths instead of bare ids: keep the stem.
    return [Path(line.split()[0]).stem for line in read_text(listing).splitlines() if line.strip()]


class VOCDataset(DatasetAdapter):
    name = "voc"

    def __init__(self, root: str | Path, train_aug: bool = False, **rules: Any) -> None:
        super().__init__(root, **rules)
        self.base = _find_voc2012(self.root)
        self.train_aug = train_aug

    def classes(self) -> list[ClassInfo]:
        return list(CLASSES)

    def read_mask_values(self, path: Path) -> np.ndarray:
        return read_index_png(path, self.max_pixels)

    def _split_ids(self) -> list[tuple[str, Path, list[str], str]]:
        """(split, list file, ids, mask dir name) for train and val."""
        sets = self.base / "ImageSets" / "Segmentation"
        val = _read_ids(sets / "val.txt", self.read_text)
        if self.train_aug:
            val_ids = set(val)
            listing = sets / "train_aug.txt"
            train = [i for i in _read_ids(listing, self.read_text) if i not in val_ids]
            return [
                ("train", listing, train, "SegmentationClassAug"),
                ("val", sets / "val.txt", val, "SegmentationClass"),
            ]
        return [
            (
                "train",
                sets / "train.txt",
                _read_ids(sets / "train.txt", self.read_text),
                "SegmentationClass",
            ),
            ("val", sets / "val.txt", val, "SegmentationClass"),
        ]

    def samples(self) -> Iterator[SampleRef]:
        seen: set[str] = set()
        for split, listing, ids, mask_dir in self._split_ids():
            for sid in sorted(set(ids)):
                if sid in seen:
                    raise SegflowError(f"{listing}: id {sid!r} is in more than one split")
                seen.add(sid)
                image = self.base / "JPEGImages" / f"{sid}.jpg"
                mask = self.base / mask_dir / f"{sid}.png"
                if not image.is_file():
                    raise SegflowError(
                        f"{listing}: lists {sid!r}, but image {image} does not exist"
                    )
                if not mask.is_file():
                    raise SegflowError(f"image {image} has no mask: expected {mask}")
                yield SampleRef(id=sid, split=split, image=image, mask=mask)
