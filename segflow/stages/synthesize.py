"""Stage synthesize: generate the embedded street-scene dataset into data/synthetic/.

Only the ``synthetic`` dataset reads it. For any other ``dataset.name`` the stage does no work:
it leaves ``data/synthetic/`` empty (its declared out must exist for DVC, and an empty directory
costs nothing to hash or cache) instead of drawing scenes nobody trains on.
"""

from __future__ import annotations

from segflow.config import Params
from segflow.data.synthetic import generate_dataset
from segflow.io import atomic_dir
from segflow.logs import console
from segflow.paths import SYNTHETIC


def main(params: Params) -> None:
    if params.dataset.name != "synthetic":
        with atomic_dir(SYNTHETIC):
            pass  # an empty directory replaces any scenes of an earlier synthetic run
        console.print(
            f"synthesize: nothing to do (dataset.name: {params.dataset.name}); "
            f"{SYNTHETIC} left empty"
        )
        return
    n = generate_dataset(SYNTHETIC, params.synthetic)
    console.print(f"synthesize: {n} samples -> {SYNTHETIC}")
