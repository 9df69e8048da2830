"""A full disk under a stage's outputs: one line naming the output, the full file system and its
free space, exit 1, and the previous outputs intact.

The project's data/ is a 2 MB tmpfs: the first shards fit, shards of images resized to 768 x
1024 do not. Mounting needs root (or CAP_SYS_ADMIN); the test skips where that is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from segflow.stages.oserror import os_error_message
from segflow.train.outputs import publish
from tests.project import CODE_UNDER_TEST, Project, make_project

SEGFLOW = Path(sys.executable).parent / "segflow"


@pytest.fixture
def project_on_a_small_disk(tmp_path: Path) -> Iterator[Project]:
    project = make_project(tmp_path, synthetic={"num_train": 8, "num_val": 2, "num_test": 2})
    data = project.root / "data"
    data.mkdir()
    try:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(data)], capture_output=True
        )
    except OSError as exc:  # no mount command at all
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.decode().strip()}")
    try:
        yield project
    finally:
        subprocess.run(["umount", str(data)], check=True)


@pytest.mark.integration
def test_shards_that_do_not_fit_are_one_line_naming_the_disk_and_keep_the_old_shards(
    project_on_a_small_disk,
):
    project = project_on_a_small_disk
    first = project.dvc("repro", "shard")
    assert first.returncode == 0, first.stdout + first.stderr
    before = project.digest("data/shards")
    project.set_params(shard={"resize_height": 768, "resize_width": 1024})

    result = project.stage("shard")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    data = project.root / "data"
    assert lines[0].startswith(
        f"error: data/shards: no space left on device (ENOSPC): the file system at {data} (tmpfs)"
        " has "
    ), lines[0]
    assert "free of 2.0 MB" in lines[0]
    assert project.digest("data/shards") == before
    assert sorted(p.name for p in data.iterdir() if p.name.startswith(".shards")) == []


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` for the block; skips the test where mount is refused."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_trained_model_that_does_not_fit_names_models_best_pt_and_keeps_the_old_one(
    tmp_path, monkeypatch
):
    """The train stage's last step (publish) copies the staged model over models/best.pt."""
    staged = tmp_path / "staged.pt"
    staged.write_bytes(os.urandom(256 * 1024))
    monkeypatch.chdir(tmp_path)
    with tmpfs(tmp_path / "models", "64k") as models:
        (models / "best.pt").write_bytes(b"the earlier model\n")
        with pytest.raises(OSError) as caught:
            publish(staged, [], {}, best=models / "best.pt", curve=tmp_path / "c.csv",
                    metrics=tmp_path / "m.json", info=tmp_path / "run.json")  # fmt: skip
        message = os_error_message(caught.value)
        assert (models / "best.pt").read_bytes() == b"the earlier model\n"
        assert [p.name for p in models.iterdir()] == ["best.pt"]  # no temp file left
    assert message is not None
    assert message.startswith(
        f"models/best.pt: no space left on device (ENOSPC): the file system at {models} (tmpfs) "
        "has "
    ), message
    assert " KB free of 64.0 KB; " in message


def test_a_full_disk_names_what_the_project_can_free_on_it(tmp_path, monkeypatch):
    """Old Ray runs and DVC's cache grow run after run; they are named when on the full disk."""
    for rel in ("ray_results/run-1", ".dvc/cache/files", "data"):
        (tmp_path / rel).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "data" / "x.arrow"))

    message = os_error_message(full)

    assert message is not None and message.startswith("data/x.arrow: no space left on device")
    room = "old Ray runs in ray_results/, DVC's cache: `dvc gc --workspace`"
    assert f"delete what is not needed on it ({room})" in message


@pytest.mark.parametrize(
    ("code", "rule"),
    [
        (errno.EACCES, "permission denied (EACCES): this user may not use it"),
        (errno.EROFS, "read-only file system (EROFS): the file system is mounted read-only"),
        (errno.ENOENT, "no such file or directory (ENOENT): check the path"),
        (errno.EDQUOT, "disk quota exceeded (EDQUOT): the file system at /"),
    ],
)
def test_each_error_a_user_can_cause_is_the_path_the_rule_and_what_to_do(code, rule):
    message = os_error_message(OSError(code, os.strerror(code), "/srv/project/data/shards"))
    assert message is not None and message.startswith(f"/srv/project/data/shards: {rule}")


def test_an_os_error_a_user_cannot_fix_keeps_its_traceback():
    assert os_error_message(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert os_error_message(FileNotFoundError(errno.ENOENT, "No such file")) is None  # no path


@pytest.mark.integration  # starts the segflow command
def test_the_segflow_command_says_a_full_disk_in_one_line(tmp_path):
    with tmpfs(tmp_path / "full", "4k") as full:
        result = subprocess.run(
            [str(SEGFLOW), "init", "--preset", "camvid-cpu", "--dir", str(full)],
            capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **CODE_UNDER_TEST},
        )  # fmt: skip
        left = list(full.iterdir())
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(
        "error: no space left on device (ENOSPC) on a file system the error does not name: "
        "find it with `df -h`"
    ), result.stderr
    assert result.stderr.count("\n") == 1
    assert left == []
