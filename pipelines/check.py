"""Stage check: does dataset.root hold the layout dataset.name reads? -> data/dataset.json.

It exists for the error message. ingest lists ``dataset.root`` as a DVC dependency (so new
images re-run it), and DVC checks a stage's dependencies before running its command: a missing
root would stop ``dvc repro`` with DVC's bare ``[Errno 2]``. This stage runs first (ingest
depends on its output), depends only on the ``dataset`` params, and fails with segflow's own
line naming the field and the layout expected.
"""

import json

from segflow.check import dataset_problems
from segflow.config import Params
from segflow.errors import SegflowError
from segflow.io import atomic_path
from segflow.paths import DATASET_CHECK, PARAMS
from segflow.stage import console, run_stage


def main(params: Params) -> None:
    problems = dataset_problems(PARAMS, params)
    if problems:
        raise SegflowError("\n".join(problems))
    ds = params.dataset
    record = {"name": ds.name, "root": str(ds.resolved_root()), "classes_file": ds.classes_file}
    DATASET_CHECK.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(DATASET_CHECK) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"check: {ds.name} dataset at {record['root']}: layout found")


if __name__ == "__main__":
    run_stage(main)
