"""A sick MLflow store: one line naming it, within a minute, and nothing lost.

Every stage and command that talks to MLflow waits for a server by one policy, the ``mlflow.*``
keys of params.yaml (segflow.config.MlflowParams), put into MLflow's own settings before the
first call. These tests run the register stage (the stage whose MLflow calls matter most: it
moves the champion alias) and ``segflow predict`` against a socket that accepts connections and
never answers, a port nothing listens on and a read-only sqlite store.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import mlflow
import numpy as np
import pytest

from segflow.lifecycle.registration import CHAMPION, register_model
from tests.test_lifecycle_errors import evaluated_project, one_error_line, run_stage
from tests.test_registry import (
    CLASSES,
    HASH_A,
    SERVING,
    first_champion,
    segflow_cli,
    write_checkpoint,
)

#: The promise: a store that does not work is an error within a minute (process start included).
MINUTE = 60.0
#: MLflow's own defaults (7 retries, 120 s per request), as a user may have them exported: the
#: policy of params.yaml replaces them.
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7", "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}


@pytest.fixture
def silent_server() -> Iterator[SimpleNamespace]:
    """A socket on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)  # kept open, unanswered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    yield SimpleNamespace(port=port, url=f"http://127.0.0.1:{port}", held=held)
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_register(project, uri: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = run_stage(project, "register", MLFLOW_TRACKING_URI=uri, **env)
    return result, time.monotonic() - start


@pytest.mark.integration
def test_register_against_a_server_that_never_answers_fails_within_a_minute_naming_it(
    tmp_path, silent_server
):
    project = evaluated_project(tmp_path)
    before = {rel: project.digest(rel) for rel in ("reports", "models")}
    # Credentials in the URI (basic auth) must not reach the message.
    uri = f"http://admin:s3cret@127.0.0.1:{silent_server.port}"

    result, took = timed_register(project, uri, **MLFLOW_DEFAULTS)

    line = one_error_line(result)
    assert took < MINUTE, f"{took:.0f} s"
    assert silent_server.held, "the client never connected: not the no-answer case"
    assert line.startswith(f"error: MLflow store {silent_server.url}: cannot be read: ")
    assert "no answer within 10 s in 3 tries" in line  # the defaults of params.yaml's mlflow.*
    assert "s3cret" not in result.stderr + result.stdout
    assert {rel: project.digest(rel) for rel in before} == before


@pytest.mark.integration
def test_register_against_a_server_that_is_down_fails_in_seconds_naming_it(tmp_path):
    project = evaluated_project(tmp_path)
    before = {rel: project.digest(rel) for rel in ("reports", "models")}
    url = f"http://127.0.0.1:{closed_port()}"

    result, took = timed_register(project, url, **MLFLOW_DEFAULTS)

    line = one_error_line(result)
    assert took < MINUTE, f"{took:.0f} s"
    assert line.startswith(f"error: MLflow store {url}: cannot be read: connection refused")
    assert {rel: project.digest(rel) for rel in before} == before


@pytest.mark.integration
def test_the_http_policy_is_the_one_in_params_yaml(tmp_path, silent_server):
    project = evaluated_project(tmp_path)
    params = project.root / "params.yaml"
    params.write_text(params.read_text() + "mlflow:\n  http_retries: 0\n  http_timeout_s: 1\n")

    result, took = timed_register(project, silent_server.url, **MLFLOW_DEFAULTS)

    assert "no answer within 1 s in 1 try" in one_error_line(result)
    assert took < 20, f"{took:.0f} s"  # process start and one 1 s wait, not 8 x 120 s


@pytest.mark.integration
def test_predict_against_a_server_that_never_answers_fails_within_a_minute(tmp_path, silent_server):
    cv2.imwrite(str(tmp_path / "in.png"), np.zeros((8, 8, 3), np.uint8))
    start = time.monotonic()
    result = segflow_cli(
        "predict", "in.png", "--model", "models:/segflow-x@champion",
        uri=silent_server.url, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - start

    line = one_error_line(result)
    assert took < MINUTE, f"{took:.0f} s"
    assert "models:/segflow-x@champion: cannot load the model" in line
    assert not (tmp_path / "in_mask.png").exists()


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` and its files read-only: by mode, and for root (whom modes do not stop)
    by a read-only bind mount over it; skips the test where neither can hold."""
    for path in [directory, *directory.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    mounted = False
    if os.geteuid() == 0:
        target = str(directory)
        bind = subprocess.run(["mount", "--bind", target, target], capture_output=True)
        if bind.returncode != 0:
            pytest.skip(f"running as root and cannot bind-mount: {bind.stderr.decode().strip()}")
        mounted = True
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", target], capture_output=True)
        if remount.returncode != 0:
            subprocess.run(["umount", target], check=True)
            pytest.skip(f"cannot remount read-only: {remount.stderr.decode().strip()}")
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(directory)], check=True)
        for path in [directory, *directory.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture
def store_with_a_champion(tmp_path, monkeypatch) -> SimpleNamespace:
    """A sqlite store with a training run and version 1 of segflow-bands as champion."""
    root = tmp_path / "store"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("test", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    checkpoint = write_checkpoint(tmp_path / "best.pt")
    version = register_model(
        run.info.run_id, "bands", {"miou": 0.5}, 0.5, SERVING, CLASSES, checkpoint, HASH_A,
        prefix="segflow",
    )  # fmt: skip
    first_champion(version)
    return SimpleNamespace(root=root, run_id=run.info.run_id, name=version.name)


def champion_and_versions(uri: str, name: str) -> tuple[str, int]:
    client = mlflow.MlflowClient(uri)
    champion = client.get_model_version_by_alias(name, CHAMPION).version
    return str(champion), len(client.search_model_versions(f"name = '{name}'"))


@pytest.mark.integration
def test_register_with_a_read_only_store_is_one_line_and_keeps_the_champion(
    tmp_path, store_with_a_champion
):
    store = store_with_a_champion
    copy = tmp_path / "read-only"
    copy.mkdir()
    shutil.copy(store.root / "mlflow.db", copy / "mlflow.db")
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    assert champion_and_versions(uri, store.name) == ("1", 1)
    project = evaluated_project(tmp_path)
    (project.root / "models" / "run.json").write_text(json.dumps({"mlflow_run_id": store.run_id}))
    before = {rel: project.digest(rel) for rel in ("reports", "models")}

    with read_only(copy):
        result = run_stage(project, "register", MLFLOW_TRACKING_URI=uri)
        after = champion_and_versions(uri, store.name)

    line = one_error_line(result)
    assert line.startswith(f"error: MLflow store {uri}: ")
    assert "readonly database" in line
    assert after == ("1", 1)  # the champion alias where it was, no new version
    assert {rel: project.digest(rel) for rel in before} == before
