"""Deterministic procedural street scenes: the embedded default dataset.

Each scene is a street seen from a car: sky above rooftops, a row of building facades with
windows, a road wedge with perspective lane dashes between two pavements, trees, cars and
people standing on the ground, and poles in front of everything. Objects lower in the image
are nearer and therefore bigger, and they are painted far-to-near so nearer ones occlude
farther ones, exactly as the label mask records it.

The task is meant to be learnable by a small CNN but not by colour alone: car bodies and
clothes take random colours, overcast skies are as grey as some facades, and every image gets
its own exposure, colour cast, light gradient, blur and sensor noise. What separates the
classes is texture (windows, tiles, lane dashes, leaves), shape and position.

Every scene is drawn from its own random stream, seeded by (seed, split, index): the same
seed gives byte-identical PNGs, another seed gives other images, and changing ``num_train``
does not change the val or test images. Every image contains every class (the generator
redraws a scene in the rare case that occlusion hides one), so each class is in train.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segflow.data.datasets.base import ClassInfo
from segflow.io import atomic_dir

if TYPE_CHECKING:
    from segflow.config import SyntheticParams

SKY, BUILDING, ROAD, PAVEMENT, POLE, CAR, PERSON, TREE = range(8)

#: Display colours follow the Cityscapes palette for the same concepts.
CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(SKY, "sky", (70, 130, 180)),
    ClassInfo(BUILDING, "building", (70, 70, 70)),
    ClassInfo(ROAD, "road", (128, 64, 128)),
    ClassInfo(PAVEMENT, "pavement", (244, 35, 232)),
    ClassInfo(POLE, "pole", (153, 153, 153)),
    ClassInfo(CAR, "car", (0, 0, 142)),
    ClassInfo(PERSON, "person", (220, 20, 60)),
    ClassInfo(TREE, "tree", (107, 142, 35)),
)

SPLITS = ("train", "val", "test")

# A scene where occlusion hides a whole class is redrawn from the same stream; hitting this
# bound would be a bug in the generator, not a user error.
_MAX_ATTEMPTS = 20

_FACADES = np.array(
    [
        [150, 75, 60],
        [200, 180, 140],
        [125, 125, 130],
        [95, 80, 75],
        [215, 205, 190],
        [170, 120, 90],
    ],
    np.float32,
)
_CAR_PAINTS = np.array(
    [
        [170, 25, 30],
        [30, 60, 150],
        [225, 225, 225],
        [30, 30, 35],
        [160, 165, 170],
        [220, 190, 40],
        [40, 110, 60],
        [120, 60, 140],
    ],
    np.float32,
)
_SKIN = np.array([[235, 195, 165], [200, 150, 110], [140, 95, 65], [90, 60, 40]], np.float32)


def sample_id(split: str, index: int) -> str:
    """File stem and manifest id of one scene, unique across splits."""
    return f"{split}_{index:04d}"


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one scene; independent of every other scene's."""
    # A stable digest of the split name, not hash(), which Python salts per process.
    split_code = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, split_code, index]))


def render_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: an H x W x 3 uint8 RGB image and its H x W uint8 mask of class ids."""
    for _ in range(_MAX_ATTEMPTS):
        image, mask = _Scene(rng, height, width).draw()
        if np.all(np.bincount(mask.ravel(), minlength=len(CLASSES)) > 0):
            return image, mask
    raise RuntimeError(f"synthetic generator: no scene with every class in {_MAX_ATTEMPTS} draws")


def generate_sample(
    seed: int, split: str, index: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (image, mask) arrays of scene ``index`` of ``split``."""
    return render_scene(scene_rng(seed, split, index), height, width)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB image or a single-channel mask, with fixed encoder settings."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def write_dataset(
    out_dir: str | Path, counts: dict[str, int], height: int, width: int, seed: int
) -> list[tuple[str, str, Path, Path]]:
    """Write ``out_dir/{images,masks}/<split>/<id>.png``; return (id, split, image, mask) rows.

    The directory is built beside ``out_dir`` and swapped in whole, so it holds exactly the
    dataset the arguments describe (no scenes left over from a larger count) and a failure
    leaves the previous one as it was.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            for index in range(counts.get(split, 0)):
                image, mask = generate_sample(seed, split, index, height, width)
                for kind, array in (("images", image), ("masks", mask)):
                    folder = tmp / kind / split
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{sample_id(split, index)}.png").write_bytes(encode_png(array))
    return [
        (
            sid,
            split,
            out_dir / "images" / split / f"{sid}.png",
            out_dir / "masks" / split / f"{sid}.png",
        )
        for split in SPLITS
        for sid in (sample_id(split, i) for i in range(counts.get(split, 0)))
    ]


def generate_dataset(out_dir: str | Path, params: SyntheticParams) -> int:
    """The synthesize stage: write the dataset that ``params`` describes; return its size."""
    counts = {"train": params.num_train, "val": params.num_val, "test": params.num_test}
    return len(write_dataset(out_dir, counts, params.height, params.width, params.seed))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-ish value noise with features about ``cell`` pixels across."""
    gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


class _Scene:
    """One scene under construction: a float RGB canvas and its label mask, painted in order."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng, self.h, self.w = rng, height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.mask = np.zeros((height, width), np.uint8)
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.horizon = rng.uniform(0.36, 0.5) * height
        self.vx = rng.uniform(0.3, 0.7) * width  # vanishing point of the road
        ground = height - self.horizon
        self.k_road = (
            rng.uniform(0.28, 0.5) * width / ground
        )  # road half-width per row below horizon
        self.k_pave = self.k_road * rng.uniform(1.5, 2.1)

    # -- helpers ------------------------------------------------------------------------------

    def paint(self, region: np.ndarray, colour: np.ndarray, cls: int) -> None:
        """Paint ``colour`` (RGB or H x W x 3) on ``region`` and record ``cls`` in the mask."""
        self.image[region] = colour[region] if colour.ndim == 3 else colour
        self.mask[region] = cls

    def blank(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.uint8)

    def depth(self, y: float) -> float:
        """Pixels per unit of object size at image row ``y`` (0 at the horizon, H at the bottom)."""
        return max(y - self.horizon, 0.0) / (self.h - self.horizon) * self.h

    def jitter(self, colour: np.ndarray, amount: float = 0.12) -> np.ndarray:
        return colour * self.rng.uniform(1 - amount, 1 + amount, 3).astype(np.float32)

    def ground_row(self, lo: float, hi: float) -> float:
        """A row between fractions ``lo`` and ``hi`` of the way from horizon to image bottom."""
        return self.horizon + self.rng.uniform(lo, hi) * (self.h - self.horizon)

    def pavement_x(self, y: float, side: int) -> float:
        d = y - self.horizon
        return self.vx + side * d * self.rng.uniform(self.k_road * 1.1, self.k_pave * 0.95)

    # -- layers, back to front ----------------------------------------------------------------

    def sky(self) -> None:
        t = (self.yy / self.h)[..., None]
        if self.rng.random() < 0.3:  # overcast: as grey as some facades
            top, bottom = np.float32([150, 152, 158]), np.float32([205, 205, 210])
        else:
            top, bottom = np.float32([70, 120, 205]), np.float32([175, 200, 235])
        colour = self.jitter(top) * (1 - t) + self.jitter(bottom) * t
        clouds = np.clip(_smooth_noise(self.rng, self.h, self.w, self.w / 6), 0, None)[..., None]
        colour = colour + clouds * self.rng.uniform(10, 35)
        self.paint(np.ones((self.h, self.w), bool), colour, SKY)

    def buildings(self) -> None:
        x = 0.0
        while x < self.w:
            block_w = self.rng.uniform(0.12, 0.35) * self.w
            roof = self.rng.uniform(0.06, 0.85) * (self.horizon - 0.04 * self.h)
            region = (self.xx >= x) & (self.xx < x + block_w) & (self.yy >= roof)
            facade = self.jitter(_FACADES[self.rng.integers(len(_FACADES))])
            colour = np.broadcast_to(facade, (self.h, self.w, 3)).copy()
            colour += _smooth_noise(self.rng, self.h, self.w, 4)[..., None] * 6
            # Windows: a grid of darker (or lit) panes, the texture that tells a facade from sky.
            sx, sy = self.rng.uniform(5, 9) * self.w / 128, self.rng.uniform(6, 10) * self.h / 96
            fx, fy = self.rng.uniform(0.4, 0.7), self.rng.uniform(0.35, 0.6)
            pane = (((self.xx - x) / sx) % 1 < fx) & (((self.yy - roof) / sy) % 1 > 1 - fy)
            pane &= self.yy > roof + 0.5 * sy
            glass = (
                np.float32([45, 55, 75]) if self.rng.random() < 0.8 else np.float32([225, 205, 130])
            )
            colour[pane] = self.jitter(glass, 0.2)
            self.paint(region, colour, BUILDING)
            x += block_w

    def ground(self) -> None:
        d = self.yy - self.horizon
        off = np.abs(self.xx - self.vx)
        below = d > 0
        road = below & (off < self.k_road * d)
        pave = below & (off < self.k_pave * d) & ~road
        # Pavement: light slabs with perspective seams and a bright kerb along the road.
        slab = self.jitter(np.float32([175, 170, 160]), 0.15)
        colour = slab + _smooth_noise(self.rng, self.h, self.w, 3)[..., None] * 8
        inv = self.h / np.maximum(d, 1.0)
        seams = ((inv * 2.0) % 1 < 0.12) | (((off / np.maximum(d, 1.0)) * 6) % 1 < 0.1)
        colour[seams] *= 0.75
        kerb = off < self.k_road * d * 1.08
        colour[kerb] = np.float32([215, 215, 210])
        self.paint(pave, colour, PAVEMENT)
        # Road: dark asphalt with grain, patches and dashed centre line foreshortened by depth.
        asphalt = self.jitter(np.float32([95, 95, 100]), 0.15)
        colour = asphalt + _smooth_noise(self.rng, self.h, self.w, 10)[..., None] * 8
        colour += self.rng.normal(0, 7, (self.h, self.w, 1)).astype(np.float32)
        centre = self.vx + self.rng.uniform(-0.15, 0.15) * self.k_road * d
        dash = (np.abs(self.xx - centre) < 0.05 * self.k_road * d + 0.3) & ((inv * 1.5) % 1 < 0.5)
        colour[dash] = np.float32([225, 225, 215])
        self.paint(road, colour, ROAD)

    def tree(self) -> None:
        y = self.ground_row(0.05, 0.8)
        u = self.depth(y)
        x = self.pavement_x(y, self.rng.choice([-1, 1]))
        trunk_h, trunk_w = self.rng.uniform(0.3, 0.5) * u, max(1.0, 0.05 * u)
        shape = self.blank()
        top = y - trunk_h
        cv2.rectangle(
            shape, (round(x - trunk_w / 2), round(top)), (round(x + trunk_w / 2), round(y)), 1, -1
        )
        trunk = shape.astype(bool)
        radius = self.rng.uniform(0.15, 0.28) * u
        canopy = self.blank()
        for _ in range(int(self.rng.integers(3, 6))):
            cx = x + self.rng.normal(0, radius * 0.5)
            cy = top - radius * 0.6 + self.rng.normal(0, radius * 0.4)
            r = max(1, round(radius * self.rng.uniform(0.6, 1.0)))
            cv2.circle(canopy, (round(cx), round(cy)), r, 1, -1)
        leaves = canopy.astype(bool)
        green = self.jitter(np.float32([60, 115, 45]), 0.25)
        colour = green * (1 + 0.35 * _smooth_noise(self.rng, self.h, self.w, 1.5)[..., None])
        colour[trunk] = self.jitter(np.float32([90, 65, 45]))
        self.paint(trunk | leaves, colour, TREE)

    def car(self, y: float) -> None:
        u = self.depth(y)
        d = y - self.horizon
        x = self.vx + self.rng.uniform(-0.75, 0.75) * self.k_road * d
        hc = self.rng.uniform(0.24, 0.34) * u
        wc = hc * self.rng.uniform(1.2, 2.4)
        left, right, top = x - wc / 2, x + wc / 2, y - hc
        # Its shadow darkens whatever ground is under it (the label stays the ground's).
        shadow = self.blank()
        cv2.ellipse(
            shadow,
            (round(x), round(y)),
            (max(1, round(wc * 0.6)), max(1, round(hc * 0.12))),
            0,
            0,
            360,
            1,
            -1,
        )
        self.image[shadow.astype(bool)] *= 0.55
        body, cabin, wheels = self.blank(), self.blank(), self.blank()
        mid = top + hc * self.rng.uniform(0.35, 0.5)
        cv2.rectangle(body, (round(left), round(mid)), (round(right), round(y - hc * 0.08)), 1, -1)
        inset = wc * self.rng.uniform(0.1, 0.25)
        cabin_pts = np.array(
            [
                [left + inset, top],
                [right - inset, top],
                [right - inset * 0.3, mid],
                [left + inset * 0.3, mid],
            ],
            np.float32,
        )
        cv2.fillPoly(cabin, [np.round(cabin_pts).astype(np.int32)], 1)
        wr = max(1, round(hc * 0.16))
        for wx in (left + wc * 0.18, right - wc * 0.18):
            cv2.circle(wheels, (round(wx), round(y - wr)), wr, 1, -1)
        paint = self.jitter(_CAR_PAINTS[self.rng.integers(len(_CAR_PAINTS))])
        colour = np.broadcast_to(paint, (self.h, self.w, 3)).copy()
        shine = np.clip(1.25 - (self.yy - top) / max(hc, 1.0) * 0.5, 0.7, 1.3)[..., None]
        colour *= shine
        cab = cabin.astype(bool)
        colour[cab] = self.jitter(np.float32([50, 60, 70]), 0.3)  # glass
        colour[wheels.astype(bool)] = np.float32([25, 25, 25])
        self.paint(body.astype(bool) | cab | wheels.astype(bool), colour, CAR)

    def person(self, y: float, on_road: bool) -> None:
        u = self.depth(y)
        if on_road:
            x = self.vx + self.rng.uniform(-0.8, 0.8) * self.k_road * (y - self.horizon)
        else:
            x = self.pavement_x(y, self.rng.choice([-1, 1]))
        hp = self.rng.uniform(0.4, 0.55) * u
        wp = hp * self.rng.uniform(0.22, 0.3)
        head_r = max(1, round(hp * 0.08))
        head_c = (round(x), round(y - hp + head_r))
        neck = y - hp + 2 * head_r
        hip = y - hp * 0.45
        head, torso, legs = self.blank(), self.blank(), self.blank()
        cv2.circle(head, head_c, head_r, 1, -1)
        cv2.rectangle(
            torso, (round(x - wp / 2), round(neck)), (round(x + wp / 2), round(hip)), 1, -1
        )
        stride = self.rng.uniform(0.0, 0.25) * wp
        leg_w = max(1, round(wp * 0.3))
        for sign in (-1, 1):
            foot = round(x + sign * (wp * 0.25 + stride))
            cv2.line(legs, (round(x + sign * wp * 0.2), round(hip)), (foot, round(y)), 1, leg_w)
        shirt = self.rng.uniform(20, 235, 3).astype(np.float32)
        trousers = self.rng.uniform(20, 160, 3).astype(np.float32)
        colour = np.empty((self.h, self.w, 3), np.float32)
        colour[torso.astype(bool)] = shirt
        colour[legs.astype(bool)] = trousers
        colour[head.astype(bool)] = self.jitter(_SKIN[self.rng.integers(len(_SKIN))], 0.08)
        self.paint(head.astype(bool) | torso.astype(bool) | legs.astype(bool), colour, PERSON)

    def pole(self) -> None:
        y = self.ground_row(0.1, 0.95)
        u = self.depth(y)
        side = self.rng.choice([-1, 1])
        x = self.vx + side * (y - self.horizon) * self.k_road * self.rng.uniform(1.1, 1.3)
        height, pw = self.rng.uniform(0.9, 1.4) * u, max(1.0, 0.03 * u)
        shape = self.blank()
        cv2.rectangle(
            shape, (round(x - pw / 2), round(y - height)), (round(x + pw / 2), round(y)), 1, -1
        )
        if self.rng.random() < 0.5:  # a lamp arm reaching over the road
            arm_end = (round(x - side * 0.2 * u), round(y - height))
            cv2.line(shape, (round(x), round(y - height)), arm_end, 1, max(1, round(pw * 0.7)))
        metal = self.jitter(np.float32([120, 125, 130]), 0.2)
        across = np.cos((self.xx - x) / max(pw, 1.0) * np.pi)[..., None]  # cylinder shading
        self.paint(shape.astype(bool), metal * (0.8 + 0.3 * across), POLE)

    def lighting(self) -> np.ndarray:
        """Per-image exposure, colour cast, light gradient, lens blur and sensor noise."""
        rng = self.rng
        gain = rng.uniform(0.65, 1.3)
        cast = rng.normal(1.0, 0.06, 3).astype(np.float32)
        gx, gy = rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2)
        shade = 1 + gx * (self.xx / self.w - 0.5) + gy * (self.yy / self.h - 0.5)
        img = self.image * (gain * cast) * shade[..., None]
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 0.8))
        img += rng.normal(0, rng.uniform(3, 9), img.shape).astype(np.float32)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        self.sky()
        self.buildings()
        self.ground()
        for _ in range(int(self.rng.integers(1, 3))):
            self.tree()
        # Cars and people are painted far to near, so nearer ones occlude farther ones.
        things = [("car", self.ground_row(0.15, 1.0)) for _ in range(int(self.rng.integers(1, 4)))]
        things += [
            ("person", self.ground_row(0.1, 1.0)) for _ in range(int(self.rng.integers(1, 4)))
        ]
        for kind, y in sorted(things, key=lambda t: t[1]):
            if kind == "car":
                self.car(y)
            else:
                self.person(y, on_road=self.rng.random() < 0.2)
        for _ in range(int(self.rng.integers(1, 3))):
            self.pole()  # poles stand in front of everything
        return self.lighting(), self.mask
