"""MLflow helpers: where runs go, what a training run records, the logged model.

The default store needs nothing running: ``sqlite:///mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts``; ``$MLFLOW_TRACKING_URI`` switches to a tracking server. A training run
records the flattened params.yaml (``train.lr``...), tags for the git commit and the shards'
content hash, the shards as its dataset input and one metric point per epoch; it is named after
its model (:func:`mlflow_run_name`) in an experiment tagged for model training. Its one model,
the served path, is logged by the register stage
(:func:`segflow.lifecycle.registration.register_model`).

Logging happens in the driver, from the history the workers report, not in the rank-0 worker:
the default sqlite store is a file on the driver's machine that workers on other nodes cannot
reach, and a worker restarted by FailureConfig would log its epochs twice; the history in the
checkpoints is exactly one record per completed epoch, however many restarts it took.

A store that fails (a server that is down or never answers, a read-only or corrupt sqlite
file) is one line naming it, without credentials (:func:`store_errors`); how long a server is
waited for is the ``mlflow.*`` HTTP policy of params.yaml, which the stage runner and the CLI
put into MLflow's environment before the first call (:class:`segflow.config.MlflowParams`).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.logs import is_verbose

MLRUNS = Path("mlruns")
DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
#: Record fields that are not metrics: the step itself and a wall-clock timestamp.
NOT_METRICS = {"epoch", "epoch_start_time"}
#: MLflow's experiment-kind tag: without it the UI opens an experiment in its GenAI overview
#: (traces, prompts); ``custom_model_development`` opens the runs table, with their metrics.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
#: The Ray run names segflow gives (segflow.train.distributed.default_run_name).
_DEFAULT_RUN_NAME = re.compile(r"(train|search)-(\d{8}-\d{6})")


def quiet_mlflow() -> None:
    """No telemetry or other network calls from MLflow at run time, and no progress bars.

    Downloading a model from a tracking server draws a tqdm bar per model on stderr, where
    ``segflow predict`` prints only errors. The user's own settings of these variables win.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri(root: str | Path = ".") -> str:
    """``$MLFLOW_TRACKING_URI`` or the sqlite file under ``<root>/mlruns``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = (Path(root) / MLRUNS / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def public_uri(uri: str) -> str:
    """``uri`` without credentials, for files that others read (models/run.json, reports).

    A tracking URI may carry a user and password (``https://user:secret@host``) or a token in
    its query; neither may end up in an output that is shared, committed or pushed.
    """
    parts = urlsplit(uri)
    if not parts.netloc:
        return uri  # sqlite:///path, file:///path, a plain path
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _store_failures() -> tuple[type[BaseException], ...]:
    """What a failing store raises: MLflow's own error (an HTTP call after its retries, a
    store it cannot open), SQLAlchemy's (a sqlite file that is read-only, locked or corrupt,
    raised past MLflow), and requests' (an artifact transfer outside MLflow's wrapper)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return (MlflowException, SQLAlchemyError, RequestException)


#: user:password@ in a URL inside a library's message (the host of a credentialed URI).
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def store_failure(exc: BaseException, uri: str, doing: str | None = None) -> str:
    """``MLflow store <uri>: [<doing>: ]<why>``, one line, the URI in its public form.

    Why is the root cause when it is a known one (refused, no answer in time, host unknown),
    else the first line of the innermost error (sqlite's "attempt to write a readonly
    database" under MLflow's and SQLAlchemy's wrappers) with any credentials removed.
    """
    causes = []
    seen: BaseException | None = exc
    while seen is not None and seen not in causes:
        causes.append(seen)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    names = {type(c).__name__ for c in causes}
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        why = "connection refused: is the tracking server running, at this address?"
    elif names & {"ReadTimeoutError", "ConnectTimeoutError", "ReadTimeout", "ConnectTimeout"}:
        timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
        tries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")) + 1
        why = (
            f"no answer within {timeout} s in {tries} {'try' if tries == 1 else 'tries'}; "
            "if the server is only slow, raise mlflow.http_timeout_s in params.yaml"
        )
    elif names & {"NameResolutionError", "gaierror"}:
        why = "host name not found"
    else:
        lines = next((str(c).strip().splitlines() for c in reversed(causes) if str(c).strip()), [])
        why = _CREDENTIALS.sub("", lines[0] if lines else type(exc).__name__)[:300]
    return f"MLflow store {public_uri(uri)}: " + (f"{doing}: {why}" if doing else why)


#: Loggers that print the traceback of an error MLflow then raises (the sqlite store's
#: "SQLAlchemy database error"): store_errors says it once, in one line.
_RAISING_LOGGERS = ("mlflow.store.db.utils",)


@contextmanager
def store_errors(uri: str | None = None, doing: str | None = None) -> Iterator[None]:
    """Run MLflow calls; a failing store (``uri``, default the current one) is one SegflowError.

    Nothing else is caught: a bug keeps its traceback. ``segflow -v`` / SEGFLOW_VERBOSE=1 also
    shows what MLflow logs about the failure.
    """
    loggers = [] if is_verbose() else [logging.getLogger(name) for name in _RAISING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    except Exception as exc:
        if isinstance(exc, SegflowError) or not isinstance(exc, _store_failures()):
            raise
        import mlflow

        uri = uri or mlflow.get_tracking_uri()
        raise SegflowError(store_failure(exc, uri, doing)) from None
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


#: Loggers of a new sqlite store's set-up: "Creating initial MLflow database tables...",
#: "Updating database tables" and alembic's migration steps.
_STORE_SETUP_LOGGERS = ("mlflow.store.db.utils", "alembic")


def quiet_store_setup() -> None:
    """No INFO lines from the set-up of a new sqlite store (unless ``segflow -v``).

    The first command that opens ``mlruns/mlflow.db`` (a stage, ``segflow predict`` in a fresh
    directory) makes MLflow create its tables and announce it. Importing mlflow resets its
    loggers to INFO (``MLFLOW_LOGGING_LEVEL``'s default), after segflow.logs has quietened them,
    so this runs after the import, right before the store is opened.
    """
    if is_verbose():
        return
    for name in _STORE_SETUP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def check_store(uri: str) -> None:
    """Read ``uri`` once: a store that is down, hangs or is corrupt is one line naming it,
    before a stage writes anything anywhere."""
    import mlflow

    # A new sqlite store announces its table creation and migrations on stderr; the stage's
    # own lines (and a one-line error) are what the user should see.
    quiet_store_setup()
    with store_errors(uri, "cannot be read"):
        mlflow.MlflowClient(uri).search_experiments(max_results=1)


def setup(experiment: str, root: str | Path = ".") -> str:
    """Point MLflow at the store and make sure ``experiment`` exists; returns its id.

    With the default store, the experiment's artifacts go to ``<root>/mlruns/artifacts`` (an
    absolute file URI), not to a directory relative to wherever the process happens to run.
    """
    import mlflow

    quiet_mlflow()
    quiet_store_setup()
    server = os.environ.get("MLFLOW_TRACKING_URI")  # read first: set_tracking_uri exports it
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    with store_errors(uri):
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # made by an older segflow
                mlflow.MlflowClient().set_experiment_tag(
                    found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
                )
            return found.experiment_id
        location = None if server else (Path(root) / MLRUNS / "artifacts").resolve().as_uri()
        return mlflow.create_experiment(
            experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )


def mlflow_run_name(params: Params) -> str:
    """The MLflow run's name: ``<model>-<backbone>-<time>`` (``deeplabv3plus-resnet18-20261207-
    131500``) for segflow's own time-stamped run names, so the runs table says which model each
    run trained; a ``train.run_name`` of the user's own is kept as it is."""
    name = str(params.train.run_name or "")
    found = _DEFAULT_RUN_NAME.fullmatch(name)
    if name and not found:
        return name
    stamp = found[2] if found else time.strftime("%Y%m%d-%H%M%S")
    parts = [params.train.model, params.train.backbone, stamp]
    return "-".join(str(p) for p in parts if p)


def log_dataset_input(index: dict) -> None:
    """The shards as the active run's training input (MLflow's Datasets column): their
    dataset name, content hash as the digest, and where they are (the index's ``uri`` when
    shard.uri names another place); no data is uploaded."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    from segflow.paths import SHARDS

    digest = str(index.get("content_hash", "unknown"))  # the store keeps 36 characters
    where = str(index.get("uri") or SHARDS.resolve())  # shard.uri when not data/shards
    if "://" in where:  # s3:// or gs://: MLflow's own source for that store
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        source = resolve_dataset_source(where)
    else:
        source = LocalArtifactDatasetSource(where)
    name = f"{index.get('dataset', 'unknown')}-shards"
    mlflow.log_input(MetaDataset(source, name=name, digest=digest[:36]), context="training")


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": "0.01"}`` (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's commit, or "unknown" outside a git repo (or before its first commit)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def start_training_run(
    params: Params,
    index: dict,
    root: str | Path = ".",
    *,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Open an MLflow run with the params and provenance tags (plus ``tags``: resume facts, where
    tuned values came from); returns its id.

    Opened before training starts, so a run that fails still shows up (status FAILED). With
    ``run_id`` an interrupted run is continued: same run, params already logged.
    """
    import mlflow

    experiment_id = setup(params.train.experiment, root)
    with store_errors():
        if run_id is not None:
            run = mlflow.start_run(run_id=run_id)
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=mlflow_run_name(params))
            mlflow.log_params(flatten(params.model_dump(mode="json")))
            log_dataset_input(index)
        mlflow.set_tags(
            {
                "git_commit": git_commit(root),
                "shards_content_hash": index.get("content_hash", "unknown"),
                "dataset": index.get("dataset", "unknown"),
                "stage": "train",
                **(tags or {}),
            }
        )
    return run.info.run_id


def log_history(history: Iterable[dict]) -> None:
    """One point per epoch (step = epoch) for every numeric field of the records."""
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, int(record["epoch"]))
        for record in history
        for key, value in record.items()
        if key not in NOT_METRICS and isinstance(value, int | float) and not isinstance(value, bool)
    ]
    client = mlflow.MlflowClient()
    run_id = mlflow.active_run().info.run_id
    with store_errors():
        for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            client.log_batch(run_id, metrics=metrics[start : start + 1000])


#: The tag of a training run with a time budget: what ended it ("budget" or "epochs").
BUDGET_STOPPED_BY_TAG = "segflow.budget_stopped_by"


def log_budget(summary: dict) -> None:
    """A time budget's facts on the active run (:meth:`segflow.train.budget.TimeBudget.summary`):
    its numbers as metrics (``budget_epochs``, ``budget_images_per_second``, ...; those not
    measured are left out) and what stopped the run as a tag. The budget itself is the param
    ``train.time_budget_min``."""
    import mlflow

    metrics = {
        key: float(value)
        for key, value in summary.items()
        if key.startswith("budget_") and isinstance(value, int | float) and value == value
    }
    with store_errors():
        mlflow.log_metrics(metrics)
        mlflow.set_tag(BUDGET_STOPPED_BY_TAG, summary.get("budget_stopped_by") or "unknown")


def end_run(status: str = "FINISHED") -> None:
    """End the active run. Marking a run that failed FAILED is best effort: the error that
    stopped it is the one to report, not a second one from a store that is down too."""
    import mlflow

    if mlflow.active_run() is None:
        return
    try:
        with store_errors():
            mlflow.end_run(status=status)
    except SegflowError:
        if status == "FINISHED":
            raise
