"""Small file helpers shared by the stages: atomic writes and JSON."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds.

    A stage that fails half-way therefore never leaves a truncated output, and the previous
    output stays intact. The temp file lives in the same directory so the rename is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the output the permissions a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_killed_writes(path: str | Path) -> list[Path]:
    """Delete the temp files that :func:`atomic_path` left in directory ``path``.

    A process killed between the temp file's creation and its rename (``kill -9``, OOM) leaves
    ``.<name>.<random>.tmp`` behind. Only the directory's one writer may call this, before it
    writes again (e.g. a training run resuming in its own run directory). Returns what went.
    """
    stale = sorted(p for p in Path(path).glob(".*.tmp") if p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; swap it in for ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | Path, hint: str) -> dict:
    """Load a JSON file another stage wrote; missing or corrupt is a SegflowError with ``hint``
    (what to run to make it)."""
    from segflow.errors import SegflowError

    path = Path(path)
    if not path.is_file():
        raise SegflowError(f"{path}: not found; {hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SegflowError(f"{path}: not valid JSON ({exc}); {hint}") from None


def write_json(path: str | Path, data: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
