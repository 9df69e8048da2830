"""infra/ and the README describe the one cluster configuration tests/cluster runs.

README "Running on a cluster" names two params (``shard.uri``, ``train.storage_path``) and the
environment every node needs; here the same names and values are read back from the files a
user deploys: the README's params parse with segflow's schema and point into the bucket the
compose file's minio-init makes (with a policy reaching that bucket alone), the variables are
the ones retrain.env (the Kubernetes Secret) holds, every Ray pod reads that Secret, and no
worker pod mounts a disk it would share with the head. The end-to-end test uses exactly those
params.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from segflow.config import parse_params
from tests.cluster.test_cluster import RUNS, SHARDS
from tests.test_infra_rules import _dotenv, _minio_init, _resources

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
NODE_ENV = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_URI"}


def cluster_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Running on a cluster\n")
    return text[start : text.index("\n### ", start + 1)]


def readme_params() -> dict:
    snippet = re.search(r"```yaml\n# params.yaml\n(.*?)```", cluster_section(), re.S)
    return yaml.safe_load(snippet.group(1))


def test_the_readme_params_are_valid_and_point_into_the_bucket_minio_init_makes(tmp_path):
    params = readme_params()
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    merged = parse_params({**base, **{k: {**base[k], **v} for k, v in params.items()}})
    bucket = _dotenv()["CLUSTER_BUCKET"]
    assert merged.shard.uri.startswith(f"s3://{bucket}/")
    assert merged.train.storage_path.startswith(f"s3://{bucket}/")

    calls, record = _minio_init(tmp_path, _dotenv(MINIO_ROOT_PASSWORD="root-secret-123"))
    assert calls[1][:2] == ["mb", "--ignore-existing"] and f"local/{bucket}" in calls[1]
    policy = json.loads((record / "segflow-cluster.json").read_text())
    assert _resources(policy) == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}


def test_the_end_to_end_test_runs_exactly_the_readme_params():
    params = readme_params()
    assert (params["shard"]["uri"], params["train"]["storage_path"]) == (SHARDS, RUNS)


def test_the_node_environment_of_the_readme_is_what_the_secret_holds():
    exported = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", cluster_section()))
    assert exported >= NODE_ENV
    secret = (INFRA / "schedule" / "retrain.env.example").read_text()
    assert NODE_ENV | {"RAY_ADDRESS"} <= set(re.findall(r"^(\w+)=", secret, re.MULTILINE))


def test_every_ray_pod_reads_the_secret_and_no_worker_shares_a_disk_with_the_head():
    docs = list(yaml.safe_load_all((INFRA / "ray" / "raycluster.yaml").read_text()))
    cluster = next(d for d in docs if d and d["kind"] == "RayCluster")["spec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # tasks run on workers, not beside the data
    for group in [head, *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert {"secretRef": {"name": "segflow-env"}} in container["envFrom"]
    for group in cluster["workerGroupSpecs"]:
        volumes = group["template"]["spec"].get("volumes", [])
        assert not [v for v in volumes if "persistentVolumeClaim" in v], group["groupName"]


def test_the_tracking_server_keeps_runs_in_postgres_and_serves_artifacts_from_s3():
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yml").read_text())
    args = compose["services"]["mlflow"]["command"]
    assert any(a.startswith("--backend-store-uri=postgresql+psycopg2://") for a in args)
    assert any(a.startswith("--artifacts-destination=s3://") for a in args)
    assert "--serve-artifacts" in args
