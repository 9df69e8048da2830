"""models/run.json: which training run produced models/best.pt, checked against the file.

The train stage replaces models/best.pt first and run.json last (segflow.train.outputs), so a
kill between the two leaves a new model beside the record of the previous run. run.json holds
the sha256 of the best.pt it describes, and :func:`read_run_info` refuses a pair that does not
match instead of registering one run's model under another run's id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from segflow.errors import SegflowError
from segflow.io import read_json, write_json
from segflow.paths import BEST_MODEL, RUN_INFO

HINT = "run the train stage (dvc repro train)"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_run_info(info: dict, path: str | Path = RUN_INFO, best: str | Path = BEST_MODEL) -> None:
    """Write ``info`` with the sha256 of ``best``, which must already be in place."""
    write_json(path, {**info, "best_sha256": file_sha256(best)})


def read_run_info(path: str | Path = RUN_INFO, best: str | Path = BEST_MODEL) -> dict:
    """run.json, after checking that ``best`` is the model it describes.

    A run.json without ``best_sha256`` (written before segflow recorded it) is taken as it is.
    """
    path, best = Path(path), Path(best)
    info = read_json(path, HINT)
    expected = info.get("best_sha256")
    if expected is None:
        return info
    if not best.is_file():
        raise SegflowError(f"{best}: not found, but {path} describes it; {HINT}")
    if file_sha256(best) != expected:
        raise SegflowError(
            f"{path}: describes another {best} than the one on disk (the train stage was "
            f"interrupted between writing the two); {HINT}"
        )
    return info
