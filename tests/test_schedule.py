"""The retrain schedule: one cron expression in params.yaml, one cadence for every scheduler."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatch
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from segflow.config import load_params, parse_params
from segflow.errors import SegflowError
from segflow.lifecycle.schedule import cron_to_oncalendar, parse_cron, render, stale_files, write
from tests.project import CODE_UNDER_TEST

REPO = Path(__file__).resolve().parents[1]
SEGFLOW = Path(sys.executable).parent / "segflow"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

#: (cron, the same schedule in huey's numeric crontab syntax, expected OnCalendar)
CASES = [
    ("0 3 * * 1", "0 3 * * 1", "Mon *-*-* 03:00:00"),
    ("*/15 * * * *", "*/15 * * * *", "*-*-* *:00/15:00"),
    ("30 8-18/2 * * mon-fri", "30 8-18/2 * * 1-5", "Mon..Fri *-*-* 08,10,12,14,16,18:30:00"),
    ("0 0 * * 0,7", "0 0 * * 0", "Sun *-*-* 00:00:00"),
    ("5 4 * jan,jul SUN", "5 4 * 1,7 0", "Sun *-01,07-* 04:05:00"),
    ("0 12 1-5,10,20-22 * *", "0 12 1-5,10,20-22 * *", "*-*-01..05,10,20..22 12:00:00"),
    ("0 */6 * * 6,0", "0 */6 * * 6,0", "Sun,Sat *-*-* 00/6:00:00"),
    ("7 1 */2 * *", "7 1 1-31/2 * *", "*-*-01/2 01:07:00"),
    ("0 0 1 */3 *", "0 0 1 1-12/3 *", "*-01/3-01 00:00:00"),
    ("45 23 * * *", "45 23 * * *", "*-*-* 23:45:00"),
]


@pytest.mark.parametrize(("cron", "numeric", "expected"), CASES)
def test_cron_converts_to_the_oncalendar_expression(cron, numeric, expected):
    assert cron_to_oncalendar(cron) == expected


def _cron_matches(numeric: str, start: datetime, count: int) -> list[datetime]:
    """The first ``count`` minutes from ``start`` that huey's independent crontab matches."""
    huey = pytest.importorskip("huey")
    minute, hour, day, month, weekday = numeric.split()
    test = huey.crontab(minute, hour, day, month, weekday, strict=True)
    found, t = [], start
    while len(found) < count:
        if test(t):
            found.append(t)
        t += timedelta(minutes=1)
    return found


def _systemd_elapses(calendar: str, start: datetime, count: int) -> list[datetime]:
    base = (start - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = subprocess.run(
        [SYSTEMD_ANALYZE, "calendar", f"--iterations={count}", f"--base-time={base}", calendar],
        capture_output=True,
        text=True,
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    stamps = [
        line.split(": ", 1)[1].strip()
        for line in out.stdout.splitlines()
        if line.strip().startswith(("Next elapse:", "Iter. #"))
    ]
    return [datetime.strptime(s, "%a %Y-%m-%d %H:%M:%S %Z").replace(tzinfo=UTC) for s in stamps]


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not on PATH")
@pytest.mark.parametrize(("cron", "numeric", "expected"), CASES)
def test_systemd_fires_at_the_same_minutes_as_cron(cron, numeric, expected):
    start = datetime(2026, 12, 28, 22, 0, tzinfo=UTC)  # crosses a month and a year boundary
    calendar = f"{cron_to_oncalendar(cron)} UTC"
    count = 6 if cron.split()[3] == "*" else 3  # keep the minute-by-minute reference short
    assert _systemd_elapses(calendar, start, count) == _cron_matches(numeric, start, count)


@pytest.mark.parametrize(
    ("cron", "field"),
    [
        ("61 3 * * 1", "minute"),
        ("0 24 * * 1", "hour"),
        ("0 3 0 * *", "day-of-month"),
        ("0 3 * 13 *", "month"),
        ("0 3 * * 8", "day-of-week"),
        ("0 3 * * fri-mon", "day-of-week"),
        ("0 3 L * *", "day-of-month"),
        ("0 3 * * 1#2", "day-of-week"),
        ("*/0 * * * *", "minute"),
        ("0 3 1 * 1", "day-of-month and day-of-week"),
    ],
)
def test_an_expression_it_cannot_convert_names_the_field(cron, field):
    with pytest.raises(SegflowError, match=f"{field} field"):
        cron_to_oncalendar(cron)


def test_an_expression_without_five_fields_is_refused():
    with pytest.raises(SegflowError, match="needs 5 fields"):
        parse_cron("@weekly")


def test_sunday_is_both_zero_and_seven_and_names_are_case_insensitive():
    assert parse_cron("0 0 * * 7")[4] == parse_cron("0 0 * * SUN")[4] == {0}
    assert parse_cron("0 0 * Feb-apr *")[3] == {2, 3, 4}


def test_committed_schedule_files_are_what_params_yaml_renders():
    params = load_params(REPO / "params.yaml")
    rendered = render(params)
    for name, text in rendered.items():
        assert (REPO / "infra" / "schedule" / name).read_text() == text, name
    assert stale_files(params, REPO / "infra" / "schedule") == []


def test_every_scheduler_carries_the_cadence_of_the_param():
    params = parse_params({"retrain": {"schedule": "30 2 * * 6"}})
    files = render(params)
    cronjob = next(
        d for d in yaml.safe_load_all(files["k8s-retrain.yaml"]) if d["kind"] == "CronJob"
    )
    assert cronjob["spec"]["schedule"] == "30 2 * * 6"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert "OnCalendar=Sat *-*-* 02:30:00 UTC\n" in files["segflow-retrain.timer"]
    assert "Persistent=true" in files["segflow-retrain.timer"]
    line = files["crontab"].splitlines()[-1]
    assert line.startswith("30 2 * * 6 ") and line.endswith("| logger -t segflow-retrain")
    assert "ExecStart=/srv/segflow/.venv/bin/segflow retrain\n" in files["segflow-retrain.service"]


def test_write_touches_only_stale_files(tmp_path):
    params = parse_params({})
    assert len(write(params, tmp_path)) == len(render(params))
    (tmp_path / "crontab").write_text("edited by hand\n")
    assert write(params, tmp_path) == [tmp_path / "crontab"]
    assert stale_files(params, tmp_path) == []


def test_every_rendered_file_comes_from_a_template_the_package_ships():
    from segflow.lifecycle.schedule import FILES

    templates = files("segflow.lifecycle").joinpath("templates")
    assert sorted(t.name for t in templates.iterdir()) == sorted(FILES)
    # an installed segflow (not only this checkout) carries them: pyproject's package-data
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["segflow.lifecycle"]
    for name in FILES:
        assert any(fnmatch(f"templates/{name}", pattern) for pattern in shipped), name


def test_templates_substitute_only_braced_lower_case_names():
    """Shell and YAML in a template need no escaping; a typo in a placeholder fails loudly."""
    from segflow.lifecycle.schedule import _Template

    text = 'job=$(kubectl get "$job") $$ ${schedule} $${literal}'
    expected = 'job=$(kubectl get "$job") $$ 0 3 * * 1 ${literal}'
    assert _Template(text).substitute({"schedule": "0 3 * * 1"}) == expected
    with pytest.raises(ValueError, match="Invalid placeholder"):
        _Template("${HOME}").substitute({})
    with pytest.raises(KeyError, match="image"):
        _Template("${image}").substitute({"schedule": "0 3 * * 1"})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SEGFLOW), "schedule", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **CODE_UNDER_TEST},
    )


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_schedule_check_fails_naming_the_stale_files_after_a_param_change(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "infra" / "schedule", tmp_path / "infra" / "schedule")
    assert _cli("--check", cwd=tmp_path).returncode == 0

    text = (tmp_path / "params.yaml").read_text()
    schedule = load_params(tmp_path / "params.yaml").retrain.schedule
    (tmp_path / "params.yaml").write_text(text.replace(f'"{schedule}"', '"15 4 * * *"'))
    stale = _cli("--check", cwd=tmp_path)
    assert stale.returncode == 1
    assert "Traceback" not in stale.stderr
    for name in ("k8s-retrain.yaml", "segflow-retrain.timer", "crontab"):
        assert name in stale.stderr

    assert _cli(cwd=tmp_path).returncode == 0
    assert _cli("--check", cwd=tmp_path).returncode == 0
    assert (
        "OnCalendar=*-*-* 04:15:00 UTC"
        in (tmp_path / "infra" / "schedule" / "segflow-retrain.timer").read_text()
    )


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_schedule_refuses_a_cron_expression_systemd_cannot_express(tmp_path):
    (tmp_path / "params.yaml").write_text('retrain:\n  schedule: "0 3 1 * 1"\n')
    result = _cli("--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 1
    assert "day-of-month and day-of-week" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not on PATH")
def test_systemd_accepts_the_service_and_timer_units(tmp_path):
    files = render(load_params(REPO / "params.yaml"))
    # verify also checks that ExecStart exists: point it at a binary this machine has
    service = files["segflow-retrain.service"].replace(
        "ExecStart=/srv/segflow/.venv/bin/segflow", "ExecStart=/bin/true"
    )
    (tmp_path / "segflow-retrain.service").write_text(service)
    (tmp_path / "segflow-retrain.timer").write_text(files["segflow-retrain.timer"])
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "segflow-retrain.service", "segflow-retrain.timer"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_the_crontab_line_exits_with_the_exit_code_of_segflow_retrain(tmp_path):
    """Piped into logger, the line would end with logger's 0; a held lock must end it with 75."""
    import re

    from segflow.lifecycle.retrain import EXIT_LOCKED, retrain_lock
    from segflow.lifecycle.schedule import HOST_CHECKOUT, HOST_ENV_FILE

    crontab = render(load_params(REPO / "params.yaml"))["crontab"]
    shell = re.search(r"^SHELL=(\S+)$", crontab, re.MULTILINE).group(1)
    command = crontab.splitlines()[-1].split(maxsplit=5)[5]  # what cron hands to $SHELL -c
    checkout, env_file = tmp_path / "segflow", tmp_path / "retrain.env"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / ".venv" / "bin" / "segflow").symlink_to(SEGFLOW)
    (checkout / "reports").mkdir()
    env_file.write_text(f"PYTHONPATH={REPO}\n")
    command = command.replace(HOST_CHECKOUT, str(checkout)).replace(HOST_ENV_FILE, str(env_file))

    with retrain_lock(checkout / "reports" / "retrain.lock"):  # another retrain is running
        result = subprocess.run(
            [shell, "-c", command], capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", **CODE_UNDER_TEST},
        )  # fmt: skip
    assert result.returncode == EXIT_LOCKED, result.stderr


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_the_crontab_line_reads_the_env_file_without_running_it(tmp_path):
    """Values are taken literally, as systemd's EnvironmentFile= and kubectl take them: a
    secret such as $(...) stays text, and a line that is no NAME=value pair runs nothing."""
    import re

    from segflow.lifecycle.schedule import HOST_CHECKOUT, HOST_ENV_FILE

    crontab = render(load_params(REPO / "params.yaml"))["crontab"]
    shell = re.search(r"^SHELL=(\S+)$", crontab, re.MULTILINE).group(1)
    command = crontab.splitlines()[-1].split(maxsplit=5)[5]
    checkout, env_file, seen = tmp_path / "segflow", tmp_path / "retrain.env", tmp_path / "seen"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    # a segflow that records the environment it was started with
    segflow = checkout / ".venv" / "bin" / "segflow"
    segflow.write_text(f"#!/bin/sh\nenv -0 > {seen}\n")
    segflow.chmod(0o755)
    pwned = tmp_path / "pwned"
    values = {
        "PLAIN": "http://mlflow.example.internal:5000",
        "SUBSTITUTION": f"$(touch {pwned})",
        "BACKTICKS": f"`touch {pwned}`",
        "SEMICOLON": f"x; touch {pwned}",
        "VARIABLE": "${HOME}-$PATH",
        "QUOTED": '"kept as written"',
        "EQUALS": "a=b=c",
        "EMPTY": "",
    }
    lines = ["# a comment", *(f"{k}={v}" for k, v in values.items()), f"touch {pwned}", ""]
    env_file.write_text("\n".join(lines) + "LAST=no newline at the end")
    command = command.replace(HOST_CHECKOUT, str(checkout)).replace(HOST_ENV_FILE, str(env_file))

    result = subprocess.run(
        [shell, "-c", command], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not pwned.exists()
    environment = dict(item.split("=", 1) for item in seen.read_text().split("\0") if item)
    for name, value in values.items():
        assert environment[name] == value, name
    assert environment["LAST"] == "no newline at the end"
