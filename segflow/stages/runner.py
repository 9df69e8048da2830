"""What every stage script shares: load params once, run, turn user errors into exit code 1.

A stage script in pipelines/ is ``run_stage(main)`` around one ``segflow.stages.<stage>.main``.
A :class:`SegflowError` prints one readable message (no traceback) and exits 1; DVC then stops
the pipeline and, because every output is written atomically, earlier outputs stay as they were.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from segflow.config import Params, load_params
from segflow.errors import SegflowError
from segflow.logs import print_error, quiet_libraries
from segflow.paths import PARAMS


def run_stage(main: Callable[[Params], None]) -> None:
    """Load params.yaml, call ``main(params)``; exit 1 with the message on a SegflowError.

    Library log lines and warnings are hidden unless SEGFLOW_VERBOSE=1 (segflow.logs).
    """
    quiet_libraries()
    try:
        main(load_params(PARAMS))
    except SegflowError as exc:
        print_error(str(exc))
        sys.exit(1)
