"""The retraining schedule: one cron expression in params.yaml, rendered for every scheduler.

``retrain.schedule`` (minute hour day-of-month month day-of-week, e.g. ``0 3 * * 1``) is the
only place the cadence is written. :func:`render` turns it into the files of infra/schedule/:
a Kubernetes CronJob that submits ``segflow retrain`` as a KubeRay RayJob, a systemd service and
timer pair, and a crontab line. ``segflow schedule`` writes them; ``segflow schedule --check``
fails when the committed files no longer match params.yaml, so the cadence cannot drift
between schedulers.

Every scheduler reads the expression in UTC: the CronJob sets ``timeZone: Etc/UTC``, the timer's
OnCalendar ends in ``UTC`` and the crontab sets ``CRON_TZ=UTC``.

The files' text lives in ``templates/`` beside this module, one template per rendered file, so a
reader edits YAML, shell and unit files as what they are. A template names the values it takes
as ``${name}`` (lower-case, braced); every other ``$`` is the file's own text (the shell in the
CronJob's script needs no escaping), and ``$${`` writes a literal ``${``. The values are the
constants below, which other code and the tests share; nothing else is substituted and nothing
is evaluated, and a placeholder without a value fails the render.
"""

from __future__ import annotations

import string
from importlib.resources import files
from pathlib import Path

from segflow.config import Params
from segflow.io import atomic_path
from segflow.lifecycle.cron import cron_to_oncalendar, parse_cron

__all__ = [
    "HOST_CHECKOUT",
    "HOST_ENV_FILE",
    "cron_to_oncalendar",
    "parse_cron",
    "render",
    "stale_files",
    "write",
]

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
#: Labels of every object the schedule creates (``kubectl get all -l app.kubernetes.io/...``).
LABELS = "{app.kubernetes.io/name: segflow, app.kubernetes.io/component: retrain}"

#: The rendered files, in the order ``segflow schedule`` reports them; each has a template of
#: the same name.
FILES = (
    "k8s-retrain.yaml",
    "segflow-retrain.service",
    "segflow-retrain.timer",
    "crontab",
    "retrain.env.example",
)

_HEADER = (
    "# Rendered by `segflow schedule` from params.yaml (retrain.schedule: {schedule!r}).\n"
    "# Edit params.yaml and re-render; `segflow schedule --check` fails when this file is stale.\n"
)


class _Template(string.Template):
    """``${name}`` placeholders only: ``$job``, ``$(...)`` and ``$$`` stay as they are."""

    flags = 0  # placeholders are lower-case: ``${HOME}`` is refused, not looked up
    pattern = r"""
    \$(?:
        (?P<escaped>\$)(?=\{)                # $${ -> a literal ${
      | \{(?P<braced>[a-z][a-z0-9_]*)\}      # ${name} -> its value
      | (?P<named>(?!))                      # ($name is text, not a placeholder)
      | (?P<invalid>\{)                      # any other ${ is a mistake in the template
    )
    """


def _template(name: str) -> _Template:
    text = files("segflow.lifecycle").joinpath("templates", name).read_text(encoding="utf-8")
    return _Template(text)


def render(params: Params) -> dict[str, str]:
    """The text of every file in infra/schedule/, by file name, for these params."""
    schedule = params.retrain.schedule
    # refuses an expression that cannot be rendered for every scheduler
    oncalendar = cron_to_oncalendar(schedule)
    values = {
        "schedule": schedule,
        "oncalendar": oncalendar,
        "labels": LABELS,
        "ray_cluster": RAY_CLUSTER,
        "cluster_checkout": CLUSTER_CHECKOUT,
        "image": IMAGE,
        "job_client_label": JOB_CLIENT_LABEL,
        "schedule_dir": SCHEDULE_DIR.as_posix(),
        "host_checkout": HOST_CHECKOUT,
        "host_env_file": HOST_ENV_FILE,
    }
    header = _HEADER.format(schedule=schedule)
    return {name: header + _template(name).substitute(values) for name in FILES}


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
