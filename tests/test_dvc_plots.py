"""dvc.yaml's plots and metrics: every plot reads columns its writer writes, the default pipeline
(search off) leaves no declared plot missing, and git holds the small metrics and plots files.

`dvc plots show` reports "failed to load some plots" for a declared file that does not exist or a
column it lacks; `dvc exp show` prints `!` for a metric that neither git nor the DVC cache holds.
The end-to-end check (two `dvc exp run`, both experiments' metrics) is in test_dvc_pipeline.py.
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import yaml

from segflow.search.outputs import disabled_outputs
from segflow.train.outputs import CURVE_COLUMNS
from tests.project import REPO

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
SEARCH_HISTORY = "reports/search/history/"


def plotted_columns() -> dict[str, set[str]]:
    """Each file the top-level plots read -> the columns they draw (x and y)."""
    files: dict[str, set[str]] = {}
    for entry in DVC_YAML["plots"]:
        (props,) = entry.values()
        for path, columns in props["y"].items():
            columns = [columns] if isinstance(columns, str) else columns
            files.setdefault(path, set()).update([*columns, props["x"]])
    return files


def test_the_training_curve_plots_val_miou_train_loss_and_the_learning_rate():
    columns = plotted_columns()["reports/train_curve.csv"]
    assert {"epoch", "val_miou", "train_loss", "lr"} <= columns
    assert columns <= set(CURVE_COLUMNS)  # every one is written by segflow/train/outputs.py


def test_with_the_search_off_every_search_plot_file_exists_with_its_columns(tmp_path):
    disabled_outputs(tmp_path / "genotype.json", tmp_path / "history")
    search_files = {p: c for p, c in plotted_columns().items() if p.startswith(SEARCH_HISTORY)}
    assert len(search_files) == 3
    for path, columns in search_files.items():
        written = tmp_path / "history" / path.removeprefix(SEARCH_HISTORY)
        with written.open() as f:
            header = next(csv.reader(f))
        assert columns <= set(header), (path, columns - set(header))


def declared_metrics_and_plots() -> list[str]:
    """Every metrics file of a stage and every file a top-level plot reads."""
    paths = [
        next(iter(out)) if isinstance(out, dict) else out
        for stage in DVC_YAML["stages"].values()
        for out in stage.get("metrics", [])
    ]
    return paths + list(plotted_columns())


@pytest.mark.parametrize("path", declared_metrics_and_plots())
def test_git_holds_each_metrics_and_plots_file_and_ignores_the_rest_of_reports(path, tmp_path):
    """`git check-ignore` against the repository's own .gitignore (git is not a heavy program)."""
    (tmp_path / ".gitignore").write_bytes((REPO / ".gitignore").read_bytes())
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)

    def ignored(rel: str) -> bool:
        run = subprocess.run(["git", "check-ignore", "-q", "--no-index", rel], cwd=tmp_path)
        return run.returncode == 0

    assert not ignored(path)
    assert ignored(str(Path(path).parent / "picture.png"))  # the rest of its directory is not
    assert ignored("reports/registry.json") and ignored("models/best.pt")
