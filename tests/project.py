"""A throw-away copy of the segflow pipeline (dvc.yaml, params.yaml, stage scripts) in a temp dir.

Integration tests run the real stage scripts and the real ``dvc`` in it, exactly as a user does
in a checkout, without touching the repository's own data/ or reports/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: The CamVid train/val copy beside the checkout (shared/datasets/camvid); tests that need it
#: skip when it is absent. SEGFLOW_CAMVID points elsewhere.
#: A bare environment for a subprocess still runs this checkout's segflow (PYTHONPATH, as set
#: in a worktree whose venv has another checkout installed), not whatever the venv holds.
CODE_UNDER_TEST = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
CAMVID = Path(os.environ.get("SEGFLOW_CAMVID", REPO.parent / "shared" / "datasets" / "camvid"))


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("SEGFLOW_DATA_ROOT", None)
        # The project's own store unless a test points it elsewhere: an in-process test that
        # called mlflow.set_tracking_uri exported its URI into this process's environment.
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.env["DVC_NO_ANALYTICS"] = "1"  # `dvc init` would start its analytics daemon

    def set_params(self, **sections: dict) -> None:
        """Update sections of params.yaml, e.g. ``set_params(dataset={"name": "folder"})``."""
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for key, value in sections.items():
            if isinstance(value, dict):
                params.setdefault(key, {}).update(value)
            else:
                params[key] = value
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    def stage(self, name: str) -> subprocess.CompletedProcess:
        return self.run(sys.executable, f"pipelines/{name}.py")

    def dvc(self, *args: str) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "dvc"), *args)

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600
        )

    def digest(self, rel: str) -> str:
        """sha256 over a file or every file under a directory (names and bytes)."""
        path = self.root / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(self.root)).encode())
            h.update(f.read_bytes())
        return h.hexdigest()


def make_project(tmp_path: Path, **params: dict) -> Project:
    """Copy the pipeline and its .dvcignore into ``tmp_path/project``, a fresh git + DVC repo."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pipelines", "segflow"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    project = Project(root)
    project.run("git", "init", "-q")
    project.dvc("init", "-q")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")  # replaces the one dvc init wrote
    project.dvc("config", "core.analytics", "false")
    if params:
        project.set_params(**params)
    return project


def segflow_cli(
    *args: str, uri: str, cwd: Path, timeout: float = 400
) -> subprocess.CompletedProcess:
    """``segflow ARGS`` as a user's shell runs it: a bare environment with only the tracking
    URI (and this checkout's code, where PYTHONPATH names it), wide enough for one-line errors."""
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"}
    env.update(CODE_UNDER_TEST)
    return subprocess.run(
        [str(BIN / "segflow"), *args], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=timeout,
    )  # fmt: skip
