"""Stage validate: the Great Expectations suite over the manifest; any violation exits non-zero."""

from __future__ import annotations

import sys

from rich.markup import escape

from segflow.config import Params
from segflow.data.datasets import open_dataset
from segflow.data.groups import DEV_SPLIT
from segflow.data.manifest import read_manifest
from segflow.data.validate import validate
from segflow.logs import console
from segflow.paths import MANIFEST, VALIDATION


def main(params: Params) -> None:
    required = {"train", "val", params.dataset.test_split}
    if params.dataset.holdout_groups:
        required.add(DEV_SPLIT)
    result = validate(
        read_manifest(MANIFEST),
        open_dataset(params),
        VALIDATION,
        sorted(required),
        max_ignored_share=params.dataset.max_ignored_share,
    )
    if not result.success:
        for line in result.failures:
            console.print(f"[bold red]failed:[/] {escape(line)}", markup=True)
        console.print(f"validate: {len(result.failures)} rule(s) failed; report in {VALIDATION}/")
        sys.exit(1)
    ignored = ", ".join(f"{s} {100 * v:.1f}%" for s, v in result.ignored_share.items())
    console.print(f"validate: all rules passed; ignored pixels: {ignored}; report in {VALIDATION}/")
