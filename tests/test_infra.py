"""The deployment files under infra/ and the README tables that describe them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segflow.config import load_params

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
README = REPO / "README.md"
DVC = Path(sys.executable).parent / "dvc"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kind(path: Path, kind: str) -> dict:
    return next(d for d in _docs(path) if d["kind"] == kind)


def _readme_table(first_header: str) -> list[dict[str, str]]:
    """The rows of the README table whose first column is headed ``first_header``."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)))
    return rows


def _code(cell: str) -> str:
    """The first `code` span of a table cell."""
    return re.search(r"`([^`]+)`", cell).group(1)


def test_every_yaml_file_under_infra_parses_with_all_its_documents():
    files = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])
    assert len(files) >= 4
    for path in files:
        assert _docs(path), path
    # YAML embedded in a ConfigMap (the RayJob the CronJob submits) parses too
    config_map = _kind(INFRA / "schedule" / "k8s-retrain.yaml", "ConfigMap")
    assert yaml.safe_load(config_map["data"]["rayjob.yaml"])["kind"] == "RayJob"


def test_cronjob_runs_on_the_schedule_of_params_yaml():
    schedule = load_params(REPO / "params.yaml").retrain.schedule
    cronjob = _kind(INFRA / "schedule" / "k8s-retrain.yaml", "CronJob")
    assert cronjob["spec"]["schedule"] == schedule
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["successfulJobsHistoryLimit"] >= 1
    assert cronjob["spec"]["failedJobsHistoryLimit"] >= 1


def test_cronjob_submits_a_rayjob_that_runs_segflow_retrain_in_the_workspace_checkout():
    manifest = INFRA / "schedule" / "k8s-retrain.yaml"
    config_map = _kind(manifest, "ConfigMap")
    rayjob = yaml.safe_load(config_map["data"]["rayjob.yaml"])
    assert rayjob["apiVersion"] == "ray.io/v1"
    assert rayjob["metadata"]["generateName"].endswith("-")  # a new RayJob per run
    assert "name" not in rayjob["metadata"]
    # KubeRay pastes the entrypoint into a shell line: it must split into one command
    words = shlex.split(rayjob["spec"]["entrypoint"])
    assert words[:2] == ["bash", "-c"] and len(words) == 3
    assert words[2] == "cd /workspace/segflow && segflow retrain"

    # it runs on the RayCluster of infra/ray, whose head mounts the workspace at /workspace
    cluster = _kind(INFRA / "ray" / "raycluster.yaml", "RayCluster")
    assert rayjob["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volume = next(v for v in head["volumes"] if v["name"] == mounts["/workspace"])
    claim = _kind(INFRA / "ray" / "raycluster.yaml", "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # the head's alone: the workers share no disk with it (tests/test_infra_cluster.py)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"secretRef": {"name": "segflow-env"}} in head["containers"][0]["envFrom"]

    # the CronJob's pod creates it from the ConfigMap with a service account allowed to
    pod = _kind(manifest, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = config_map["data"]["submit.sh"]
    assert "kubectl create -f /etc/segflow-retrain/rayjob.yaml" in script
    mount = pod["containers"][0]["volumeMounts"][0]
    assert mount["mountPath"] == "/etc/segflow-retrain"
    assert pod["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    role = _kind(manifest, "Role")
    binding = _kind(manifest, "RoleBinding")
    assert {"create", "get"} <= set(role["rules"][0]["verbs"])
    assert role["rules"][0]["resources"] == ["rayjobs"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def test_bash_accepts_the_submit_script():
    script = _kind(INFRA / "schedule" / "k8s-retrain.yaml", "ConfigMap")["data"]["submit.sh"]
    result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_raycluster_groups_are_the_ones_the_readme_describes():
    cluster = _kind(INFRA / "ray" / "raycluster.yaml", "RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == __import__("ray").__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {"head": (1, 1, head["template"])}
    for group in cluster["workerGroupSpecs"]:
        groups[group["groupName"]] = (group["minReplicas"], group["maxReplicas"], group["template"])

    rows = _readme_table("group")
    assert {row["group"] for row in rows} == set(groups)
    for row in rows:
        low, high, template = groups[row["group"]]
        container = template["spec"]["containers"][0]
        assert container["image"].startswith("segflow:")
        limits = container["resources"]["limits"]
        assert row["replicas min/max"] == f"{low}/{high}"
        assert row["CPU"] == str(limits["cpu"])
        assert row["GPU"] == str(limits.get("nvidia.com/gpu", 0))
        assert row["memory"] == limits["memory"]
        assert container["resources"]["requests"] == limits  # guaranteed QoS: no eviction
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0


def test_only_kuberay_and_the_retrain_submitter_reach_the_ray_job_api():
    """The job API runs any command unauthenticated: a NetworkPolicy on the head decides."""
    manifest = INFRA / "ray" / "raycluster.yaml"
    cluster = _kind(manifest, "RayCluster")
    policy = _kind(manifest, "NetworkPolicy")["spec"]
    # KubeRay labels the head pod with its cluster's name and node type
    head = {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}
    assert policy["podSelector"]["matchLabels"] == head
    assert policy["policyTypes"] == ["Ingress"]
    own, job_api = policy["ingress"]
    assert own["from"] == [{"podSelector": {"matchLabels": {"ray.io/cluster": "segflow"}}}]
    assert job_api["ports"] == [{"port": 8265, "protocol": "TCP"}]
    sources = [peer["podSelector"]["matchLabels"] for peer in job_api["from"]]
    operator = {"app.kubernetes.io/name": "kuberay-operator"}
    assert operator in sources  # in the operator's own namespace only
    namespace = job_api["from"][sources.index(operator)]["namespaceSelector"]
    assert namespace == {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}}

    # the scheduled retrain's submitter pod carries the label the policy lets through
    config_map = _kind(INFRA / "schedule" / "k8s-retrain.yaml", "ConfigMap")
    rayjob = yaml.safe_load(config_map["data"]["rayjob.yaml"])
    submitter = rayjob["spec"]["submitterPodTemplate"]
    assert submitter["metadata"]["labels"] in sources
    assert (
        submitter["spec"]["containers"][0]["image"]
        == (cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"])
    )
    assert "command" not in submitter["spec"]["containers"][0]  # KubeRay's `ray job submit`


def test_the_cluster_launcher_head_serves_the_dashboard_on_localhost_only():
    config = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start


def test_compose_services_are_the_ones_the_readme_describes():
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yml").read_text())
    services = compose["services"]
    rows = {row["service"].strip("`"): row for row in _readme_table("service")}
    assert set(rows) == set(services)
    for name, service in services.items():
        row = rows[name]
        assert _code(row["image"]) == service["image"], name
        published = {int(p.rsplit(":", 2)[-2]) for p in service.get("ports", [])}  # host port
        documented = {int(p) for p in re.findall(r"\d+", row["port"])}
        assert documented == published, name


def test_mlflow_server_uses_postgres_minio_and_basic_auth():
    services = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yml").read_text())["services"]
    mlflow = services["mlflow"]
    args = " ".join(mlflow["command"])
    assert "--app-name=basic-auth" in args
    assert "--backend-store-uri=postgresql+psycopg2://mlflow@postgres:5432/mlflow" in args
    assert "--artifacts-destination=s3://" in args and "--serve-artifacts" in args
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "minio", "mlflow"):
        assert "healthcheck" in services[name], name

    # the auth database is PostgreSQL too, created by the init script, with no password inline
    import configparser

    ini = configparser.ConfigParser()
    ini.read(INFRA / "mlflow" / "basic_auth.ini")
    assert ini["mlflow"]["database_uri"] == "postgresql+psycopg2://mlflow@postgres:5432/mlflow_auth"
    assert (
        "CREATE DATABASE mlflow_auth"
        in (INFRA / "mlflow" / "initdb" / "10-mlflow-role.sh").read_text()
    )
    env_example = (INFRA / "mlflow" / ".env.example").read_text()
    compose_text = (INFRA / "mlflow" / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", compose_text))  # ${VAR:?...}: must be set
    assert required <= set(re.findall(r"^(\w+)=", env_example, re.MULTILINE))


def _compose() -> dict:
    return yaml.safe_load((INFRA / "mlflow" / "docker-compose.yml").read_text())


def _env_example() -> dict[str, str]:
    text = (INFRA / "mlflow" / ".env.example").read_text()
    return dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE))


def _check_secrets(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The check-secrets service's script, as its container runs it, with ``env`` as .env."""
    service = _compose()["services"]["check-secrets"]
    shell, flag, script = service["entrypoint"]
    values = {
        name: re.sub(r"\$\{(\w+):-\}", lambda m: env.get(m.group(1), ""), value)
        for name, value in service["environment"].items()
    }
    return subprocess.run(
        ["sh", flag, script.replace("$$", "$")],  # $$ is compose's escape for $
        env={"PATH": "/usr/bin:/bin", **values},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_stack_refuses_to_start_with_the_placeholder_secrets_of_env_example():
    services = _compose()["services"]
    secrets = set(services["check-secrets"]["environment"])
    placeholders = {k for k, v in _env_example().items() if v.startswith("change-me")}
    assert placeholders == secrets

    refused = _check_secrets(_env_example())
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    assert len(lines) == len(secrets)
    for name, line in zip(sorted(secrets), sorted(lines), strict=True):
        assert line.startswith(f"infra/mlflow/.env: {name} still has the placeholder value")

    own = {**_env_example(), **{name: f"s3cret-{name.lower()}-0123456789" for name in secrets}}
    assert _check_secrets(own).returncode == 0

    def needs(name: str) -> set[str]:
        direct = set(services[name].get("depends_on", {}))
        return direct.union(*(needs(d) for d in direct))

    # nothing that reads a secret starts before the check has passed
    for name in ("postgres", "minio"):
        condition = services[name]["depends_on"]["check-secrets"]["condition"]
        assert condition == "service_completed_successfully", name
    for name in ("minio-init", "mlflow"):
        assert "check-secrets" in needs(name), name


def test_mlflow_and_minio_listen_on_localhost_unless_bind_address_says_otherwise():
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)
    assert _env_example()["BIND_ADDRESS"] == "127.0.0.1"
    assert "BIND_ADDRESS" in README.read_text()


def test_mlflow_image_pins_the_mlflow_version_segflow_is_tested_with():
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert "-c /tmp/constraints.txt" in dockerfile
    assert '"mlflow[auth]"' in dockerfile and "psycopg2-binary" in dockerfile
    pin = re.search(r"^mlflow==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yml").read_text())
    assert compose["services"]["mlflow"]["image"].endswith(f":{pin.group(1)}")


def test_segflow_image_contains_the_project_and_the_cpu_or_cuda_torch():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    for path in ("segflow", "pipelines", "dvc.yaml params.yaml", ".dvc/config"):
        assert re.search(rf"^COPY .*{re.escape(path)}", dockerfile, re.MULTILINE), path
    assert "ARG TORCH_VARIANT=cpu" in dockerfile
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in dockerfile
    assert "kubectl" in dockerfile  # the CronJob's submitter uses this image
    ignored = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "data", ".dvc/cache", ".dvc/config.local"} <= set(ignored)


def test_ray_cluster_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text()))
    validate_config(config)  # what `ray up` runs before it launches anything
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu"]["min_workers"] == 0
    assert "~/segflow" in config["file_mounts"]
    assert any("-e ." in cmd for cmd in config["setup_commands"])


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(DVC), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def _readme_dvc_commands(section: str) -> list[list[str]]:
    """The `dvc remote` commands of one section of infra/dvc/README.md."""
    text = (INFRA / "dvc" / "README.md").read_text().split(f"## {section}", 1)[1]
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("dvc remote ")]


@pytest.fixture
def dvc_repo(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    _dvc("init", "-q", cwd=tmp_path)
    return tmp_path


@pytest.mark.integration  # starts a segflow/dvc process or a server
@pytest.mark.parametrize(("section", "remote"), [("MinIO", "minio"), ("AWS S3", "s3")])
def test_dvc_reads_the_documented_remote_config(dvc_repo, section, remote):
    snippet = INFRA / "dvc" / f"remote-{remote}.config"
    with (dvc_repo / ".dvc" / "config").open("a") as config:
        config.write(snippet.read_text())
    _dvc("remote", "default", remote, cwd=dvc_repo)
    assert _dvc("remote", "default", cwd=dvc_repo).stdout.strip() == remote
    listed = _dvc("remote", "list", cwd=dvc_repo).stdout
    assert listed.split()[0] == remote and listed.split()[1].startswith("s3://")
    from_snippet = set(_dvc("config", "-l", "--project", cwd=dvc_repo).stdout.splitlines())

    # the README's commands produce the same settings in a fresh repo
    fresh = dvc_repo / "fresh"
    fresh.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=fresh, check=True)
    _dvc("init", "-q", cwd=fresh)
    commands = _readme_dvc_commands(section)
    assert commands
    for words in commands:
        if "--local" not in words:  # credentials: .dvc/config.local, never committed
            _dvc(*words[1:], cwd=fresh)
    from_commands = set(_dvc("config", "-l", "--project", cwd=fresh).stdout.splitlines())
    assert {s for s in from_commands if s.startswith("remote.")} == {
        s for s in from_snippet if s.startswith("remote.")
    }
    assert f"core.remote={remote}" in from_commands
