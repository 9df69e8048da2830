"""What a segflow log shows: segflow's own lines; the libraries' chatter only when asked.

MLflow announces its database migrations at INFO and advises (UserWarnings) on how segflow's
own code logs models (segflow logs them "from code", pickle-free, on purpose); Ray Train logs
every ``ray.train.report`` call as a whole ``TrainingReport(...)`` dict right after segflow's own
progress line. None of it is something a user can act on, and it buries the lines that are.
``segflow -v ...`` or ``SEGFLOW_VERBOSE=1`` (for stage scripts under ``dvc repro``) keeps all
of it. Everything else (errors, other libraries' warnings, MLflow's other WARNING lines such
as a model's dependency mismatch) always shows.

MLflow sets its own logger's level when it is imported (``MLFLOW_LOGGING_LEVEL``, default INFO),
replacing a level set before the import: a stage that imported MLflow only after
:func:`quiet_libraries` printed "Creating initial MLflow database tables..." on a new store. The
variable is therefore set too, which also reaches MLflow in subprocesses and Ray workers.

Lines reach a log as they are printed: stdout is line-buffered (:func:`line_buffered_stdout`),
also when it is a pipe, where Python would hold them in an 8 KiB buffer; the progress lines Ray
forwards from the training workers are printed by the driver, so without this they came in
bursts, or all at the end. segflow's :data:`console` writes plain text (rich adds styles only
on a terminal, or where ``FORCE_COLOR``/``TTY_COMPATIBLE`` ask for them).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.markup import escape

VERBOSE_ENV = "SEGFLOW_VERBOSE"

#: Where segflow's own lines go: stderr, so that a stage's stdout stays the core loop's progress
#: lines. Plain text (no highlighting), long lines unwrapped (a CI log wraps them itself).
console = Console(stderr=True, highlight=False, soft_wrap=True)

#: Loggers whose INFO lines are library bookkeeping (the database set-up of the sqlite store).
QUIET_LOGGERS = ("mlflow",)
#: MLflow's logger level, read when MLflow is imported (mlflow.utils.logging_utils).
MLFLOW_LEVEL_ENV = "MLFLOW_LOGGING_LEVEL"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes"}


def quiet_libraries(verbose: bool | None = None) -> None:
    """Hide library INFO lines and MLflow's UserWarnings unless ``verbose`` (default: the env);
    stdout line-buffered in either case.

    Called once at the top of every stage and CLI command. Verbose mode is exported in the
    environment, so Ray workers and subprocesses (``dvc repro`` in retrain) see it too.
    """
    line_buffered_stdout()
    if verbose is None:
        verbose = is_verbose()
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    # Before MLflow's import (which sets its logger's level from it) and after (setLevel).
    os.environ.setdefault(MLFLOW_LEVEL_ENV, "WARNING")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray Tune's new output engine prints its experiment box, result paths and a TensorBoard
    # hint whatever RunConfig(verbose=0) says; the legacy engine honours verbose=0.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ray Data (loader.backend: ray_data) logs each epoch's plan, start and end at INFO, in
    # whichever Ray process runs it; its workers read the level from the environment.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    _hide_user_warnings_from("mlflow")


def line_buffered_stdout() -> None:
    """Flush stdout at every newline, whatever it is connected to (a no-op on a terminal,
    which Python already line-buffers, and on a stream that cannot be reconfigured)."""
    stream = sys.stdout
    if isinstance(stream, io.TextIOWrapper) and not stream.line_buffering:
        stream.reconfigure(line_buffering=True)


def quiet_ray_train_worker() -> None:
    """In a Ray Train worker: no ``Reporting training result ...`` line per epoch.

    Ray Train logs it at INFO from a logger named by its module's file path, so the level is
    set on that module's logger object.
    """
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray Train layout: its lines stay
        return
    context.logger.setLevel(logging.WARNING)


def _hide_user_warnings_from(package: str) -> None:
    """Drop the UserWarnings raised in ``package``'s files, at display time.

    Not a ``warnings.filterwarnings`` entry: MLflow wraps its calls in ``catch_warnings()`` with
    its own ``simplefilter("once", UserWarning)`` in front of every filter set here, but it
    leaves ``warnings.showwarning`` alone.
    """
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or spec.origin is None:
        return
    root = str(Path(spec.origin).parent) + os.sep
    previous = warnings.showwarning
    if getattr(previous, "hides", None) == root:
        return

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if issubclass(category, UserWarning) and str(filename).startswith(root):
            return
        previous(message, category, filename, lineno, file, line)

    show.hides = root  # type: ignore[attr-defined]
    warnings.showwarning = show


def print_error(message: str) -> None:
    """``error: <line>`` on stderr for each line of a user error (no traceback)."""
    for line in message.splitlines():
        # escape: a message is text, and "[test/ testannot/]" in a layout is not a style tag.
        console.print(f"[bold red]error:[/] {escape(line)}", markup=True)
