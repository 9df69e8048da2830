"""Stage synthesize: generate the embedded street-scene dataset into data/synthetic/."""

from __future__ import annotations

from segflow.config import Params
from segflow.data.synthetic import generate_dataset
from segflow.logs import console
from segflow.paths import SYNTHETIC


def main(params: Params) -> None:
    n = generate_dataset(SYNTHETIC, params.synthetic)
    console.print(f"synthesize: {n} samples -> {SYNTHETIC}")
