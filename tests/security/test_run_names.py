"""Run names are untrusted input when they come from a tracking server: they never reach outside
the storage root.

The train stage resumes, and deletes the checkpoints of, runs it finds in MLflow by their
``segflow.ray_run_name`` tag (segflow.train.resume). Anyone who can write to a shared tracking
server can set that tag. A name from params.yaml must match RUN_NAME_PATTERN (one directory
name, no separators, no ``..``), and a name from a tag is used only if it matches too and its
directory, symlinks resolved, lies inside ``train.storage_path``. Here a real sqlite store holds
interrupted runs whose tags name directories outside the storage (``../../victim``, an absolute
path, a symlink in the storage that points out): nothing outside is resumed or deleted.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import mlflow
import pytest

from segflow.config import Params, load_params
from segflow.errors import SegflowError
from segflow.train.resume import (
    CHECKOUT_TAG,
    DATA_TAG,
    HOST_TAG,
    PARAMS_TAG,
    PID_TAG,
    RAY_RUN_TAG,
    checkout,
    params_sha256,
    plan_run,
)

TRAVERSALS = ["..", "../../victim", "a/b", "/abs", ".hidden", "a\\b", "run/../../x"]
DATA_HASH = "d" * 64


@pytest.mark.parametrize("section", ["train", "search"])
@pytest.mark.parametrize("name", TRAVERSALS)
def test_a_run_name_that_is_not_one_directory_name_is_refused_in_one_line(tmp_path, section, name):
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({section: {"run_name": name}}))  # JSON is YAML
    with pytest.raises(SegflowError) as caught:
        load_params(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {section}.run_name: String should match pattern")
    assert repr(name) in message


@pytest.mark.parametrize("name", ["train-20240101-120000", "r1", "exp_2.b-3"])
def test_a_plain_directory_name_is_a_run_name(tmp_path, name):
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"train": {"run_name": name}, "search": {"run_name": name}}))
    params = load_params(path)
    assert params.train.run_name == params.search.run_name == name


@pytest.fixture
def layout(tmp_path, monkeypatch) -> dict:
    """A project with its run storage, a real MLflow store, and what lies next to the project:
    a sentinel directory and a directory that a symlink in the storage points to."""
    project = tmp_path / "project"
    storage = project / "ray_results"
    storage.mkdir(parents=True)
    victim = tmp_path / "victim"  # = <storage>/../../victim
    victim.mkdir()
    (victim / "keep.txt").write_text("not segflow's")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "last.pt").write_text("someone else's")
    (storage / "escape").symlink_to(outside, target_is_directory=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.MlflowClient().create_experiment(
        "segflow", artifact_location=(tmp_path / "art").as_uri()
    )
    params = Params.model_validate({"train": {"storage_path": str(storage)}})
    return {
        "project": project, "storage": storage, "victim": victim, "outside": outside,
        "experiment": experiment, "params": params,
    }  # fmt: skip


def interrupted(
    client, experiment: str, root: Path, params: Params, data_hash: str, names: list[str]
) -> dict[str, str]:
    """RUNNING MLflow runs of checkout ``root``, one per Ray run name (started in this order, a
    second apart), from another host (so their process counts as gone), trained with ``params``
    on shards of ``data_hash``: what kills leave behind. Their ids by name."""
    start = int(time.time() * 1000) - 60_000
    runs = {}
    for i, name in enumerate(names):
        tags = {
            CHECKOUT_TAG: checkout(root),
            HOST_TAG: "another-host.invalid",
            PID_TAG: "1",
            PARAMS_TAG: params_sha256(params),
            DATA_TAG: data_hash,
            RAY_RUN_TAG: name,
        }
        runs[name] = client.create_run(experiment, start_time=start + 1000 * i, tags=tags)
    return {name: run.info.run_id for name, run in runs.items()}


def orphans(layout: dict, names: list[str]) -> dict[str, str]:
    client = mlflow.MlflowClient()
    return interrupted(
        client, layout["experiment"], layout["project"], layout["params"], DATA_HASH, names
    )


def assert_nothing_outside_was_touched(layout: dict) -> None:
    assert (layout["victim"] / "keep.txt").read_text() == "not segflow's"
    assert (layout["outside"] / "last.pt").read_text() == "someone else's"
    assert (layout["storage"] / "escape").is_symlink()


def status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


@pytest.mark.parametrize("run_name", [None, "mine"])
def test_tag_borne_names_delete_nothing_outside_the_storage(layout, run_name):
    """With no run name the latest interrupted run is a candidate to continue; with one, every
    interrupted run of another name is marked KILLED and its directory removed."""
    params = layout["params"]
    if run_name is not None:
        train = params.train.model_copy(update={"run_name": run_name})
        params = params.model_copy(update={"train": train})
    # A real run of this checkout in the storage: its directory is removed (the deletion path
    # runs), while the others point outside (oldest first; "escape" is the latest).
    (layout["storage"] / "train-old").mkdir()
    (layout["storage"] / "train-old" / "last.pt").write_text("ours")
    names = ["train-old", "../../victim", str(layout["victim"]), "escape"]
    runs = orphans(layout, names)

    plan = plan_run(params, {"content_hash": DATA_HASH}, layout["experiment"], layout["project"])

    assert_nothing_outside_was_touched(layout)
    assert not (layout["storage"] / "train-old").exists()
    assert plan.mlflow_run_id is None  # nothing outside is continued either
    assert sorted(plan.killed) == sorted(runs.values())
    assert {status(run_id) for run_id in runs.values()} == {"KILLED"}
    if run_name is None:
        assert plan.note == (
            "train: starting a fresh run: the interrupted run 'escape' names a run directory "
            f"outside {layout['storage']}"
        )
        assert plan.params.train.run_name.startswith("train-")
    else:
        assert plan.params.train.run_name == "mine"


def test_a_traversal_in_the_latest_run_is_not_a_run_name(layout):
    run = orphans(layout, ["../../victim"])["../../victim"]
    index = {"content_hash": DATA_HASH}
    plan = plan_run(layout["params"], index, layout["experiment"], layout["project"])
    assert plan.note == (
        "train: starting a fresh run: the interrupted run '../../victim' has no valid run name "
        "(tag segflow.ray_run_name); it is not resumed or deleted"
    )
    assert plan.killed == [run] and status(run) == "KILLED"
    assert_nothing_outside_was_touched(layout)


@pytest.mark.integration
def test_the_train_stage_deletes_nothing_outside_its_storage(tmp_path):
    """`python pipelines/train.py` in a throw-away project whose MLflow store holds interrupted
    runs of this checkout, with its params and shards, tagged with names outside the storage:
    it trains a fresh run, marks them KILLED and leaves what they name alone. ("escape", the
    latest, would otherwise be continued from someone else's last.pt.)"""
    from segflow.data.shards import read_index
    from tests.train.conftest import SIZE, make_shards
    from tests.train.test_stage import SMALL, small_project

    project = small_project(tmp_path)
    make_shards(tmp_path / "bands", train=4, val=2)
    shutil.copytree(tmp_path / "bands" / "shards", project.root / "data" / "shards")
    train = {**SMALL["train"], "launcher": "local", "epochs": 1, "batch_size": 2}
    project.set_params(loader={"crop_height": SIZE[0], "crop_width": SIZE[1]}, train=train)
    storage = project.root / "ray_results"
    storage.mkdir()
    victim = tmp_path / "victim"  # <project>/ray_results/../../victim
    victim.mkdir()
    (victim / "keep.txt").write_text("not segflow's")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "last.pt").write_text("someone else's")
    (storage / "escape").symlink_to(outside, target_is_directory=True)
    # The store the stage uses (mlruns/mlflow.db) with the runs kills left RUNNING.
    (project.root / "mlruns").mkdir()
    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}")
    experiment = client.create_experiment(
        "segflow", artifact_location=(project.root / "mlruns" / "artifacts").as_uri()
    )
    params = load_params(project.root / "params.yaml")
    data_hash = read_index(project.root / "data" / "shards")["content_hash"]
    names = ["../../victim", str(victim), "escape"]
    runs = interrupted(client, experiment, project.root, params, data_hash, names)

    result = project.stage("train")

    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert (
        "train: starting a fresh run: the interrupted run 'escape' names a run directory "
        "outside ray_results" in log
    )
    killed = next(line for line in log.splitlines() if "train: marked interrupted" in line)
    assert all(run_id in killed for run_id in runs.values())
    assert {client.get_run(r).info.status for r in runs.values()} == {"KILLED"}
    assert (victim / "keep.txt").read_text() == "not segflow's"
    assert (outside / "last.pt").read_text() == "someone else's"
    assert (storage / "escape").is_symlink()
    fresh = json.loads((project.root / "models" / "run.json").read_text())["ray_run_name"]
    assert fresh.startswith("train-") and (storage / fresh / "last.pt").is_file()
