"""The retraining schedule: one cron expression in params.yaml, rendered for every scheduler.

``retrain.schedule`` (minute hour day-of-month month day-of-week, e.g. ``0 3 * * 1``) is the
only place the cadence is written. :func:`render` turns it into the files of infra/schedule/:
a Kubernetes CronJob that submits ``segflow retrain`` as a KubeRay RayJob, a systemd service and
timer pair, and a crontab line. ``segflow schedule`` writes them; ``segflow schedule --check``
fails when the committed files no longer match params.yaml, so the cadence cannot drift
between schedulers.

Every scheduler reads the expression in UTC: the CronJob sets ``timeZone: Etc/UTC``, the timer's
OnCalendar ends in ``UTC`` and the crontab sets ``CRON_TZ=UTC``.
"""

from __future__ import annotations

import re
from pathlib import Path

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.io import atomic_path

#: (name, lowest, highest) of the five cron fields, in order.
FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: systemd's weekday names, index 0 = Sunday as in cron.
SYSTEMD_WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")

#: Where the scheduled jobs find the project. On a host: a checkout with its .venv (make
#: install) owned by the user `segflow`; on Kubernetes: the checkout on the workspace volume
#: that infra/ray/raycluster.yaml mounts at /workspace on every Ray node.
HOST_CHECKOUT = "/srv/segflow"
HOST_ENV_FILE = "/etc/segflow/retrain.env"
CLUSTER_CHECKOUT = "/workspace/segflow"
#: The RayCluster of infra/ray/raycluster.yaml (a RayJob's clusterSelector names it).
RAY_CLUSTER = "segflow"
IMAGE = "segflow:0.1.0-cuda"
#: Pods with this label may reach the Ray head's job API (the NetworkPolicy of raycluster.yaml).
JOB_CLIENT_LABEL = "segflow.io/ray-job-client"
SCHEDULE_DIR = Path("infra/schedule")

_PIECE = re.compile(r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?$")


def _value(text: str, field: int, expr: str) -> int:
    name, low, high = FIELDS[field]
    names = {3: MONTHS, 4: WEEKDAYS}.get(field, ())
    if text in names:
        return names.index(text) + (1 if field == 3 else 0)
    if not text.isdigit():
        raise SegflowError(f"retrain.schedule {expr!r}: {name} field: {text!r} is not a value")
    value = int(text)
    if not low <= value <= high:
        raise SegflowError(
            f"retrain.schedule {expr!r}: {name} field: {value} is outside {low}-{high}"
        )
    return value


def _field_values(text: str, field: int, expr: str) -> set[int]:
    """The values one cron field matches: lists, ranges, steps, names (lower-cased)."""
    name, low, high = FIELDS[field]
    values: set[int] = set()
    for piece in text.lower().split(","):
        match = _PIECE.match(piece)
        if match is None:
            raise SegflowError(
                f"retrain.schedule {expr!r}: {name} field: {piece!r} is not supported "
                "(numbers, names, *, a-b, a,b, */n, a-b/n)"
            )
        part, step = match["range"], int(match["step"] or 1)
        if step == 0:
            raise SegflowError(f"retrain.schedule {expr!r}: {name} field: step 0 in {piece!r}")
        if part == "*":
            start, stop = low, 6 if field == 4 else high  # 7 is Sunday again: 0 covers it
        elif "-" in part:
            start, stop = (_value(v, field, expr) for v in part.split("-"))
            if start > stop:
                raise SegflowError(
                    f"retrain.schedule {expr!r}: {name} field: range {piece!r} runs backwards"
                )
        else:
            start = _value(part, field, expr)
            # cron reads "a/n" as a..max step n.
            stop = (6 if field == 4 else high) if match["step"] else start
        values.update(range(start, stop + 1, step))
    if field == 4:
        values = {v % 7 for v in values}  # 7 and 0 are both Sunday
    return values


def parse_cron(expr: str) -> list[set[int]]:
    """The sets of minutes, hours, days, months and weekdays (0 = Sunday) ``expr`` matches."""
    fields = expr.split()
    if len(fields) != 5:
        raise SegflowError(
            f"retrain.schedule {expr!r}: needs 5 fields (minute hour day-of-month month "
            f"day-of-week), got {len(fields)}"
        )
    return [_field_values(text, i, expr) for i, text in enumerate(fields)]


def _compact(values: set[int], low: int, high: int, width: int = 2) -> str:
    """A systemd calendar component: ``*``, ``a/n`` (a, a+n, ... to the end), else a list with
    ``a..b`` runs."""
    ordered = sorted(values)
    if ordered == list(range(low, high + 1)):
        return "*"
    fmt = f"{{:0{width}d}}"
    if len(ordered) >= 3:
        step = ordered[1] - ordered[0]
        progression = list(range(ordered[0], high + 1, step))
        if step > 1 and ordered == progression:
            return f"{fmt.format(ordered[0])}/{step}"
    parts, run = [], [ordered[0]]
    for value in ordered[1:] + [None]:
        if value is not None and value == run[-1] + 1:
            run.append(value)
            continue
        if len(run) >= 3:
            parts.append(f"{fmt.format(run[0])}..{fmt.format(run[-1])}")
        else:
            parts.extend(fmt.format(v) for v in run)
        if value is not None:
            run = [value]
    return ",".join(parts)


def _weekdays(values: set[int]) -> str:
    if len(values) == 7:
        return ""
    # Runs such as Mon..Fri read best; Sunday (0) stays a single name at the front.
    ordered = sorted(values)
    parts, run = [], [ordered[0]]
    for value in ordered[1:] + [None]:
        if value is not None and value == run[-1] + 1:
            run.append(value)
            continue
        names = [SYSTEMD_WEEKDAYS[v] for v in run]
        parts.append(f"{names[0]}..{names[-1]}" if len(run) >= 3 else ",".join(names))
        if value is not None:
            run = [value]
    return ",".join(parts) + " "


def cron_to_oncalendar(expr: str) -> str:
    """The systemd OnCalendar expression that fires at the same minutes as cron ``expr``.

    >>> cron_to_oncalendar("0 3 * * 1")
    'Mon *-*-* 03:00:00'

    cron fires when the day-of-month OR the day-of-week matches if both are restricted, while
    systemd needs both to match; that combination has no single OnCalendar form and is refused.
    """
    minutes, hours, days, months, weekdays = parse_cron(expr)
    # cron's rule: a field starting with * does not restrict the day, the two then AND as in
    # systemd; only two restricted fields OR.
    day_of_month, day_of_week = expr.split()[2], expr.split()[4]
    if not day_of_month.startswith("*") and not day_of_week.startswith("*"):
        raise SegflowError(
            f"retrain.schedule {expr!r}: day-of-month and day-of-week fields are both set: cron "
            "runs when either matches, systemd only when both do; set one of them to *"
        )
    date = f"*-{_compact(months, 1, 12)}-{_compact(days, 1, 31)}"
    time = f"{_compact(hours, 0, 23)}:{_compact(minutes, 0, 59)}:00"
    return f"{_weekdays(weekdays)}{date} {time}"


# -- the rendered files ------------------------------------------------------------------------

_HEADER = (
    "# Rendered by `segflow schedule` from params.yaml (retrain.schedule: {schedule!r}).\n"
    "# Edit params.yaml and re-render; `segflow schedule --check` fails when this file is stale.\n"
)


#: Labels of every object the schedule creates (``kubectl get all -l app.kubernetes.io/...``).
LABELS = "{app.kubernetes.io/name: segflow, app.kubernetes.io/component: retrain}"


def _k8s(schedule: str) -> str:
    return (
        _HEADER.format(schedule=schedule)
        + f"""#
# A CronJob that submits `segflow retrain` as a KubeRay RayJob to the RayCluster
# "{RAY_CLUSTER}" of infra/ray/raycluster.yaml and waits for it, so concurrencyPolicy Forbid
# also keeps two retrains from overlapping. The RayJob's entrypoint runs on the Ray head, in the
# checkout on the workspace volume ({CLUSTER_CHECKOUT}), where dvc.lock, reports/retrain.lock
# and reports/retrain_log.jsonl persist between runs; its environment (MLFLOW_TRACKING_URI,
# MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_*) comes from the Secret segflow-env that the Ray pods
# load. Ray sets RAY_ADDRESS for the entrypoint, so every stage joins this cluster.
#
#   kubectl apply -f infra/ray/raycluster.yaml      # once: workspace volume + RayCluster
#   kubectl apply -f {SCHEDULE_DIR}/k8s-retrain.yaml
#   kubectl create job --from=cronjob/segflow-retrain segflow-retrain-now   # run once now
apiVersion: v1
kind: ServiceAccount
metadata:
  name: segflow-retrain
  labels: {LABELS}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: segflow-retrain
  labels: {LABELS}
rules:
  # create the run's RayJob, follow its status, prune all but the last runs
  - apiGroups: [ray.io]
    resources: [rayjobs]
    verbs: [create, get, list, watch, delete]
  - apiGroups: [ray.io]
    resources: [rayjobs/status]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: segflow-retrain
  labels: {LABELS}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: segflow-retrain
subjects:
  - kind: ServiceAccount
    name: segflow-retrain
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: segflow-retrain
  labels: {LABELS}
data:
  rayjob.yaml: |
    apiVersion: ray.io/v1
    kind: RayJob
    metadata:
      # one RayJob per run: the API server appends a random suffix
      generateName: segflow-retrain-
      labels: {LABELS}
    spec:
      clusterSelector:
        ray.io/cluster: {RAY_CLUSTER}
      submissionMode: K8sJobMode
      # KubeRay pastes the entrypoint into the submitter's shell line: keep it one quoted word
      entrypoint: bash -c "cd {CLUSTER_CHECKOUT} && segflow retrain"
      # the label lets the submitter through the head's NetworkPolicy (infra/ray/raycluster.yaml)
      # to the job API; KubeRay supplies the `ray job submit` command
      submitterPodTemplate:
        metadata:
          labels: {{{JOB_CLIENT_LABEL}: "true"}}
        spec:
          restartPolicy: Never
          containers:
            - name: submitter
              image: {IMAGE}
      # a retrain that hangs is stopped after a day
      activeDeadlineSeconds: 86400
  submit.sh: |
    # Create this run's RayJob, wait until it ends, exit 0 only if the Ray job succeeded.
    set -euo pipefail
    job=$(kubectl create -f /etc/segflow-retrain/rayjob.yaml -o name)
    echo "submitted $job"
    while true; do
      state=$(kubectl get "$job" -o jsonpath='{{.status.jobDeploymentStatus}}')
      case "$state" in Complete|Failed) break ;; esac
      sleep 30
    done
    status=$(kubectl get "$job" -o jsonpath='{{.status.jobStatus}}')
    echo "$job: $state, Ray job $status"
    # keep the last 5 RayJobs (and their logs) for inspection; pruning never fails the run
    kubectl get rayjobs -l app.kubernetes.io/component=retrain \\
      --sort-by=.metadata.creationTimestamp -o name | head -n -5 | xargs -r kubectl delete || true
    test "$status" = SUCCEEDED
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: segflow-retrain
  labels: {LABELS}
spec:
  schedule: "{schedule}"
  timeZone: Etc/UTC
  concurrencyPolicy: Forbid
  # a run missed by more than an hour (controller down) is skipped, not started late
  startingDeadlineSeconds: 3600
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 5
  jobTemplate:
    spec:
      backoffLimit: 0
      activeDeadlineSeconds: 90000
      template:
        metadata:
          labels: {LABELS}
        spec:
          serviceAccountName: segflow-retrain
          restartPolicy: Never
          containers:
            - name: submit
              # the image of the Ray pods; it carries kubectl (infra/docker/Dockerfile)
              image: {IMAGE}
              command: [bash, /etc/segflow-retrain/submit.sh]
              resources:
                requests: {{cpu: 50m, memory: 64Mi}}
                limits: {{cpu: 500m, memory: 256Mi}}
              volumeMounts:
                - name: retrain
                  mountPath: /etc/segflow-retrain
                  readOnly: true
          volumes:
            - name: retrain
              configMap:
                name: segflow-retrain
"""
    )


def _service(schedule: str) -> str:
    return (
        _HEADER.format(schedule=schedule)
        + f"""#
# One retrain on this host: new data -> dvc repro -> promotion gate. Started by
# segflow-retrain.timer; install both:
#   sudo cp {SCHEDULE_DIR}/segflow-retrain.service {SCHEDULE_DIR}/segflow-retrain.timer \\
#     /etc/systemd/system/
#   sudo systemctl daemon-reload && sudo systemctl enable --now segflow-retrain.timer
# The checkout lives in {HOST_CHECKOUT} (with its .venv from `make install`), owned by the user
# segflow; another place: `sudo systemctl edit segflow-retrain.service` to override
# WorkingDirectory and ExecStart. Run once now: `sudo systemctl start segflow-retrain.service`.
[Unit]
Description=segflow retrain (new data -> dvc repro -> promotion gate)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
User=segflow
WorkingDirectory={HOST_CHECKOUT}
# MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD, RAY_ADDRESS (empty: a local Ray),
# AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the DVC remote; see retrain.env.example
EnvironmentFile={HOST_ENV_FILE}
ExecStart={HOST_CHECKOUT}/.venv/bin/segflow retrain
# 75: another retrain holds reports/retrain.lock; this start is skipped, not failed
SuccessExitStatus=75
Nice=10
"""
    )


def _timer(schedule: str) -> str:
    return (
        _HEADER.format(schedule=schedule)
        + f"""#
# Starts segflow-retrain.service at retrain.schedule (UTC). Persistent: a run missed while the
# host was off starts at the next boot. `systemctl list-timers segflow-retrain.timer` shows
# the next run.
[Unit]
Description=Schedule of segflow retrain ({schedule}, UTC)

[Timer]
OnCalendar={cron_to_oncalendar(schedule)} UTC
Persistent=true

[Install]
WantedBy=timers.target
"""
    )


def _crontab(schedule: str) -> str:
    return (
        _HEADER.format(schedule=schedule)
        + f"""#
# One host without systemd: `crontab -u segflow {SCHEDULE_DIR}/crontab` (replaces that user's
# crontab). The environment comes from {HOST_ENV_FILE} (see retrain.env.example); output goes
# to syslog under the tag segflow-retrain. cronie reads CRON_TZ; Debian's cron uses the host's
# zone, so set the host to UTC there. bash with pipefail: the line ends with segflow retrain's
# exit code (0, 1 failed, 75 locked), not logger's.
CRON_TZ=UTC
SHELL=/bin/bash
{schedule} cd {HOST_CHECKOUT} && set -a && . {HOST_ENV_FILE} && set +a && set -o pipefail && .venv/bin/segflow retrain 2>&1 | logger -t segflow-retrain
"""  # noqa: E501
    )


def _env_example(schedule: str) -> str:
    return (
        _HEADER.format(schedule=schedule)
        + f"""#
# The environment of a scheduled retrain: copy to {HOST_ENV_FILE} (systemd, cron; mode 600)
# or load it into the Kubernetes Secret the Ray pods read (leave RAY_ADDRESS out there: Ray
# sets it for a job):
#   kubectl create secret generic segflow-env --from-env-file=retrain.env
# Plain KEY=value lines: both systemd and kubectl read this format.
MLFLOW_TRACKING_URI=http://mlflow.example.internal:5000
MLFLOW_TRACKING_USERNAME=segflow
MLFLOW_TRACKING_PASSWORD=change-me
RAY_ADDRESS=
AWS_ACCESS_KEY_ID=change-me
AWS_SECRET_ACCESS_KEY=change-me
"""
    )


def render(params: Params) -> dict[str, str]:
    """The text of every file in infra/schedule/, by file name, for these params."""
    schedule = params.retrain.schedule
    cron_to_oncalendar(schedule)  # refuse an expression that cannot be rendered everywhere
    return {
        "k8s-retrain.yaml": _k8s(schedule),
        "segflow-retrain.service": _service(schedule),
        "segflow-retrain.timer": _timer(schedule),
        "crontab": _crontab(schedule),
        "retrain.env.example": _env_example(schedule),
    }


def stale_files(params: Params, out: str | Path = SCHEDULE_DIR) -> list[Path]:
    """The files under ``out`` that are missing or differ from what ``params`` renders."""
    out = Path(out)
    return [
        out / name
        for name, text in render(params).items()
        if not (out / name).is_file() or (out / name).read_text() != text
    ]


def write(params: Params, out: str | Path = SCHEDULE_DIR) -> list[Path]:
    """Write the rendered files into ``out`` (atomically); returns the files that changed."""
    out = Path(out)
    changed = stale_files(params, out)
    texts = render(params)
    for path in changed:
        with atomic_path(path) as tmp:
            tmp.write_text(texts[path.name])
    return changed
