"""``logs``: a container's stdout and stderr on ours, with Docker's ``--tail``,
``--since``/``--until`` and ``--timestamps``."""

from __future__ import annotations

import sys
import time

import click

from lamina.cli._click import FlagError
from lamina.cli._common import _command, open_engine

# -- logs ----------------------------------------------------------------------------


def _rfc3339_nano(ts: float) -> str:
    """Docker's 9 digits; lamina keeps microseconds (a float holds no more), printed
    exactly: the time of a line fed back to ``--since``/``--until`` is the line's."""
    secs = int(ts)
    micros = round((ts - secs) * 1e6)
    if micros >= 1_000_000:
        secs, micros = secs + 1, micros - 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{micros:06d}000Z"


@_command("logs")
@click.argument("container")
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option("-n", "--tail", default="all", show_default=True, help="Lines to show from the end.")
@click.option(
    "--since", default=None, help="Since a time (RFC 3339, Unix time) or a duration ago (10m)."
)
@click.option("--until", default=None, help="Until a time (RFC 3339, Unix time) or a duration ago.")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
def logs(
    container: str, follow: bool, tail: str, since: str | None, until: str | None, timestamps: bool
) -> None:
    """Fetch the logs of a container (its stdout and stderr, on ours)."""
    from lamina.engine._options import parse_time

    now = time.time()
    try:
        tail_n = None if tail == "all" else int(tail)
    except ValueError:
        raise FlagError(f"invalid --tail {tail!r}: expected a number or all", "logs") from None
    if tail_n is not None and tail_n < 0:
        tail_n = None  # Docker: negative means all
    since_ts = parse_time(since, now, "--since") if since else None
    until_ts = parse_time(until, now, "--until") if until else None
    engine = open_engine()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for entry in engine.logs(container, follow=follow, tail=tail_n, since=since_ts, until=until_ts):
        stream = err if entry.stream == "stderr" else out
        if timestamps:
            stream.write(_rfc3339_nano(entry.timestamp).encode() + b" ")
        stream.write(entry.data)
        if follow:
            stream.flush()
    out.flush()
    err.flush()
