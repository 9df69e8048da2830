"""Cron expressions: parsing, and their translation into systemd's OnCalendar syntax.

``retrain.schedule`` is written in cron's five fields (minute hour day-of-month month
day-of-week). :func:`parse_cron` checks it field by field, so a typo fails with the field's name
instead of surfacing as a scheduler that never fires; :func:`cron_to_oncalendar` gives the
systemd timer the same minutes, so one expression drives every scheduler
(segflow/lifecycle/schedule.py).
"""

from __future__ import annotations

import re

from segflow.errors import SegflowError

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
