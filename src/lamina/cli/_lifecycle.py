"""``stop``, ``restart``, ``kill``, ``pause``, ``unpause``, ``rm``, ``rename``,
``wait``, ``update`` and ``container prune``: one engine call per container named,
failures one line each (Docker goes on with the others, then exits 1)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from lamina.cli._click import FlagError
from lamina.cli._common import _command, _each, _error, is_remote, open_engine

_STOP_TIME = click.option(
    "-t",
    "--time",
    "--timeout",
    "timeout",
    type=int,
    default=None,
    help="Seconds to wait before killing.",
)


@_command("stop")
@click.argument("containers", nargs=-1, required=True)
@_STOP_TIME
@click.option(
    "-s",
    "--signal",
    "sig",
    default=None,
    help="Signal to send (default: the container's stop signal).",
)
def stop(containers: tuple[str, ...], timeout: int | None, sig: str | None) -> None:
    """Stop one or more running containers (stop signal, then SIGKILL)."""
    engine = open_engine()
    _each(containers, lambda ref: engine.stop(ref, timeout=timeout, signal=sig))


@_command("restart")
@click.argument("containers", nargs=-1, required=True)
@_STOP_TIME
@click.option("-s", "--signal", "sig", default=None, help="Signal to stop with.")
def restart(containers: tuple[str, ...], timeout: int | None, sig: str | None) -> None:
    """Restart one or more containers."""
    engine = open_engine()
    _each(containers, lambda ref: engine.restart(ref, timeout=timeout, signal=sig))


@_command("kill")
@click.argument("containers", nargs=-1, required=True)
@click.option("-s", "--signal", "sig", default="SIGKILL", show_default=True, help="Signal to send.")
def kill(containers: tuple[str, ...], sig: str) -> None:
    """Kill one or more running containers."""
    engine = open_engine()
    _each(containers, lambda ref: engine.kill(ref, sig))


@_command("pause")
@click.argument("containers", nargs=-1, required=True)
def pause(containers: tuple[str, ...]) -> None:
    """Pause all processes within one or more containers."""
    engine = open_engine()
    _each(containers, engine.pause)


@_command("unpause")
@click.argument("containers", nargs=-1, required=True)
def unpause(containers: tuple[str, ...]) -> None:
    """Unpause all processes within one or more containers."""
    engine = open_engine()
    _each(containers, engine.unpause)


@_command("rm")
@click.argument("containers", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Kill and remove a running container.")
@click.option("-v", "--volumes", is_flag=True, help="Remove the container's anonymous volumes.")
def rm(containers: tuple[str, ...], force: bool, volumes: bool) -> None:
    """Remove one or more containers."""
    engine = open_engine()
    _each(containers, lambda ref: engine.remove(ref, force=force, volumes=volumes),
          missing_ok=force)  # fmt: skip


@_command("rename")
@click.argument("container")
@click.argument("new_name")
def rename(container: str, new_name: str) -> None:
    """Rename a container."""
    open_engine().rename(container, new_name)


@_command("wait")
@click.argument("containers", nargs=-1, required=True)
@click.option(
    "--condition",
    type=click.Choice(["not-running", "next-exit", "removed"]),
    default="not-running",
    show_default=True,
)
def wait(containers: tuple[str, ...], condition: str) -> None:
    """Block until one or more containers stop, then print their exit codes."""
    from lamina.runtime import WaitCondition

    engine = open_engine()

    def do(ref: str) -> None:
        click.echo(str(engine.wait(ref, WaitCondition(condition)).exit_code))

    _each(containers, do, echo=False)


@_command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--filter", "filters", multiple=True, metavar="label=K[=V]|until=TIME")
def prune(force: bool, filters: tuple[str, ...]) -> None:
    """Remove all stopped containers, and what interrupted commands left."""
    from lamina.cli._output import human_size
    from lamina.engine import prune_containers

    select = prune_selector(filters, "container prune")
    question = (
        "WARNING! This will remove all stopped containers.\nAre you sure you want to continue?"
    )
    if not force and sys.stdin.isatty() and not click.confirm(question):
        return
    engine = open_engine()
    result = (engine.prune_containers(select) if is_remote()  # type: ignore[attr-defined]
              else prune_containers(engine, select))  # fmt: skip
    for message in result.errors:
        _error(message)
    if result.deleted:
        click.echo("Deleted Containers:")
        for cid in result.deleted:
            click.echo(cid)
        click.echo("")
    click.echo(f"Total reclaimed space: {human_size(result.reclaimed)}")


def prune_selector(filters: Sequence[str], command: str) -> Any:
    """``--filter`` of the prune commands (until=, label=, label!=) as a
    ``lamina.engine.Selector``."""
    from lamina.engine import Selector

    select = Selector()
    for f in filters:
        key, _, value = f.partition("=")
        if key == "until":
            from lamina.engine._options import parse_time

            select.until = parse_time(value, time.time(), "--filter until")
        elif key == "label":
            select.labels.append(value)
        elif key == "label!":
            select.not_labels.append(value)
        else:
            raise FlagError(f"invalid filter {f!r} (supported: label, label!, until)", command)
    return select


@_command("update")
@click.argument("containers", nargs=-1, required=True)
@click.option("--cpus", default=None, help="Number of CPUs.")
@click.option("-c", "--cpu-shares", type=int, default=None, help="CPU shares (relative weight).")
@click.option("--cpuset-cpus", default=None, help="CPUs to run on (0-3, 0,1).")
@click.option("-m", "--memory", default=None, help="Memory limit (b, k, m, g).")
@click.option("--memory-swap", default=None, help="Memory plus swap limit; -1 for unlimited.")
@click.option("--pids-limit", type=int, default=None, help="Process limit (-1 for unlimited).")
@click.option(
    "--restart",
    default=None,
    metavar="POLICY",
    help="Restart policy: no, always, on-failure[:N], unless-stopped.",
)
def update(containers: tuple[str, ...], restart: str | None, **flags: Any) -> None:
    """Update the resource limits or restart policy of one or more containers."""
    from lamina.engine._options import InvalidOption, parse_resources, parse_restart

    if restart is None and all(v is None for v in flags.values()):
        raise FlagError("you must provide one or more flags when using this command", "update")
    try:
        resources = None
        if any(v is not None for v in flags.values()):
            resources = parse_resources(**flags, cpu_count=os.cpu_count(), for_update=True)
        policy = parse_restart(restart) if restart is not None else None
    except InvalidOption as e:
        raise FlagError(str(e), "update") from None
    engine = open_engine()
    _each(containers, lambda ref: engine.update(ref, resources, restart=policy))
