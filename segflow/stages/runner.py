"""What every stage script shares: load params once, run, turn user errors into exit code 1.

A stage script in pipelines/ is ``run_stage(main)`` around one ``segflow.stages.<stage>.main``.
A :class:`SegflowError` prints one readable message (no traceback) and exits 1; DVC then stops
the pipeline and, because every output is written atomically, earlier outputs stay as they were.
So does an :class:`OSError` the user's machine causes (a full disk, a quota, a read-only or
unreadable path, a missing input: :mod:`.oserror`). A stage also dies with the ``dvc`` that
started it (:mod:`.parent`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from segflow.config import Params, load_params
from segflow.errors import SegflowError
from segflow.logs import print_error, quiet_libraries
from segflow.paths import PARAMS
from segflow.stages.oserror import os_error_message
from segflow.stages.parent import die_with_parent


def run_stage(main: Callable[[Params], None]) -> None:
    """Load params.yaml, call ``main(params)``; exit 1 with the message on a user error.

    Library log lines and warnings are hidden unless SEGFLOW_VERBOSE=1 (segflow.logs).
    """
    die_with_parent()
    quiet_libraries()
    try:
        params = load_params(PARAMS)
        # One HTTP policy for every MLflow call of the stage (and of its subprocesses).
        os.environ.update(params.mlflow.environ())
        main(params)
    except SegflowError as exc:
        print_error(str(exc))
        sys.exit(1)
    except OSError as exc:
        message = os_error_message(exc)
        if message is None:  # not one a user causes: a bug keeps its traceback
            raise
        print_error(message)
        sys.exit(1)
