"""The one duration parser: window sizes, session gaps and every duration WITH option.

A duration is a sequence of ``<number> <unit>`` parts (``500ms``, ``30s``, ``1.5m``,
``'10 minutes'``, ``'1 hour 30 minutes'``), optionally written as a SQL interval
(``INTERVAL '1' MINUTE``, ``INTERVAL '1 hour'``); a bare number is a number of seconds. Units
have a fixed length: microseconds to days (months and years have none). Values are integer
microseconds and never negative; whether zero is allowed is for the caller to say (a session gap
may be zero, a window size may not).

This module imports nothing of velosql or sqlglot: V2 workers and connectors may use it.
"""

from __future__ import annotations

import re

# Canonical unit → microseconds.
UNIT_US = {
    "MICROSECOND": 1,
    "MILLISECOND": 1_000,
    "SECOND": 1_000_000,
    "MINUTE": 60_000_000,
    "HOUR": 3_600_000_000,
    "DAY": 86_400_000_000,
}
# Every spelling of a unit (upper case; a plural ``s`` is also accepted) → its canonical name.
_UNIT_NAMES = {
    **{unit: unit for unit in UNIT_US},
    **{"US": "MICROSECOND", "MS": "MILLISECOND", "S": "SECOND", "SEC": "SECOND", "M": "MINUTE",
       "MIN": "MINUTE", "H": "HOUR", "HR": "HOUR", "D": "DAY"},
}  # fmt: skip
_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")
_INTERVAL = re.compile(r"^\s*INTERVAL\s+(.*)$", re.IGNORECASE | re.DOTALL)

EXAMPLES = "1m, 30s, 500ms, '10 minutes' or INTERVAL '1' MINUTE"
"""What an error message shows as the allowed forms (a bare number of seconds is allowed too)."""


def unit_name(text: str) -> str | None:
    """``'ms'``, ``'Minutes'``, ``'SEC'`` … → the canonical unit (``MILLISECOND``, ``MINUTE``, …)."""
    upper = text.upper()
    if upper not in _UNIT_NAMES and len(upper) > 2 and upper.endswith("S"):
        upper = upper[:-1]
    return _UNIT_NAMES.get(upper)


def parse_duration(value: object) -> int:
    """A duration (see the module docstring) → microseconds.

    Numbers (int or float) are seconds. Raises ``ValueError`` naming the value and the allowed
    forms when ``value`` is none of them, is negative, or uses a unit without a fixed length.
    """
    us = _microseconds(value)
    if us is None:
        raise ValueError(f"invalid duration {value!r}: expected a duration such as {EXAMPLES}")
    return us


def _microseconds(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(round(value * 1_000_000)) if value >= 0 else None
    text = str(value)
    interval = _INTERVAL.match(text)
    if interval:
        text = interval.group(1).replace("'", " ")
    parts = _PART.findall(text)
    if not parts or _PART.sub("", text):
        return None  # empty, or something that is no <number><unit> part (a sign, a stray word)
    if len(parts) == 1 and not parts[0][1]:
        return int(round(float(parts[0][0]) * 1_000_000))  # a bare number of seconds
    total = 0.0
    for number, unit in parts:
        name = unit_name(unit) if unit else None
        if name is None:
            return None
        total += float(number) * UNIT_US[name]
    return int(round(total))
