"""Rendering for the CLI: aligned tables, JSON, human sizes and ages.

Plain text on purpose: a table does not need rich, and ``lamina images`` should
not pay rich's import time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [headers, *rows]
    out = []
    for line in lines:
        cells = [c.ljust(widths[i]) for i, c in enumerate(line)]
        out.append("   ".join(cells).rstrip())
    sys.stdout.write("\n".join(out) + "\n")


def human_size(n: float) -> str:
    """Docker's units: decimal, 3 significant digits (``5.37MB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(n)}B"
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n}PB"


def human_age(ts: float | None) -> str:
    if not ts:
        return "N/A"
    d = max(0.0, time.time() - ts)
    for limit, div, unit in (
        (60, 1, "second"),
        (3600, 60, "minute"),
        (86400, 3600, "hour"),
        (86400 * 14, 86400, "day"),
        (86400 * 60, 86400 * 7, "week"),
        (86400 * 365 * 2, 86400 * 30, "month"),
        (float("inf"), 86400 * 365, "year"),
    ):
        if d < limit:
            n = int(d // div)
            if unit == "second" and n < 1:
                return "Less than a second ago"
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "N/A"


def parse_timestamp(value: str | None) -> float | None:
    """RFC 3339 (as in image configs) to epoch seconds; None when absent/invalid."""
    if not value:
        return None
    from datetime import datetime

    v = value.strip()
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    # Python 3.11 fromisoformat accepts at most 6 fractional digits.
    if "." in v:
        head, _, rest = v.partition(".")
        frac = "".join(c for c in rest if c.isdigit())
        tz = rest[len(frac) :]
        v = f"{head}.{frac[:6]}{tz}"
    try:
        return datetime.fromisoformat(v).timestamp()
    except ValueError:
        return None
