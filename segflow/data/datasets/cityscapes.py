"""Cityscapes fine annotations, mapped from the 34 label ids to the 19 train ids.

::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Every split of train/val/test that has a ``leftImg8bit`` directory is used. The public
test-split labels are all "unlabeled", so they map to ignore everywhere: score on val
(``dataset.test_split: val``). The mapping is the official one from cityscapesScripts'
``labels.py``: the 19 evaluated classes get train ids 0..18, every other label id is ignored.
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

LAYOUT = (
    "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"
)
SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"

#: (label id, train id, name, colour) of the 19 evaluated classes.
_TRAIN_CLASSES = (
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
)

CLASSES: tuple[ClassInfo, ...] = tuple(ClassInfo(t, n, c) for _, t, n, c in _TRAIN_CLASSES)


def cityscapes_lut() -> np.ndarray:
    """Label id -> train id; unlabeled, ego vehicle, parking, guard rail, caravan... -> 255."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id, _, _ in _TRAIN_CLASSES:
        lut[label_id] = train_id
    return lut


class CityscapesDataset(DatasetAdapter):
    name = "cityscapes"
    label_lut = cityscapes_lut()

    def __init__(self, root: str | Path, **rules: Any) -> None:
        super().__init__(require_dir(Path(root), LAYOUT), **rules)
        images = self.root / "leftImg8bit"
        if not images.is_dir():
            raise SegflowError(f"{images}: directory not found; expected {LAYOUT}")
        self.splits = [s for s in SPLITS if (images / s).is_dir()]
        if not self.splits:
            raise SegflowError(f"{images}: no train/, val/ or test/ directory; expected {LAYOUT}")

    def classes(self) -> list[ClassInfo]:
        return list(CLASSES)

    def samples(self) -> Iterator[SampleRef]:
        for split in self.splits:
            # City directories are one level deep; sorting the full paths orders city, then frame.
            for image in sorted((self.root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}")):
                base = image.name[: -len(IMAGE_SUFFIX)]
                city = image.parent.name
                mask = self.root / "gtFine" / split / city / f"{base}{MASK_SUFFIX}"
                if not mask.is_file():
                    raise SegflowError(f"image {image} has no mask: expected {mask}")
                yield SampleRef(id=base, split=split, image=image, mask=mask)
