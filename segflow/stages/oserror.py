"""OSErrors a user's machine causes, as one line naming the path, why, and what to do.

A full disk, a quota, a read-only or unreadable path, a missing input: none is a bug, and a
30-line traceback ending in ``[Errno 28]`` hides the path and the remedy. The stage runner and
the CLI turn them into one line with :func:`os_error_message`; anything else keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

#: What a user does about each error: the remedy after the path and the rule.
_ADVICE = {
    errno.EROFS: "the file system is mounted read-only; run where the outputs can be written",
    errno.EACCES: "this user may not use it; check its owner and mode (ls -ld)",
    errno.EPERM: "this user may not use it; check its owner and mode (ls -ld)",
    errno.ENOENT: "check the path (an input that a params key or an earlier stage names)",
    errno.ENOTDIR: "a file stands where a directory is expected",
    errno.EISDIR: "a directory stands where a file is expected",
}
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: Kept in a project, growing run after run, on the project's file system: what to delete.
_RECLAIMABLE = (
    ("ray_results", "old Ray runs in ray_results/"),
    (".dvc/cache", "DVC's cache: `dvc gc --workspace`"),
    ("mlruns", "old MLflow runs in mlruns/"),
)
#: A temp name of segflow.io's atomic writers (``.<name>.<random>.tmp``): the output it becomes.
_STAGED = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")


def os_error_message(exc: OSError) -> str | None:
    """One line for an OSError the user can fix, naming the path and what to do; else None.

    A full disk or quota names the file system, its free space now (an atomic writer has
    removed its partial output by then) and what in the project can be freed. A write to a
    full disk often names no file; the message then says how to find the full file system.
    """
    code = exc.errno
    if code not in _ADVICE and code not in _FULL:
        return None
    path = _output_path(exc)
    rule = f"{os.strerror(code).lower()} ({errno.errorcode[code]})"
    if path is not None:
        advice = _free_space(path) if code in _FULL else _ADVICE[code]
        return f"{_shown(path)}: {rule}: {advice}"
    if code in _FULL:
        return (
            f"{rule} on a file system the error does not name: find it with `df -h`, "
            f"{_make_room(None)}, then rerun"
        )
    if code == errno.EROFS:  # whichever file it was, the cure is the same
        return f"{rule} on a path the error does not name: {_ADVICE[code]}"
    return None  # a missing or forbidden file that is not named: nothing a user can act on


def _output_path(exc: OSError) -> Path | None:
    """The path the error is about, as the output it was going to become.

    A failed copy carries both ends: the destination (``filename2``) is the one a full disk
    refused. A temp file or directory of an atomic write is named as its final output.
    """
    name = exc.filename2 if exc.errno in _FULL and exc.filename2 else exc.filename
    if name is None or isinstance(name, int):  # os.write(fd, ...) names a descriptor
        return None
    path = Path(os.fsdecode(name))
    for n, part in enumerate(path.parts):
        staged = _STAGED.match(part)
        if staged:
            return Path(*path.parts[:n], staged.group(1))
    return path


def _shown(path: Path) -> str:
    """Relative to the project when inside it, as the user knows it (data/shards)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _free_space(path: Path) -> str:
    """``the file system at /mnt (tmpfs) has 1.2 MB free of 2.0 MB; <what to delete>...``."""
    existing = path.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    mount = existing
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    usage = shutil.disk_usage(existing)
    kind = _fs_type(mount)
    return (
        f"the file system at {mount}{f' ({kind})' if kind else ''} has {_size(usage.free)} free "
        f"of {_size(usage.total)}; {_make_room(existing.stat().st_dev)}, or move the outputs to "
        "a larger one, then rerun"
    )


def _make_room(device: int | None) -> str:
    """What in the project to delete: what exists of _RECLAIMABLE (on ``device``, if known)."""
    cwd = Path.cwd()
    here = [
        what
        for rel, what in _RECLAIMABLE
        if (cwd / rel).exists() and device in (None, (cwd / rel).stat().st_dev)
    ]
    return f"delete what is not needed on it ({', '.join(here)})" if here else "free space on it"


def _fs_type(mount: Path) -> str | None:
    """The file system type of a mount point (tmpfs, ext4, nfs4...), when Linux says."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):  # the last mount over a point is the one in effect
        fields = line.split()
        if len(fields) > 2 and fields[1] == str(mount):
            return fields[2]
    return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
