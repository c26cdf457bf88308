"""Rendering for the CLI: tables aligned as Docker's tabwriter aligns them, JSON,
``--format`` (Docker's table/json/template rules), human sizes and ages.

Plain text on purpose: a table does not need rich, and ``lamina images`` should
not pay rich's import time. Templates (``lamina.cli._template``) are imported only
when a command is given one.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    metavar="table|json|TEMPLATE",
    help="table, json (one object per line), a Go template such as '{{.ID}}', "
    "or 'table TEMPLATE' for a table of its columns.",
)
"""``--format`` of a listing (``ps``, ``images``, ``volume ls``, ...): print it with
:func:`print_listing`."""

INSPECT_FORMAT_OPTION = click.option(
    "-f",
    "--format",
    "fmt",
    default=None,
    metavar="json|TEMPLATE",
    help="JSON (the default) or a Go template such as '{{.Id}}'.",
)
"""``-f/--format`` of a command that shows objects (``inspect``, ``version``, ``info``)."""


class Row(dict[str, Any]):
    """One line of a listing as Docker's formatter shows it to templates: the keys
    are its fields (``{{.ID}}``; a missing one is an error, as a missing struct field
    is), methods such as ``Label`` are template methods, and ``--format json`` prints
    every field, keys sorted as Docker's are."""

    go_struct = True
    go_json_sorted = True

    def __init__(self, kind: str, fields: Mapping[str, Any]) -> None:
        super().__init__(fields)
        self.go_type = f"*{kind}"  # what template errors call it


class LabeledRow(Row):
    """A row of something with labels: ``{{.Labels}}`` is ``k=v,...`` (sorted) and
    ``{{.Label "k"}}`` one value ("" when absent), as Docker's."""

    def __init__(self, kind: str, labels: Mapping[str, str], fields: Mapping[str, Any]) -> None:
        labels_text = ",".join(sorted(f"{k}={v}" for k, v in labels.items()))
        super().__init__(kind, {**fields, "Labels": labels_text})
        self.labels = dict(labels)

    def Label(self, name: str) -> str:
        return self.labels.get(name, "")


def print_listing(
    fmt: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    headers: Mapping[str, str],
) -> None:
    """Rows as Docker prints a listing: ``table`` (or nothing) is the default table of
    ``columns``; ``json`` one object per line; ``table TEMPLATE`` a table of the
    template's columns titled from ``headers``; any other text a template per row."""
    if fmt in ("", "table"):
        print_table([headers[c] for c in columns], [[str(r[c]) for c in columns] for r in rows])
        return
    from lamina.cli._template import render_listing

    sys.stdout.write(render_listing(fmt, rows, headers))


def print_inspect(fmt: str | None, objects: Sequence[Any], errors: Sequence[str] = ()) -> None:
    """Objects as ``docker inspect`` prints them: an indented JSON array, or the
    template once per object (a missing key is an error there). ``errors`` (objects
    not found) and objects the template failed on are one line each after the
    output; then the exit is 125 for a template failure, 1 for a missing object."""
    failed: list[str] = []
    if not fmt or fmt == "json":
        print_json(list(objects))
    else:
        from lamina.cli._template import Template, TemplateError, with_string_maps

        tmpl = Template(fmt)
        for obj in objects:
            try:
                sys.stdout.write(tmpl.execute(with_string_maps(obj), missing_key="error") + "\n")
            except TemplateError as e:
                failed.append(str(e))
    for line in [*errors, *failed]:
        print(f"lamina: error: {line}", file=sys.stderr)
    if failed or errors:
        sys.stdout.flush()
        sys.exit(125 if failed else 1)


def print_object(
    fmt: str | None,
    data: Mapping[str, Any],
    default: Callable[[], None],
    *,
    name: str = "",
    columns: tuple[int, int] | None = None,
) -> None:
    """One object as ``docker version`` / ``docker info`` print it: ``default()``
    without a format, ``json`` on one line, else the template (named ``name`` in its
    errors; a missing key is an error), aligned by a tabwriter of ``columns``
    (minimum width, padding) where Docker uses one."""
    if not fmt:
        default()
        return
    from lamina.cli._template import Template

    text = Template("{{json .}}" if fmt == "json" else fmt, name).execute(data, missing_key="error")
    text += "\n"
    sys.stdout.write(tabwrite(text, *columns) if columns else text)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns as Docker's default tables: tab-separated cells through its tabwriter."""
    lines = ["\t".join(headers), *("\t".join(row) for row in rows)]
    sys.stdout.write(tabwrite("\n".join(lines) + "\n"))


def tabwrite(text: str, minwidth: int = 10, padding: int = 3) -> str:
    """Go's text/tabwriter as Docker's formatter sets it up (pad with spaces, no
    flags): a tab ends a cell; a column is as wide as its widest cell plus
    ``padding`` (at least ``minwidth``) over each run of adjacent lines that have a
    cell in it; the last cell of a line belongs to no column and is not padded."""
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []
    _tab_format(lines, [], 0, len(lines), minwidth, padding, out)
    return "".join(out)


def _tab_format(lines: list[list[str]], widths: list[int], line0: int, line1: int,
                minwidth: int, padding: int, out: list[str]) -> None:  # fmt: skip
    column = len(widths)
    this = line0
    while this < line1:
        if column >= len(lines[this]) - 1:
            this += 1
            continue
        _tab_write(lines, widths, line0, this, out)
        line0 = this
        width = minwidth
        while this < line1 and column < len(lines[this]) - 1:
            width = max(width, display_width(lines[this][column]) + padding)
            this += 1
        widths.append(width)
        _tab_format(lines, widths, line0, this, minwidth, padding, out)
        widths.pop()
        line0 = this
    _tab_write(lines, widths, line0, line1, out)


def _tab_write(lines: list[list[str]], widths: list[int], line0: int, line1: int,
               out: list[str]) -> None:  # fmt: skip
    for i in range(line0, line1):
        for j, cell in enumerate(lines[i]):
            out.append(cell)
            if j < len(widths):
                out.append(" " * (widths[j] - display_width(cell)))
        if i + 1 < len(lines):
            out.append("\n")


def display_width(text: str) -> int:
    """Terminal columns of ``text`` as go-runewidth counts them: East Asian wide
    characters take two, combining marks and control characters none."""
    if text.isascii():
        return sum(1 for ch in text if " " <= ch != "\x7f")
    import unicodedata

    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) == "Cc":
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def go_quote(text: str, ascii_only: bool = False) -> str:
    """Go's strconv.Quote (QuoteToASCII with ``ascii_only``): what ``docker ps``
    shows a command as, and ``%q`` prints."""
    out = ['"']
    for ch in text:
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0xDC80 <= o <= 0xDCFF:  # a byte of invalid UTF-8 (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable() and not (ascii_only and o > 0x7E):
            out.append(ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


_SHORT_ESCAPES = {
    "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
    "\v": "\\v",
}  # fmt: skip


def go_time(ts: float) -> str:
    """Go's time.Time.String() of a Unix time, in local time: what Docker's
    ``CreatedAt`` columns show (``2024-05-01 10:00:00 +0200 CEST``)."""
    from datetime import datetime

    return datetime.fromtimestamp(int(ts)).astimezone().strftime("%Y-%m-%d %H:%M:%S %z %Z")


def human_size(n: float, digits: int = 3) -> str:
    """Docker's units: decimal, 3 significant digits (``5.37MB``; ``digits`` 4 is
    its HumanSize)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(n)}B"
            return f"{n:.{digits}g}{unit}"
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
