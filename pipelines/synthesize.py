"""Stage synthesize: generate the embedded street-scene dataset into data/synthetic/."""

from segflow.config import Params
from segflow.data.synthetic import generate_dataset
from segflow.paths import SYNTHETIC
from segflow.stage import console, run_stage


def main(params: Params) -> None:
    n = generate_dataset(SYNTHETIC, params.synthetic)
    console.print(f"synthesize: {n} samples -> {SYNTHETIC}")


if __name__ == "__main__":
    run_stage(main)
