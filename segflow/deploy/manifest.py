"""The manifest of a ``predict-many`` output folder: what was written, from what, and what failed.

``<out>/manifest.jsonl`` holds one JSON object a line per input image: ``input`` (absolute
path), ``labels`` and ``overlay`` (paths inside ``<out>``, null when not written), ``status``
(``ok`` or ``failed``), ``reason`` (the one-line error of a failed image), ``ms`` (the served
path's time for it), ``height``/``width``, and the input's ``bytes`` and ``mtime_ns`` when it was
read. Results are appended as they arrive, so a run killed midway keeps what it finished; at the
end the file is rewritten (atomically) with the latest row of each input, sorted by input.

Resuming is deciding what is done: an image whose latest row is ``ok``, whose outputs exist, and
whose file has the size and modification time recorded is skipped. A failed image is tried
again (it may have been replaced), and so is one whose file changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from segflow.io import atomic_path

MANIFEST = "manifest.jsonl"
OK, FAILED = "ok", "failed"


def read_manifest(path: Path) -> dict[str, dict]:
    """The latest row of each input; a line that is not a JSON object (the last line of a run
    killed while writing it) is skipped."""
    rows: dict[str, dict] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("input"), str):
            rows[row["input"]] = row
    return rows


def is_done(row: dict | None, out_dir: Path, overlay: bool) -> bool:
    """Whether ``row`` says its image was segmented into outputs that still exist, from the file
    as it is now (same size and modification time)."""
    if row is None or row.get("status") != OK:
        return False
    outputs = [row.get("labels")] + ([row.get("overlay")] if overlay else [])
    if not all(isinstance(o, str) and (out_dir / o).is_file() for o in outputs):
        return False
    try:
        stat = os.stat(row["input"])
    except OSError:
        return False
    return stat.st_size == row.get("bytes") and stat.st_mtime_ns == row.get("mtime_ns")


class ManifestWriter:
    """Appends rows as they arrive (flushed: a kill loses at most the row being written)."""

    def __init__(self, path: Path, previous: dict[str, dict]):
        self.path = path
        self.rows = dict(previous)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "a")  # noqa: SIM115 - closed in close()

    def append(self, row: dict) -> None:
        self.rows[row["input"]] = row
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Rewrite the file with the latest row of each input, sorted by input."""
        self._file.close()
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.sorted()))

    def sorted(self) -> list[dict]:
        return [self.rows[k] for k in sorted(self.rows)]
