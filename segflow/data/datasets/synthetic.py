"""The embedded default dataset: street scenes generated into ``out_dir``.

The synthesize stage generates them (``segflow.data.synthetic.generate_dataset``); ``prepare()``
does the same for code without DVC. Ingest only lists them.

Layout written (nothing else: the temporary sibling directory it is built in is renamed
over ``out_dir`` at the end)::

    out_dir/images/<split>/<split>_<index:04d>.png   RGB
    out_dir/masks/<split>/<split>_<index:04d>.png    class ids 0..7 (see segflow.data.synthetic)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from segflow.data.datasets.base import ClassInfo, DatasetAdapter, SampleRef
from segflow.data.synthetic import CLASSES, SPLITS, sample_id, write_dataset
from segflow.errors import SegflowError


class SyntheticDataset(DatasetAdapter):
    name = "synthetic"

    def __init__(
        self,
        out_dir: str | Path = "data/synthetic",
        num_train: int = 48,
        num_val: int = 12,
        num_test: int = 12,
        height: int = 96,
        width: int = 128,
        seed: int = 0,
        **rules: Any,
    ) -> None:
        super().__init__(out_dir, **rules)
        self.out_dir = Path(out_dir)
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.height, self.width, self.seed = height, width, seed

    def prepare(self) -> None:
        """Generate every scene into ``out_dir`` (replacing what was there)."""
        write_dataset(self.out_dir, self.counts, self.height, self.width, self.seed)

    def classes(self) -> list[ClassInfo]:
        return list(CLASSES)

    def samples(self) -> Iterator[SampleRef]:
        for split in SPLITS:
            for index in range(self.counts[split]):
                sid = sample_id(split, index)
                image = self.out_dir / "images" / split / f"{sid}.png"
                mask = self.out_dir / "masks" / split / f"{sid}.png"
                if not image.is_file() or not mask.is_file():
                    raise SegflowError(
                        f"{image}: synthetic sample not generated; call prepare() first "
                        "(the synthesize stage does: dvc repro synthesize)"
                    )
                yield SampleRef(id=sid, split=split, image=image, mask=mask)
