"""Training augmentation and evaluation preprocessing (albumentations 2.0).

Both take and return ``{"image": H x W x 3 uint8 RGB, "mask": H x W uint8 train ids}``; the
image comes out normalised float32, the mask stays uint8 labels. Every geometric step moves
image and mask together and resamples the mask with nearest neighbour only, so a pixel never
gets a label that is a blend of two classes. The mask uses ``INTER_NEAREST_EXACT``, not
``INTER_NEAREST``: OpenCV's plain nearest maps pixel corners (src = floor(dst / scale)) while
linear maps pixel centres, which shifts the mask against the image by up to half a source pixel
(a whole pixel at scale 2, visible at every class boundary); the exact variant uses the same
pixel-centre geometry as the image's linear resize. Padding uses the ignore label for the mask
(padded pixels are not scored) and the dataset mean for the image (zero after normalisation).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np

from segflow.config import LoaderParams
from segflow.data.datasets.base import IGNORE_INDEX


def train_transform(
    p: LoaderParams, normalize: bool = True, class_pixels: Sequence[int] | None = None
) -> A.Compose:
    """Random scale, pad, random crop to ``crop_height x crop_width``, flip, jitter, normalise.

    ``class_pixels`` (the train split's pixels per class) lets ``p.rare_class_crop`` of the
    crops be placed on a rare class (:func:`rare_class_weights`); without it every crop is
    uniform.

    ``normalize=False`` leaves the image uint8, for loaders that normalise on the GPU
    (``make_dataloader(..., uint8=True)`` with ``loader.normalize_batch``).

    Scale, pad and crop are one step (:class:`RandomScaleCrop`) that resizes only the part of
    the image the crop shows, and colour jitter and normalisation run on the crop only, not on
    an image up to ``scale_max``² times larger.
    """
    steps: list[A.BasicTransform] = [
        RandomScaleCrop(
            height=p.crop_height,
            width=p.crop_width,
            scale=(p.scale_min, p.scale_max),
            fill=tuple(round(255.0 * m) for m in p.mean),
            fill_mask=IGNORE_INDEX,
            focus=rare_class_weights(class_pixels) if class_pixels is not None else None,
            focus_prob=p.rare_class_crop,
        ),
        A.HorizontalFlip(p=p.hflip),
    ]
    if p.color_jitter > 0:
        j = p.color_jitter
        steps.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=1.0))
    if normalize:
        steps.append(A.Normalize(mean=p.mean, std=p.std))
    return A.Compose(steps, mask_interpolation=cv2.INTER_NEAREST_EXACT)


def eval_transform(p: LoaderParams, normalize: bool = True) -> A.Compose:
    """Normalise only (or nothing): evaluation sees the full image at its stored size."""
    return A.Compose([A.Normalize(mean=p.mean, std=p.std)] if normalize else [])


def rare_class_weights(class_pixels: Sequence[int]) -> tuple[float, ...]:
    """1 / sqrt(share of the train pixels) per class (0 for an absent class).

    The square root keeps a class seen 100x less often 10x more likely, not 100x: crops still
    show the common classes, and one rare class does not take every crop.
    """
    counts = np.asarray(class_pixels, dtype=np.float64)
    share = counts / max(counts.sum(), 1.0)
    weights = np.zeros_like(share)
    weights[share > 0] = 1.0 / np.sqrt(share[share > 0])
    return tuple(float(w) for w in weights)


class RandomScaleCrop(A.DualTransform):
    """``RandomScale(scale) -> PadIfNeeded(height, width) -> RandomCrop(height, width)`` in one.

    Same distribution of outputs as that chain (the scaled image is centred when smaller than
    the crop, the crop is uniform over it when larger), but only the source region the crop
    will show is resized, straight to its place in the output. At scale 2, with a crop the size
    of the image, the chain resizes the whole image to 4x its pixels and throws three quarters
    away; this resizes a quarter of the source (whole training transform on 1024x2048 images
    with 512x1024 crops: ~3.8 ms instead of ~9.4, benchmarks/RESULTS.md). The region's bounds
    are rounded to whole source pixels, which changes the effective scale by under one source
    pixel over the crop. Image and mask get the same region and target size, resized with
    pixel-centre geometry (linear / nearest-exact), so they stay aligned.

    Rare-class-aware sampling: with probability ``focus_prob`` the crop is placed to contain a
    pixel of one class present in the mask, the class drawn with the weights ``focus`` (one per
    class id, e.g. :func:`rare_class_weights`) and the pixel uniformly among that class's; the
    crop's offset is then uniform among those that contain the pixel. Small classes (poles,
    signs, pedestrians) are seen far more often than uniform crops of street scenes show them.
    """

    def __init__(
        self,
        height: int,
        width: int,
        scale: tuple[float, float],
        fill: tuple[int, ...] | int = 0,
        fill_mask: int = IGNORE_INDEX,
        focus: Sequence[float] | None = None,
        focus_prob: float = 0.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.height, self.width = height, width
        self.scale = (float(scale[0]), float(scale[1]))
        self.fill, self.fill_mask = fill, fill_mask
        self.focus = None if focus is None else np.asarray(focus, dtype=np.float64)
        self.focus_prob = focus_prob

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        rows, cols = params["shape"][:2]
        s = self.py_random.uniform(*self.scale)
        keep_row, keep_col = self._focus_pixel(data.get("mask")) or (None, None)
        return {
            "rows": self._axis(rows, int(rows * s), self.height, keep_row),
            "cols": self._axis(cols, int(cols * s), self.width, keep_col),
        }

    def _focus_pixel(self, mask: np.ndarray | None) -> tuple[int, int] | None:
        """A (row, col) of a rare class to keep in the crop, or None for a uniform crop."""
        if mask is None or self.focus is None or self.py_random.random() >= self.focus_prob:
            return None
        k = len(self.focus)
        present = np.bincount(mask.ravel(), minlength=256)[:k] > 0
        weights = self.focus * present
        if weights.sum() <= 0:
            return None
        c = self.py_random.choices(range(k), weights=weights.tolist())[0]
        rows, cols = np.nonzero(mask == c)
        i = self.py_random.randrange(len(rows))
        return int(rows[i]), int(cols[i])

    def _axis(
        self, n: int, scaled: int, crop: int, keep: int | None = None
    ) -> tuple[int, int, int, int]:
        """(src start, src stop, dst start, dst stop) along one axis; ``keep``: a source index
        the crop must contain."""
        scaled = max(scaled, 1)
        if scaled < crop:  # padded: the whole axis, centred as PadIfNeeded does
            start = (crop - scaled) // 2
            return 0, n, start, start + scaled
        if keep is None:
            offset = self.py_random.randint(0, scaled - crop)  # RandomCrop's offset
        else:
            at = int((keep + 0.5) * scaled / n)  # the pixel's centre in the scaled image
            offset = self.py_random.randint(max(0, at - crop + 1), min(scaled - crop, at))
        ratio = n / scaled
        src0 = min(round(offset * ratio), n - 1)
        src1 = min(max(round((offset + crop) * ratio), src0 + 1), n)
        return src0, src1, 0, crop

    def _apply(self, array: np.ndarray, rows, cols, interpolation: int, fill) -> np.ndarray:
        r0, r1, dr0, dr1 = rows
        c0, c1, dc0, dc1 = cols
        region = array[r0:r1, c0:c1]
        size = (dc1 - dc0, dr1 - dr0)
        if region.shape[1::-1] != size:
            region = cv2.resize(region, size, interpolation=interpolation)
        if size == (self.width, self.height):
            return np.ascontiguousarray(region)
        out = np.empty((self.height, self.width, *array.shape[2:]), dtype=array.dtype)
        out[...] = fill
        out[dr0:dr1, dc0:dc1] = region
        return out

    def apply(self, img: np.ndarray, rows, cols, **params) -> np.ndarray:
        return self._apply(img, rows, cols, cv2.INTER_LINEAR, self.fill)

    def apply_to_mask(self, mask: np.ndarray, rows, cols, **params) -> np.ndarray:
        return self._apply(mask, rows, cols, cv2.INTER_NEAREST_EXACT, self.fill_mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "scale", "fill", "fill_mask", "focus", "focus_prob")


def reseed(transform: object, key: Sequence[int]) -> None:
    """Give an albumentations pipeline a fresh random state derived from ``key``.

    The loader calls this per sample with (seed, epoch, sample index), so the augmentation a
    sample gets depends on neither the number of DataLoader workers nor the rank layout, and
    forked workers do not share one random stream. One generator is shared by all steps
    (``set_random_state``); ``set_random_seed`` would give every step an identical stream, which
    couples e.g. the scale drawn with the flip decision.
    """
    if not hasattr(transform, "set_random_state"):
        return
    rng = np.random.default_rng([int(k) for k in key])
    transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
