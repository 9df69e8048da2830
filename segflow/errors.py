"""The one exception type for errors a user can cause.

Bad data, bad params and missing files all raise :class:`SegflowError` with a message that
names the file or field and the rule it broke. The CLI and the stage scripts print the
message without a traceback and exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SegflowError(Exception):
    """A user-facing error: the message names the file or field and the rule."""
