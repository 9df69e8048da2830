"""A cluster's tracking server: `mlflow server` on PostgreSQL, artifacts in S3, served by it.

The runs, the registered model and its versions land in the PostgreSQL database; the model's
files land in the S3 bucket, uploaded through the server (``--serve-artifacts``): this process
has the server's URL and nothing else, no S3 endpoint, no keys, as a Ray worker of a cluster
that only reaches the tracking server.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from segflow import tracking
from segflow.lifecycle.registration import CHAMPION, register_model
from tests.test_registry import CLASSES, HASH_A, SERVING, first_champion, write_checkpoint

pytestmark = pytest.mark.integration


def rows(postgres, query: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(postgres.dsn("mlflow")) as connection, connection.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchall()


def test_a_run_its_model_and_the_champion_land_in_postgres_and_the_bucket(
    cluster_tracking, postgres_server, s3_server, tmp_path, monkeypatch
):
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)  # the client reaches S3 only through the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cluster_tracking.url)
    mlflow.set_tracking_uri(cluster_tracking.url)
    experiment = tracking.setup("cluster", tmp_path)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("val_miou", 0.5)

    version = register_model(
        run.info.run_id, "cluster", {"miou": 0.5}, 0.5, SERVING, CLASSES,
        write_checkpoint(tmp_path / "best.pt"), HASH_A, prefix="segflow",
    )  # fmt: skip
    first_champion(version)

    assert rows(postgres_server, f"SELECT status FROM runs WHERE run_uuid = '{run.info.run_id}'")
    aliases = rows(
        postgres_server,
        f"SELECT alias FROM registered_model_aliases WHERE name = '{version.name}'",
    )
    assert (CHAMPION,) in aliases
    keys = s3_server.keys("mlflow")
    assert all(key.startswith("mlartifacts/") for key in keys)
    assert any(key.endswith("/MLmodel") for key in keys)
    assert any(key.endswith("best.pt") for key in keys), keys
    model = mlflow.pyfunc.load_model(f"models:/{version.name}@{CHAMPION}")
    labels = model.predict(np.zeros((20, 28, 3), np.uint8))
    assert labels.shape == (20, 28)
