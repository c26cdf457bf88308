"""Observing containers: ``ps``, ``stats``, ``top``, ``port`` and ``inspect``, with
Docker's columns, filters and ``--format`` fields."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from lamina.cli._click import FlagError
from lamina.cli._common import (
    _command,
    _short,
    human_duration,
    is_remote,
    open_engine,
    parse_filters,
    status_text,
)
from lamina.cli._output import FORMAT_OPTION, INSPECT_FORMAT_OPTION

if TYPE_CHECKING:
    from lamina.engine import Container


# -- ps ------------------------------------------------------------------------------


def _ellipsis(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _mount_names(c: Container) -> list[str]:
    return [m.source or m.target for m in c.config.mounts if m.type in ("volume", "bind")]


# Docker's ps columns: the default table, and the title of each template field.
_PS_COLUMNS = ("ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names")
_PS_HEADERS = {
    "ID": "CONTAINER ID", "Names": "NAMES", "Image": "IMAGE", "Command": "COMMAND",
    "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE",
    "Status": "STATUS", "Size": "SIZE", "Labels": "LABELS", "Mounts": "MOUNTS",
    "LocalVolumes": "LOCAL VOLUMES", "Networks": "NETWORKS", "Isolation": "ISOLATION",
}  # fmt: skip


def ps_row(c: Container, now: float, trunc: bool = True) -> Any:
    """One container as ``docker ps`` shows it to ``--format`` (Docker's fields, all
    text, truncated unless ``--no-trunc``) and lamina's ``Isolation``."""
    from lamina.cli._output import LabeledRow, go_quote, go_time
    from lamina.engine._filters import state_word

    command = " ".join(c.command)
    mounts = _mount_names(c)
    fields = {
        "ID": _short(c.id) if trunc else c.id,
        "Names": c.name,
        "Image": c.config.image_ref or _short(c.config.image.removeprefix("sha256:")),
        "Command": go_quote(_ellipsis(command, 20) if trunc else command),
        "CreatedAt": go_time(c.created),
        "RunningFor": f"{human_duration(now - c.created)} ago",
        "Ports": ", ".join(str(p) for p in c.ports),
        "State": state_word(c),
        "Status": status_text(c, now),
        "Size": "0B",
        "Mounts": ",".join(_ellipsis(m, 15) if trunc else m for m in mounts),
        "LocalVolumes": str(sum(m.type == "volume" for m in c.config.mounts)),
        "Networks": str(c.config.network),
        "Isolation": c.config.isolation,
    }
    return LabeledRow("ContainerRow", c.config.labels, fields)


@_command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default: running).")
@click.option("-q", "--quiet", is_flag=True, help="Only display container IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="status=, name=, id=, label=, ancestor=, exited=",
)
@click.option(
    "-n", "--last", type=int, default=None, help="Show the N last created containers (all states)."
)
@click.option(
    "-l", "--latest", is_flag=True, help="Show the latest created container (all states)."
)
@FORMAT_OPTION
def ps(
    all_: bool,
    quiet: bool,
    no_trunc: bool,
    filters: tuple[str, ...],
    last: int | None,
    latest: bool,
    fmt: str,
) -> None:
    """List containers."""
    from lamina.cli._output import print_listing
    from lamina.engine import InvalidFilter

    engine = open_engine()
    if latest:
        last = 1
    try:
        found = engine.list(all=all_ or last is not None, filters=parse_filters(filters, "ps"))
    except InvalidFilter as e:
        raise FlagError(str(e), "ps") from None
    containers = sorted(found, key=lambda c: c.created, reverse=True)
    if last is not None and last >= 0:
        containers = containers[:last]
    if quiet:
        for c in containers:
            click.echo(c.id if no_trunc else _short(c.id))
        return
    rows = [ps_row(c, time.time(), trunc=not no_trunc) for c in containers]
    print_listing(fmt, rows, _PS_COLUMNS, _PS_HEADERS)


# -- stats and top -------------------------------------------------------------------


def _binary_size(n: float) -> str:
    """Docker's stats units: binary, two decimals (``1.5MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.2f}{unit}"
        n /= 1024
    return f"{n:.2f}PiB"


# Docker's stats columns: the default table, and the title of each template field.
_STATS_COLUMNS = ("ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs")
_STATS_HEADERS = {
    "Container": "CONTAINER", "Name": "NAME", "ID": "CONTAINER ID", "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
    "BlockIO": "BLOCK I/O", "PIDs": "PIDS",
}  # fmt: skip


def _stats_row(c: Container, ref: str, s: Any, prev: Any, ncpu: int, trunc: bool) -> Any:
    """One sample as ``docker stats`` shows it to ``--format``; ``ref`` is how the
    container was asked for (its ID when all are listed)."""
    from lamina.cli._output import Row, human_size

    cpu = s.cpu_percent
    if prev is not None:
        sys_delta = s.system_cpu_ns - prev.system_cpu_ns
        cpu_delta = s.cpu_usage_ns - prev.cpu_usage_ns
        if sys_delta > 0 and cpu_delta >= 0:
            cpu = cpu_delta / sys_delta * ncpu * 100.0
    mem_pct = s.memory_used / s.memory_limit * 100.0 if s.memory_limit else 0.0
    fields = {
        "Container": ref,
        "ID": _short(c.id) if trunc else c.id,
        "Name": c.name,
        "CPUPerc": f"{cpu:.2f}%",
        "MemUsage": f"{_binary_size(s.memory_used)} / {_binary_size(s.memory_limit)}",
        "MemPerc": f"{mem_pct:.2f}%",
        "NetIO": f"{human_size(s.net_rx)} / {human_size(s.net_tx)}",
        "BlockIO": f"{human_size(s.block_read)} / {human_size(s.block_write)}",
        "PIDs": str(s.pids),
    }
    return Row("StatsRow", fields)


@_command("stats")
@click.argument("containers", nargs=-1)
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default: running).")
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@FORMAT_OPTION
def stats(
    containers: tuple[str, ...], all_: bool, no_stream: bool, no_trunc: bool, fmt: str
) -> None:
    """Display live resource usage of containers."""
    from lamina.cli._output import print_listing
    from lamina.errors import LaminaError

    engine = open_engine()
    if containers:
        targets = [engine.get(ref) for ref in containers]
    else:
        targets = [
            c for c in engine.list(all=all_) if all_ or str(c.state.status) in ("running", "paused")
        ]
    ncpu = os.cpu_count() or 1
    prev: dict[str, Any] = {}

    def sample() -> dict[str, Any]:
        out = {}
        for c in targets:
            try:
                out[c.id] = engine.stats(c.id)
            except LaminaError:
                continue
        return out

    if is_remote():  # the daemon's streams, one connection each (not a request a second)
        streams = _StatsStreams(engine, [c.id for c in targets])
        sample = streams.latest
        prev, first = streams.first_two() if no_stream else ({}, streams.first())
    else:
        first = sample()
        if no_stream:
            time.sleep(0.5)  # two samples: CPU % is a rate
            prev, first = first, sample()
    refs = dict(zip((c.id for c in targets), containers, strict=False))
    while True:
        rows = [
            _stats_row(c, refs.get(c.id, c.id), first[c.id], prev.get(c.id), ncpu, not no_trunc)
            for c in targets
            if c.id in first
        ]
        if fmt in ("", "table") and not no_stream and sys.stdout.isatty():
            sys.stdout.write("\033[2J\033[H")
        print_listing(fmt, rows, _STATS_COLUMNS, _STATS_HEADERS)
        sys.stdout.flush()
        if no_stream:
            return
        time.sleep(1)
        prev, first = first, sample()
        if containers and not first:
            return


class _StatsStreams:
    """The latest sample of each container from the daemon's stats streams, each read
    by a thread of its own; a stream ends with its container."""

    def __init__(self, engine: Any, ids: Sequence[str]) -> None:
        import threading

        self._cond = threading.Condition()
        self._samples: dict[str, list[Any]] = {i: [] for i in ids}
        self._open = set(ids)
        for i in ids:
            threading.Thread(target=self._read, args=(engine, i), daemon=True).start()

    def _read(self, engine: Any, container_id: str) -> None:
        import http.client

        from lamina.errors import LaminaError

        try:
            for s in engine.stats_stream(container_id):
                with self._cond:
                    self._samples[container_id] = [*self._samples[container_id][-1:], s]
                    self._cond.notify_all()
        except (LaminaError, OSError, http.client.HTTPException):
            pass  # removed, or its stream broken: shown as gone, as a removed one in-process
        finally:
            with self._cond:
                self._open.discard(container_id)
                self._cond.notify_all()

    def _wait_for(self, count: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: all(
                len(got) >= count or i not in self._open for i, got in self._samples.items()))

    def latest(self) -> dict[str, Any]:
        with self._cond:
            return {i: got[-1] for i, got in self._samples.items() if got and i in self._open}

    def first(self) -> dict[str, Any]:
        self._wait_for(1)
        return self.latest()

    def first_two(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Each container's first two samples (a second apart: CPU % is a rate)."""
        self._wait_for(2)
        with self._cond:
            pairs = {i: got for i, got in self._samples.items() if len(got) == 2}
        return {i: p[0] for i, p in pairs.items()}, {i: p[1] for i, p in pairs.items()}


@_command("port")
@click.argument("container")
@click.argument("private_port", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
def port(container: str, private_port: str | None) -> None:
    """List a container's published ports, or the host addresses of one of its ports."""
    from lamina.errors import LaminaError

    engine = open_engine()
    c = engine.get(container)
    ports = c.ports
    if private_port is not None:
        number, _, proto = private_port.partition("/")
        proto = (proto or "tcp").lower()
        if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("tcp", "udp"):
            raise LaminaError(f"invalid port {private_port!r}: expected PORT[/tcp|udp]")
        ports = [p for p in ports if p.private == f"{int(number)}/{proto}"]
        if not ports:
            raise LaminaError(f"no public port '{int(number)}/{proto}' published for {container}")
        for p in ports:
            click.echo(p.public)
        return
    for p in ports:
        click.echo(f"{p.private} -> {p.public}")


@_command("top")
@click.argument("container")
def top(container: str) -> None:
    """Display the running processes of a container."""
    from lamina.cli._output import print_table

    headers, rows = open_engine().top(container)
    print_table(headers, rows)


# -- inspect -------------------------------------------------------------------------


@_command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--type",
    "kind",
    type=click.Choice(["container", "image"]),
    default=None,
    help="Only look for this kind of object.",
)
@INSPECT_FORMAT_OPTION
@click.option("-s", "--size", is_flag=True, help="Accepted for Docker compatibility.")
def inspect(names: tuple[str, ...], kind: str | None, fmt: str | None, size: bool) -> None:
    """Show low-level information on containers or images, as JSON (containers first)."""
    _inspect(names, kind, fmt)


@_command("inspect")
@click.argument("containers", nargs=-1, required=True)
@INSPECT_FORMAT_OPTION
@click.option("-s", "--size", is_flag=True, help="Accepted for Docker compatibility.")
def container_inspect(containers: tuple[str, ...], fmt: str | None, size: bool) -> None:
    """Show low-level information on one or more containers, as JSON."""
    _inspect(containers, "container", fmt)


def _inspect(names: Sequence[str], kind: str | None, fmt: str | None) -> None:
    from lamina.cli._output import print_inspect
    from lamina.errors import LaminaError, NotFound

    engine = open_engine() if kind in (None, "container") else None
    images = None
    out: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in names:
        found: dict[str, Any] | None = None
        if engine is not None:
            try:
                found = dict(engine.inspect(name))
            except NotFound:
                found = None
        if found is None and kind in (None, "image"):
            images = images or open_engine(containers=False)
            try:
                found = images.inspect_image(name)
            except LaminaError:
                found = None
        if found is None:
            missing.append(name)
        else:
            out.append(found)
    print_inspect(fmt, out, [f"no such {kind or 'object'}: {name}" for name in missing])
