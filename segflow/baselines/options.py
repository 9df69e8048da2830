"""Baseline options from ``KEY=VALUE`` strings (``segflow baseline NAME -o stride=4``).

Each baseline's options are a frozen dataclass whose fields have defaults and simple types
(int, float, str); params.yaml has no section for baselines, so the command line carries them
and the MLflow run records them. An unknown key or a value of the wrong type is one
:class:`SegflowError` naming the key and the known ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, TypeVar

from segflow.errors import SegflowError

T = TypeVar("T")


def parse_options(cls: type[T], items: Iterable[str], what: str) -> T:
    """``cls`` with the fields that ``items`` (``KEY=VALUE``) set; ``what`` names it in errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SegflowError(f"{what}: option {item!r} is not KEY=VALUE")
        if key not in fields:
            raise SegflowError(
                f"{what}: unknown option {key!r}; known options: {', '.join(fields)}"
            )
        kind = type(fields[key].default)
        try:
            values[key] = kind(text.strip())
        except ValueError:
            raise SegflowError(
                f"{what}: option {key} must be {kind.__name__} (got {text.strip()!r})"
            ) from None
    return cls(**values)


def check(condition: bool, what: str, message: str) -> None:
    """A SegflowError ``what: message`` unless ``condition`` (for options' ``__post_init__``)."""
    if not condition:
        raise SegflowError(f"{what}: {message}")
