"""The security defaults of infra/: each rule reads the files as their tools do and fails on a
regression (an open port, a root container, an unpinned image, a root key handed to a client).

Where a file carries a script (the CronJob's submitter, the compose stack's init services, the
cluster launcher's set-up), the script runs here against stand-ins for kubectl, mc or curl, and
the database init script against a real PostgreSQL when one is installed.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
RAYCLUSTER = INFRA / "ray" / "raycluster.yaml"
RETRAIN = INFRA / "schedule" / "k8s-retrain.yaml"
COMPOSE = INFRA / "mlflow" / "docker-compose.yml"
DOCKERFILES = [INFRA / "docker" / "Dockerfile", INFRA / "mlflow" / "Dockerfile"]
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
#: Where the image's user (uid 1000, `useradd --create-home segflow`) has its home.
IMAGE_HOME = "/home/segflow"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kind(path: Path, kind: str) -> dict:
    return next(d for d in _docs(path) if d["kind"] == kind)


def _write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


# -- Kubernetes: who runs what ------------------------------------------------------------------


def _pods() -> dict[str, dict]:
    """Every pod template in the Kubernetes manifests, by a name that says where it is."""
    cluster = _kind(RAYCLUSTER, "RayCluster")["spec"]
    pods = {"ray head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        pods[f"ray group {group['groupName']}"] = group["template"]["spec"]
    cronjob = _kind(RETRAIN, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pods["retrain CronJob"] = cronjob
    rayjob = yaml.safe_load(_kind(RETRAIN, "ConfigMap")["data"]["rayjob.yaml"])
    pods["RayJob submitter"] = rayjob["spec"]["submitterPodTemplate"]["spec"]
    return pods


def test_the_manifests_hold_no_workload_these_rules_do_not_see():
    """A Deployment or a bare Pod added later must be added to _pods() to be checked."""
    kinds = {d["kind"] for path in (RAYCLUSTER, RETRAIN) for d in _docs(path)}
    assert kinds == {
        "PersistentVolumeClaim",
        "RayCluster",
        "NetworkPolicy",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "CronJob",
    }


def _container_violations(where: str, security: dict | None) -> list[str]:
    security = security or {}
    wrong = []
    if security.get("allowPrivilegeEscalation") is not False:
        wrong.append(f"{where}: allowPrivilegeEscalation is not false")
    if security.get("readOnlyRootFilesystem") is not True:
        wrong.append(f"{where}: readOnlyRootFilesystem is not true")
    if security.get("capabilities") != {"drop": ["ALL"]}:
        wrong.append(f"{where}: capabilities are not exactly drop [ALL]")
    if security.get("privileged"):
        wrong.append(f"{where}: privileged")
    return wrong


def test_every_container_runs_as_a_non_root_user_without_privileges():
    wrong = []
    for name, pod in _pods().items():
        security = pod.get("securityContext", {})
        if security.get("runAsNonRoot") is not True:
            wrong.append(f"{name}: runAsNonRoot is not true")
        # numeric: the kubelet can check runAsNonRoot without reading the image's /etc/passwd
        if not isinstance(security.get("runAsUser"), int) or security["runAsUser"] == 0:
            wrong.append(f"{name}: runAsUser is not a non-zero uid")
        if security.get("seccompProfile") != {"type": "RuntimeDefault"}:
            wrong.append(f"{name}: no RuntimeDefault seccomp profile")
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            where = f"{name}/{container['name']}"
            wrong += _container_violations(where, container.get("securityContext"))
    assert wrong == []


def test_the_autoscaler_container_kuberay_adds_to_the_head_is_restricted_too():
    options = _kind(RAYCLUSTER, "RayCluster")["spec"]["autoscalerOptions"]
    assert _container_violations("autoscaler", options.get("securityContext")) == []
    head = _pods()["ray head"]
    volumes = {v["name"]: v for v in head["volumes"]}
    for mount in options["volumeMounts"]:
        assert "emptyDir" in volumes[mount["name"]], mount


def test_read_only_containers_write_only_to_volumes():
    """/tmp (Ray's session directory), HOME and DVC's site cache are emptyDirs, not the image."""
    for name, pod in _pods().items():
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in empty_dirs, f"{where}: /tmp is not an emptyDir"
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            home = env.get("HOME", IMAGE_HOME)
            writable = [path for path, volume in mounts.items() if volume in empty_dirs]
            assert any(home == p or home.startswith(f"{p}/") for p in writable), where
    head = _pods()["ray head"]["containers"][0]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert env["DVC_SITE_CACHE_DIR"].startswith("/tmp/")  # DVC runs on the head only


# -- Kubernetes: who reaches what ---------------------------------------------------------------


def _policies() -> list[dict]:
    return [d["spec"] for d in _docs(RAYCLUSTER) if d["kind"] == "NetworkPolicy"]


def _ports(rule: dict) -> set[tuple[int, int]]:
    """A rule's TCP ports as (first, last) ranges."""
    assert all(p["protocol"] == "TCP" for p in rule["ports"])
    return {(p["port"], p.get("endPort", p["port"])) for p in rule["ports"]}


def _ray_ports(params: dict[str, str]) -> set[tuple[int, int]]:
    """What a node listens on for other nodes, as its ray start params fix it."""
    assert set(params) >= {
        "object-manager-port",
        "node-manager-port",
        "dashboard-agent-grpc-port",
        "dashboard-agent-listen-port",
        "min-worker-port",
        "max-worker-port",
    }, "a Ray port left to chance cannot be named in a NetworkPolicy"
    single = [
        "object-manager-port",
        "node-manager-port",
        "dashboard-agent-grpc-port",
        "dashboard-agent-listen-port",
    ]
    ports = {(int(params[k]), int(params[k])) for k in single}
    return ports | {(int(params["min-worker-port"]), int(params["max-worker-port"]))}


def _kuberay_labels(cluster: dict, group: str | None) -> dict[str, str]:
    """The labels KubeRay puts on the pods of the head (group None) or of a worker group."""
    node_type, group_name = ("head", "headgroup") if group is None else ("worker", group)
    return {
        "ray.io/cluster": cluster["metadata"]["name"],
        "ray.io/node-type": node_type,
        "ray.io/group": group_name,
    }


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def _rules_for(labels: dict[str, str]) -> list[dict]:
    return [
        rule
        for policy in _policies()
        if _selects(policy["podSelector"], labels)
        for rule in policy["ingress"]
    ]


def test_every_ray_pod_has_a_network_policy():
    cluster = _kind(RAYCLUSTER, "RayCluster")
    groups = [None] + [g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        assert _rules_for(_kuberay_labels(cluster, group)), group or "head"
    for policy in _policies():
        assert policy["policyTypes"] == ["Ingress"]


def test_ray_nodes_reach_one_another_only_on_the_ports_ray_uses():
    """GCS, object and node manager, dashboard agent, dashboard, worker range; no client port."""
    cluster = _kind(RAYCLUSTER, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]["rayStartParams"]
    node_ports = _ray_ports(head)
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert _ray_ports(group["rayStartParams"]) == node_ports, group["groupName"]
    gcs = int(head.get("port", 6379))
    dashboard = int(head.get("dashboard-port", 8265))

    own = {"podSelector": {"matchLabels": {"ray.io/cluster": cluster["metadata"]["name"]}}}
    head_rules = _rules_for(_kuberay_labels(cluster, None))
    from_cluster = [r for r in head_rules if own in r["from"]]
    assert len(from_cluster) == 1
    assert _ports(from_cluster[0]) == node_ports | {(gcs, gcs), (dashboard, dashboard)}
    assert (10001, 10001) not in _ports(from_cluster[0])  # Ray client server: nobody uses it

    for group in cluster["spec"]["workerGroupSpecs"]:
        labels = _kuberay_labels(cluster, group["groupName"])
        for rule in _rules_for(labels):
            peers = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
            if "ports" in rule:
                assert _ports(rule) == node_ports, peers
            else:
                # every port, for torch.distributed, but only from this very group
                assert peers == [{"ray.io/cluster": "segflow", "ray.io/group": group["groupName"]}]


def test_every_peer_of_a_policy_is_a_pod_of_this_namespace_or_a_named_namespace():
    """No empty `from` (anyone), no namespaceSelector that matches every namespace."""
    for policy in _policies():
        for rule in policy["ingress"]:
            assert rule.get("from"), rule
            for peer in rule["from"]:
                assert peer["podSelector"]["matchLabels"], peer
                if "namespaceSelector" in peer:
                    names = peer["namespaceSelector"]["matchLabels"]
                    assert list(names) == ["kubernetes.io/metadata.name"], peer


def test_the_job_api_is_reached_only_by_kuberay_in_its_namespace_and_the_submitter():
    cluster = _kind(RAYCLUSTER, "RayCluster")
    dashboard = (8265, 8265)
    own = {"ray.io/cluster": cluster["metadata"]["name"]}
    allowed = []
    for rule in _rules_for(_kuberay_labels(cluster, None)):
        if dashboard in _ports(rule):
            allowed += rule["from"]
    outside = [peer for peer in allowed if peer["podSelector"]["matchLabels"] != own]
    assert outside == [
        {"podSelector": {"matchLabels": {"segflow.io/ray-job-client": "true"}}},
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
        },
    ]


# -- images -------------------------------------------------------------------------------------


def _from_images(dockerfile: Path) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), re.MULTILINE)


def test_every_base_image_is_pinned_by_digest():
    for dockerfile in DOCKERFILES:
        images = _from_images(dockerfile)
        assert images, dockerfile
        for image in images:
            assert DIGEST.search(image) and ":" in image.split("@")[0], (dockerfile, image)
    for name, service in yaml.safe_load(COMPOSE.read_text())["services"].items():
        if "build" in service:  # built here from a pinned Dockerfile
            assert not DIGEST.search(service["image"]), name
            continue
        assert DIGEST.search(service["image"]), (name, service["image"])


def test_git_in_the_image_trusts_only_the_checkout_the_cluster_mounts():
    text = (INFRA / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    trusted = re.findall(r"safe\.directory\s+(\S+)", text)
    head = _kind(RAYCLUSTER, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    assert trusted == [head["containers"][0]["workingDir"]]
    assert "*" not in text.split("safe.directory", 1)[1].split("\n", 1)[0]


def test_the_images_run_as_a_numeric_non_root_user():
    for dockerfile in DOCKERFILES:
        users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), (dockerfile, users[-1])


# -- the MLflow stack: least privilege ----------------------------------------------------------


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?message}, for the values used here."""

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} must be set: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def _dotenv(**overrides: str) -> dict[str, str]:
    text = (INFRA / "mlflow" / ".env.example").read_text()
    return {**dict(re.findall(r"^(\w+)=(.*)$", text, re.MULTILINE)), **overrides}


def _service_env(service: dict, env: dict[str, str]) -> dict[str, str]:
    return {k: _interpolate(str(v), env) for k, v in service.get("environment", {}).items()}


def test_mlflow_holds_neither_the_database_superuser_nor_minio_root_keys():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mlflow_env = " ".join(str(v) for v in services["mlflow"]["environment"].values())
    assert "MINIO_ROOT" not in mlflow_env and "POSTGRES_PASSWORD" not in mlflow_env
    args = " ".join(services["mlflow"]["command"])
    db_user = re.search(r"--backend-store-uri=postgresql\+psycopg2://(\w+)@", args).group(1)
    assert services["postgres"]["environment"]["POSTGRES_USER"] != db_user
    # the root keys: MinIO itself, its one-shot admin, and the placeholder check
    holders = {
        name
        for name, service in services.items()
        if "MINIO_ROOT" in " ".join(str(v) for v in service.get("environment", {}).values())
    }
    assert holders == {"minio", "minio-init", "check-secrets"}
    # DVC clients are told to use a key of their own, never the root keys
    dvc_readme = (INFRA / "dvc" / "README.md").read_text()
    client_lines = [line for line in dvc_readme.splitlines() if line.startswith("dvc remote")]
    assert client_lines and not any("MINIO_ROOT" in line for line in client_lines)
    assert "mc admin policy attach segflow segflow-dvc --user" in dvc_readme


def _minio_init(tmp_path: Path, env: dict[str, str]) -> tuple[list[list[str]], Path]:
    """Run minio-init's script against a stand-in mc; its calls and the policy files it got."""
    service = yaml.safe_load(COMPOSE.read_text())["services"]["minio-init"]
    shell, flag, script = service["entrypoint"]
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    _write_script(
        bin_dir / "mc",
        "#!/bin/bash\n"
        'printf "%s\\0" "$@" >> "$RECORD/calls"; printf "\\n" >> "$RECORD/calls"\n'
        # `mc admin policy create ALIAS NAME FILE`: keep the file the policy came from
        'if [ "$1 $2 $3" = "admin policy create" ]; then cp "$6" "$RECORD/$5.json"; fi\n'
        # a fresh MinIO: nothing is attached yet, so a detach fails
        'if [ "$1 $2 $3" = "admin policy detach" ]; then exit 1; fi\n',
    )
    result = subprocess.run(
        ["sh", flag, script.replace("$$", "$")],  # $$ is compose's escape for $
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "RECORD": str(record),
            "TMPDIR": str(tmp_path),
            **_service_env(service, env),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    calls = [line.split("\0")[:-1] for line in (record / "calls").read_text().splitlines()]
    return calls, record


def _resources(policy: dict) -> set[str]:
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    assert not any("*" in a for s in policy["Statement"] for a in s["Action"])  # no s3:*
    return {r for s in policy["Statement"] for r in s["Resource"]}


def test_minio_init_gives_mlflow_a_user_whose_policy_covers_only_its_bucket(tmp_path):
    env = _dotenv(
        MINIO_ROOT_PASSWORD="root-secret-123",
        MINIO_MLFLOW_PASSWORD="mlflow-s3-secret",
        MLFLOW_BUCKET="artifacts",
        DVC_BUCKET="data",
    )
    calls, record = _minio_init(tmp_path, env)
    assert calls[0] == ["alias", "set", "local", "http://minio:9000", "segflow", "root-secret-123"]
    mlflow_policy = json.loads((record / "segflow-mlflow.json").read_text())
    assert _resources(mlflow_policy) == {"arn:aws:s3:::artifacts", "arn:aws:s3:::artifacts/*"}
    dvc_policy = json.loads((record / "segflow-dvc.json").read_text())
    assert _resources(dvc_policy) == {"arn:aws:s3:::data", "arn:aws:s3:::data/*"}

    assert ["admin", "user", "add", "local", "mlflow", "mlflow-s3-secret"] in calls
    attached = [c for c in calls if c[:3] == ["admin", "policy", "attach"]]
    assert attached == [
        ["admin", "policy", "attach", "local", "segflow-mlflow", "--user", "mlflow"]
    ]

    # the server uses exactly that user, and writes to exactly that bucket
    mlflow = yaml.safe_load(COMPOSE.read_text())["services"]["mlflow"]
    server_env = _service_env(mlflow, env)
    assert server_env["AWS_ACCESS_KEY_ID"] == "mlflow"
    assert server_env["AWS_SECRET_ACCESS_KEY"] == "mlflow-s3-secret"
    args = [_interpolate(a, env) for a in mlflow["command"]]
    assert "--artifacts-destination=s3://artifacts/" in args


@pytest.fixture
def postgres(tmp_path):
    """A throw-away PostgreSQL on a Unix socket whose superuser `postgres` has a password."""
    tools = {t: shutil.which(t) for t in ("initdb", "pg_ctl", "psql")}
    if not all(tools.values()):
        pytest.skip("PostgreSQL's initdb, pg_ctl and psql are not on PATH")
    # PostgreSQL refuses to run as root: as root, run the server as nobody
    as_server = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="segflow-pg-"))
    root.chmod(0o755)
    (root / "pwfile").write_text("superuser-secret\n")
    if as_server:
        nobody = pwd.getpwnam("nobody").pw_uid
        os.chown(root, nobody, -1)
        os.chown(root / "pwfile", nobody, -1)
    data = root / "data"
    run = {"capture_output": True, "text": True, "timeout": 120, "check": True}
    subprocess.run(
        [*as_server, tools["initdb"], "-D", str(data), "-U", "postgres", "-E", "UTF8"]
        + ["--auth=scram-sha-256", f"--pwfile={root / 'pwfile'}"],
        **run,
    )
    options = f"-k {root} -c listen_addresses=''"
    subprocess.run(
        [*as_server, tools["pg_ctl"], "-D", str(data), "-o", options, "-w"]
        + ["-l", str(root / "log"), "start"],
        **run,
    )
    try:
        yield {"PGHOST": str(root), "PGPORT": "5432", "PATH": os.environ["PATH"]}
    finally:
        subprocess.run(
            [*as_server, tools["pg_ctl"], "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_mlflow_database_role_is_no_superuser_and_owns_only_its_two_databases(postgres, tmp_path):
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    uri = re.search(r"postgresql\+psycopg2://(\w+)@postgres:5432/(\w+)", str(services["mlflow"]))
    role, database = uri.groups()
    password = "it's $(touch pwned); DROP ROLE postgres; --"  # quoted by psql, run by no one

    def psql(user: str, secret: str, db: str, sql: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["psql", "--no-psqlrc", "-At", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", db]
            + ["-c", sql],
            env={**postgres, "PGPASSWORD": secret},
            capture_output=True,
            text=True,
            timeout=60,
        )

    init = subprocess.run(
        ["sh", str(INFRA / "mlflow" / "initdb" / "10-mlflow-role.sh")],
        env={
            **postgres,
            "POSTGRES_USER": superuser,
            "PGPASSWORD": "superuser-secret",
            "MLFLOW_DB_PASSWORD": password,
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    assert not (tmp_path / "pwned").exists()

    # MLflow logs in with exactly MLFLOW_DB_PASSWORD and creates its tables in both databases
    for db in (database, "mlflow_auth"):
        created = psql(role, password, db, "CREATE TABLE alembic_version (v text)")
        assert created.returncode == 0, created.stderr
    attributes = psql(
        superuser,
        "superuser-secret",
        "postgres",
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
        f"FROM pg_roles WHERE rolname = '{role}'",
    )
    assert attributes.stdout.split() == ["f|f|f|f|f"]
    owned = psql(
        superuser,
        "superuser-secret",
        "postgres",
        f"SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = '{role}' ORDER BY 1",
    )
    assert owned.stdout.split() == sorted([database, "mlflow_auth"])
    assert psql(role, password, "postgres", "CREATE DATABASE other").returncode != 0
    assert psql(role, password, "postgres", "CREATE ROLE other").returncode != 0
    # and another role may not even connect to MLflow's data
    psql(superuser, "superuser-secret", "postgres", "CREATE ROLE reader LOGIN PASSWORD 'r3ad'")
    refused = psql("reader", "r3ad", database, "SELECT 1")
    assert refused.returncode != 0 and "permission denied" in refused.stderr


# -- the scheduled retrain's submitter ----------------------------------------------------------


def _submit_script() -> str:
    return _kind(RETRAIN, "ConfigMap")["data"]["submit.sh"]


def _wait_bound() -> int:
    return int(re.search(r"\$\(date \+%s\) \+ (\d+)", _submit_script()).group(1))


def test_the_submitter_waits_longer_than_the_rayjob_may_run_but_less_than_its_own_job():
    rayjob = yaml.safe_load(_kind(RETRAIN, "ConfigMap")["data"]["rayjob.yaml"])
    job = _kind(RETRAIN, "CronJob")["spec"]["jobTemplate"]["spec"]
    assert rayjob["spec"]["activeDeadlineSeconds"] < _wait_bound()
    assert _wait_bound() < job["activeDeadlineSeconds"]


def _submit(tmp_path: Path, states: list[str], job_status: str) -> tuple[int, str, str, int]:
    """Run submit.sh against a stand-in kubectl whose RayJob goes through ``states``.

    The stand-in clock moves an hour on every reading and sleep returns at once, so a day's
    wait takes a moment. Returns the exit code, stdout, stderr and the number of status polls.
    """
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "states").write_text("".join(f"{s}\n" for s in states))
    (fake / "job_status").write_text(job_status)
    (fake / "clock").write_text("1000000")
    job = "rayjob.ray.io/segflow-retrain-x7k2q"
    _write_script(
        fake / "kubectl",
        "#!/bin/bash\n"
        'case "$1 $2" in\n'
        f"  'create -f') echo {job} ;;\n"
        "  'get rayjobs') ;;\n"
        f"  'get {job}')\n"
        '    case "$4" in\n'
        "      *jobDeploymentStatus*)\n"
        '        echo >> "$FAKE/polls"\n'
        '        polls=$(wc -l < "$FAKE/polls"); states=$(wc -l < "$FAKE/states")\n'
        '        sed -n "$(( polls < states ? polls : states ))p" "$FAKE/states" ;;\n'
        '      *jobStatus*) cat "$FAKE/job_status" ;;\n'
        "      *reason*) echo 'SomeReason: what KubeRay says' ;;\n"
        "    esac ;;\n"
        '  *) echo "unexpected kubectl $*" >&2; exit 2 ;;\n'
        "esac\n",
    )
    _write_script(
        fake / "date",
        '#!/bin/bash\nnow=$(cat "$FAKE/clock")\necho $(( now + 3600 )) > "$FAKE/clock"\n'
        'echo "$now"\n',
    )
    _write_script(fake / "sleep", "#!/bin/sh\nexit 0\n")
    result = subprocess.run(
        ["bash", "-c", _submit_script()],
        env={"PATH": f"{fake}:/usr/bin:/bin", "FAKE": str(fake)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    polls = len((fake / "polls").read_text().splitlines()) if (fake / "polls").exists() else 0
    return result.returncode, result.stdout, result.stderr, polls


@pytest.mark.parametrize(
    ("states", "job_status", "exit_code"),
    [
        (["", "Initializing", "Running", "Complete"], "SUCCEEDED", 0),
        (["Running", "Complete"], "STOPPED", 1),  # stopped by hand: no success
        (["Waiting", "Running", "Retrying", "Running", "Failed"], "FAILED", 1),
        (["ValidationFailed"], "", 1),  # KubeRay refused the spec: it never moves on
        (["Running", "Suspended"], "", 1),  # suspended: nothing resumes it
    ],
)
def test_the_submitter_stops_at_every_final_state_kuberay_reports(
    tmp_path, states, job_status, exit_code
):
    code, out, err, polls = _submit(tmp_path, states, job_status)
    assert code == exit_code, err
    assert polls == len(states)  # it stopped at the final state, not at the deadline
    assert f": {states[-1]}, Ray job {job_status}" in out
    if states[-1] != "Complete":
        assert "SomeReason: what KubeRay says" in err


def test_the_submitter_gives_up_on_a_rayjob_that_never_ends(tmp_path):
    code, _, err, polls = _submit(tmp_path, ["Running"], "RUNNING")
    assert code == 1
    assert "still 'Running'" in err and "giving up" in err
    assert polls == -(-_wait_bound() // 3600)  # one poll per stand-in hour, up to the bound


# -- the cluster launcher -----------------------------------------------------------------------


def _setup_commands() -> list[str]:
    config = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    keys = (
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "initialization_commands",
    )
    return [c for key in keys for c in config.get(key, [])]


def test_the_cluster_launcher_pipes_nothing_from_the_network_into_a_shell():
    for command in _setup_commands():
        assert not re.search(r"\|\s*(sudo\s+)?(ba|z|da)?sh\b", command), command
    (uv,) = [c for c in _setup_commands() if "releases/download" in c]
    version = re.search(r"/uv/releases/download/([0-9.]+)/", uv).group(1)
    assert f"= {version}" in uv  # an installed uv of another version is replaced
    assert re.search(r'echo "[0-9a-f]{64}  uv\.tar\.gz"\s*\|\s*sha256sum -c -', uv)


def test_the_cluster_launcher_refuses_a_uv_archive_that_fails_its_checksum(tmp_path):
    (uv,) = [c for c in _setup_commands() if "releases/download" in c]
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    # the download answers with other bytes than the release's (a tampered mirror, a proxy)
    _write_script(
        bin_dir / "curl",
        '#!/bin/bash\nwhile [ $# -gt 0 ]; do [ "$1" = -fsSLo ] && echo tampered > "$2"; '
        "shift; done\n",
    )
    _write_script(bin_dir / "tar", f"#!/bin/sh\ntouch {shlex.quote(str(tmp_path / 'untarred'))}\n")
    result = subprocess.run(
        ["bash", "-c", uv],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
    assert not (tmp_path / "untarred").exists()
    assert not (home / ".local" / "bin" / "uv").exists()
