"""Units of the deployment files: durations, sizes and cron schedules.

Durations are float seconds: ``10s``, ``1m30s``, ``500ms``, ``1h``, ``2d``, parts
optionally separated by spaces and units also spelled as humantime (ZLayer's parser)
spells them (``5min``, ``30 sec``, ``2 hours``); a bare number is seconds.
Sizes are int bytes in Kubernetes' notation, which ZLayer uses: ``512Mi``, ``1Gi``
(binary), ``100M``, ``1k`` (decimal); a bare number is bytes. Compose files carry
Docker's sizes (``512m`` is binary), which the Compose reader parses with the
engine's ``parse_memory``. Both parsers take numbers as they are, so the JSON form
of the model (seconds, bytes) reads back unchanged.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from croniter import croniter

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
# humantime's longer spellings (ZLayer parses its durations with humantime)
_DURATION_WORDS = {
    "nsec": "ns",
    "usec": "us",
    "msec": "ms",
    "sec": "s",
    "secs": "s",
    "second": "s",
    "seconds": "s",
    "min": "m",
    "mins": "m",
    "minute": "m",
    "minutes": "m",
    "hr": "h",
    "hrs": "h",
    "hour": "h",
    "hours": "h",
    "day": "d",
    "days": "d",
    "week": "w",
    "weeks": "w",
}
_DURATION_PART = re.compile(
    r"\s*(\d+(?:\.\d+)?)\s*("
    + "|".join(sorted([*_DURATION_UNITS, *_DURATION_WORDS], key=len, reverse=True))
    + r")(?![a-zµ])"
)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?")
_SIZE_UNITS = {
    None: 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
}
_MAX_SIZE = 1 << 62  # more than any host has; keeps the int in a signed 64-bit field


def _number(value: Any, what: str) -> float | None:
    """value as a number if it is one already (bool is not), else None for a string."""
    if isinstance(value, bool):
        raise ValueError(f"invalid {what} {value!r}")
    if isinstance(value, int | float):
        if value != value or value < 0:  # NaN too
            raise ValueError(f"invalid {what} {value!r}: must be >= 0")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid {what} {value!r}: expected a string")
    return None


def parse_duration(value: Any) -> float:
    """``1m30s`` -> 90.0; numbers pass as seconds. ValueError names the value."""
    number = _number(value, "duration")
    if number is not None:
        return number
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    total, pos = 0.0, 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            break
        unit = _DURATION_WORDS.get(m.group(2), m.group(2))
        total += float(m.group(1)) * _DURATION_UNITS[unit]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {value!r}: expected e.g. 10s, 1m30s, 500ms or 1h")
    return total


def parse_size(value: Any) -> int:
    """``512Mi`` -> 536870912, ``100M`` -> 100000000; numbers pass as bytes."""
    number = _number(value, "size")
    if number is not None:
        if number != int(number):
            raise ValueError(f"invalid size {value!r}: bytes are whole numbers")
        size = int(number)
    else:
        m = _SIZE.fullmatch(value.strip())
        if m is None:
            raise ValueError(f"invalid size {value!r}: expected e.g. 512Mi, 1Gi, 100M or 1k")
        exact = float(m.group(1)) * _SIZE_UNITS[m.group(2)]
        if exact != int(exact):
            raise ValueError(f"invalid size {value!r}: bytes are whole numbers")
        size = int(exact)
    if size > _MAX_SIZE:
        raise ValueError(f"invalid size {value!r}: too large")
    return size


def cron_schedule(expression: str, start: datetime) -> croniter:
    """The iterator of a cron ``schedule``: five fields as cron has them, or ZLayer's six
    or seven (seconds first, then optionally a year). ValueError if it is not valid."""
    from croniter import croniter

    fields = expression.split()
    if len(fields) not in (5, 6, 7):
        raise ValueError(
            f"invalid cron schedule {expression!r}: expected 5 fields (minute hour day month "
            "weekday), or 6-7 with seconds first"
        )
    try:
        return croniter(expression, start, second_at_beginning=len(fields) > 5)
    except (ValueError, KeyError) as exc:  # croniter's errors are ValueErrors
        raise ValueError(f"invalid cron schedule {expression!r}: {exc}") from None
