"""Synthetic scenes with a sharp colour edge and a network-like blurred, misplaced prediction.

Left of column ``edge`` is class 0 in one colour, right of it class 1 in another. The
"network" probabilities are a soft step across the image whose 0.5 crossing sits ``shift``
columns right of the true edge, so the argmax is wrong on a band of ``shift`` columns: what an
output-stride-8 network's upsampled logits look like at a boundary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segflow.postprocess.probs import save_probs

COLOURS = np.array([[200, 40, 40], [40, 60, 200]], np.uint8)


def edge_scene(
    height: int = 32, width: int = 48, edge: int = 20, shift: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image HxWx3 uint8, label HxW uint8, probs 2xHxW float32) of one scene."""
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), np.uint8)
    label[:, edge:] = 1
    noise = rng.integers(-8, 9, (height, width, 3))
    image = np.clip(COLOURS[label].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    x = np.arange(width, dtype=np.float32)
    p1 = 1.0 / (1.0 + np.exp(-(x - (edge + shift - 0.5)) / 3.0))
    p1 = np.broadcast_to(p1, (height, width))
    probs = np.stack([1.0 - p1, p1]).astype(np.float32)
    return image, label, probs


def write_scenes(directory: Path, count: int = 3) -> Path:
    """``count`` scenes with different edge positions saved with save_probs (float16)."""
    for i in range(count):
        image, label, probs = edge_scene(edge=14 + 6 * i, seed=i)
        save_probs(directory, f"scene_{i}", image, label, probs, dtype="float16")
    return directory
