"""What every stage script shares: load params once, run, turn user errors into exit code 1.

A stage script in pipelines/ is ``run_stage(main)`` around a few direct calls into segflow. A
:class:`SegflowError` prints one readable message (no traceback) and exits 1; DVC then stops the
pipeline and, because every output is written atomically, earlier outputs stay as they were.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from segflow.config import Params, load_params
from segflow.errors import SegflowError
from segflow.logs import quiet_libraries
from segflow.paths import PARAMS

console = Console(stderr=True, highlight=False, soft_wrap=True)


def run_stage(main: Callable[[Params], None]) -> None:
    """Load params.yaml, call ``main(params)``; exit 1 with the message on a SegflowError.

    Library log lines and warnings are hidden unless SEGFLOW_VERBOSE=1 (segflow.logs).
    """
    quiet_libraries()
    try:
        main(load_params(PARAMS))
    except SegflowError as exc:
        for line in str(exc).splitlines():
            # escape: a message is text, and "[test/ testannot/]" in a layout is not a style tag.
            console.print(f"[bold red]error:[/] {escape(line)}", markup=True)
        sys.exit(1)
