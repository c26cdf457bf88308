"""``lamina events``: the root's event journal (``lamina.engine._events``), as Docker's
``docker events`` prints it.

Without ``--since`` or ``--until`` only new events are shown, followed until Ctrl-C
(which ends it quietly, exit 0). ``--since`` shows the journal's events from then
first; ``--until`` stops at that time: at once when it has passed (with no
``--since``, the journal's events up to it), else when it comes. Times are RFC 3339,
Unix seconds (kept to the nanosecond) or a duration back from now (``10m``).

Start-up matters (it is left running in terminals and scripts): this imports the
journal and click only; templates and the time parser are imported when used.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from lamina.cli._click import FlagError, command

if TYPE_CHECKING:
    from lamina.engine._events import Event


@command("events")
@click.option(
    "--since",
    default=None,
    metavar="TIME",
    help="Show events since this time (RFC 3339, Unix seconds, or a duration ago: 10m).",
)
@click.option("--until", default=None, metavar="TIME", help="Stream events until this time.")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="type, event, container, image, label, network, volume or scope (repeatable).",
)
@click.option(
    "--format",
    "fmt",
    default=None,
    metavar="json|TEMPLATE",
    help="json (one object per line) or a Go template such as '{{.Action}}'.",
)
def events(since: str | None, until: str | None, filters: tuple[str, ...], fmt: str | None) -> None:
    """Get real time events from lamina's commands."""
    from lamina.engine._events import EventFilter, InvalidFilter, follow, read

    root = click.get_current_context().find_root().obj.root
    try:
        selected = EventFilter.parse(filters)
    except InvalidFilter as e:
        raise FlagError(str(e), "events") from None
    now = time.time_ns()
    since_ns = _time_ns(since, now, "--since") if since else None
    until_ns = _time_ns(until, now, "--until") if until else None
    if since_ns is not None and until_ns is not None and until_ns < since_ns:
        raise FlagError(f"--since ({since}) cannot be after --until ({until})", "events")
    line_of = _formatter(fmt)
    if until_ns is not None and since_ns is None:
        since_ns = 0  # Docker: an end alone shows the journal's events up to it
    remote = click.get_current_context().find_root().obj.remote is not None
    try:
        if remote:  # the daemon's journal, each event written out as it comes
            from lamina.cli._common import open_engine

            engine: Any = open_engine()
            wanted = {key: sorted(values) for key, values in selected.values.items()}
            stream = engine.events(since_ns, until_ns, wanted)
        elif until_ns is not None and until_ns <= now:
            stream = read(root, since_ns, until_ns, selected)
        else:
            stream = follow(root, since_ns, until_ns, selected, idle=sys.stdout.flush)
        for event in stream:
            sys.stdout.write(line_of(event) + "\n")
            if remote:
                sys.stdout.flush()
        sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C is how following ends
        sys.stdout.flush()


def _time_ns(value: str, now_ns: int, flag: str) -> int:
    """A time of ``--since``/``--until`` in Unix nanoseconds: the forms of ``logs
    --since``, with Unix seconds and RFC 3339 fractions kept to the nanosecond (an
    event's own time, copied from the output, must select that event)."""
    v = value.strip()
    unix = re.fullmatch(r"(\d+)(?:\.(\d{1,9}))?", v)
    if unix:
        return int(unix[1]) * 10**9 + int((unix[2] or "").ljust(9, "0"))
    from lamina.engine._options import parse_time

    fraction = re.fullmatch(r"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d)\.(\d+)(.*)", v)
    if fraction:
        whole = parse_time(fraction[1] + fraction[3], now_ns / 1e9, flag)
        return round(whole) * 10**9 + int(fraction[2][:9].ljust(9, "0"))
    return round(parse_time(v, now_ns / 1e9, flag) * 1e9)


# -- output ----------------------------------------------------------------------------


def _formatter(fmt: str | None) -> Callable[[Event], str]:
    """The line of an event: Docker's, or a template's (``json`` is ``{{json .}}``),
    checked on an empty event first, as Docker checks it."""
    if not fmt:
        return event_line
    from lamina.cli._template import Func, Template
    from lamina.engine._events import Event

    tmpl = Template("{{json .}}" if fmt == "json" else fmt)
    funcs = {"json": Func(_json, "any")}
    tmpl.execute(_Message(Event("", "", "")), funcs=funcs)
    return lambda e: tmpl.execute(_Message(e), funcs=funcs)


def event_line(e: Event) -> str:
    """Docker's default line: ``TIME TYPE ACTION ID (key=value, ...)``, the time in
    local time to the nanosecond, the attributes sorted."""
    line = f"{_go_time(e.time_nano)} {e.type} {e.action} {e.actor_id}"
    if e.attributes:
        line += " (" + ", ".join(f"{k}={v}" for k, v in sorted(e.attributes.items())) + ")"
    return line


def _go_time(ns: int) -> str:
    """Go's ``2006-01-02T15:04:05.000000000Z07:00`` in local time."""
    from datetime import datetime

    t = datetime.fromtimestamp(ns // 10**9).astimezone()
    offset = t.utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset else 0
    sign = "-" if minutes < 0 else "+"
    zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}" if minutes else "Z"
    return f"{t:%Y-%m-%dT%H:%M:%S}.{ns % 10**9:09d}{zone}"


class _Actor:
    """Docker's ``events.Actor`` as templates see it."""

    go_type = "events.Actor"

    def __init__(self, e: Event) -> None:
        from lamina.cli._template import StringMap

        self.ID = e.actor_id
        self.Attributes = StringMap(e.attributes)

    def json_form(self) -> dict[str, Any]:
        return {"ID": self.ID, "Attributes": self.Attributes}


class _Message:
    """Docker's ``*events.Message`` as templates see it: Go's field names (``.Status``,
    ``.Actor.Attributes``, ``.TimeNano``); its JSON is Docker's (``Event.message``)."""

    go_type = "*events.Message"

    def __init__(self, e: Event) -> None:
        self._message = e.message()
        self.Status: str = self._message.get("status", "")
        self.ID: str = self._message.get("id", "")
        self.From: str = self._message.get("from", "")
        self.Type = e.type
        self.Action = e.action
        self.Actor = _Actor(e)
        self.Scope = e.scope
        self.Time = e.time
        self.TimeNano = e.time_nano

    def json_form(self) -> dict[str, Any]:
        return self._message


def _json(value: Any) -> str:
    """Docker's ``json`` template function, with the event types' JSON forms."""
    from lamina.cli._gofmt import go_json

    if isinstance(value, (_Message, _Actor)):
        value = value.json_form()
    try:
        return go_json(value)
    except (ValueError, TypeError):
        return ""
