"""Volume commands: ``volume create|ls|rm|inspect|prune`` (Docker's local driver),
through the engine: it knows which containers use a volume (removal and prune
refuse volumes in use, as Docker does) and which volumes a filter selects.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from lamina.cli._click import DockerGroup, FlagError
from lamina.cli._common import parse_filters
from lamina.cli._output import FORMAT_OPTION, INSPECT_FORMAT_OPTION

if TYPE_CHECKING:
    from lamina.engine import Engine
    from lamina.runtime._volumes import Volume


def _engine() -> Engine:
    from lamina.cli._common import open_engine

    return open_engine(containers=False)


def _labels(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        k, _, v = item.partition("=")
        if not k:
            raise FlagError(f"invalid label {item!r}: no name before '='", "volume create")
        out[k] = v
    return out


@click.group("volume", cls=DockerGroup)
def volume() -> None:
    """Manage volumes (create, ls, rm, inspect, prune)."""


@volume.command("create")
@click.argument("name", required=False)
@click.option("--name", "name_opt", default=None, help="Volume name (or as the argument).")
@click.option("-l", "--label", "labels", multiple=True, metavar="KEY[=VALUE]", help="Set metadata.")
@click.option("-d", "--driver", default="local", show_default=True, help="Only local exists.")
@click.option("-o", "--opt", "opts", multiple=True, help="Driver options (none are supported).")
def create(
    name: str | None,
    name_opt: str | None,
    labels: tuple[str, ...],
    driver: str,
    opts: tuple[str, ...],
) -> None:
    """Create a volume (a random name without one); prints its name."""
    if name and name_opt and name != name_opt:
        raise FlagError(f"conflicting names: {name!r} and --name {name_opt!r}", "volume create")
    if driver != "local":
        raise FlagError(f"unknown volume driver {driver!r}: only local exists", "volume create")
    if opts:
        raise FlagError("the local driver takes no options here (-o)", "volume create")
    click.echo(_engine().create_volume(name or name_opt, _labels(labels)).name)


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display volume names.")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="name=, label=, dangling=, driver=",
)
@FORMAT_OPTION
def ls(quiet: bool, filters: tuple[str, ...], fmt: str) -> None:
    """List volumes."""
    from lamina.cli._output import print_listing
    from lamina.engine import InvalidFilter

    try:
        vols = _engine().list_volumes(filters=parse_filters(filters, "volume ls"))
    except InvalidFilter as e:
        raise FlagError(str(e), "volume ls") from None
    if quiet:
        for v in vols:
            click.echo(v.name)
        return
    print_listing(fmt, [_row(v) for v in vols], ("Driver", "Name"), _HEADERS)


# Docker's volume ls fields and their column titles.
_HEADERS = {
    "Name": "VOLUME NAME", "Driver": "DRIVER", "Scope": "SCOPE", "Mountpoint": "MOUNTPOINT",
    "Labels": "LABELS", "Links": "LINKS", "Size": "SIZE", "Group": "GROUP",
    "Availability": "AVAILABILITY", "Status": "STATUS",
}  # fmt: skip


def _row(vol: Volume) -> Any:
    """A volume as ``docker volume ls`` shows it to ``--format`` (no usage data and
    no cluster volumes here: those fields are N/A, as Docker's are without them)."""
    from lamina.cli._output import LabeledRow

    doc = vol.to_dict()
    na = "N/A"
    fields = {
        "Name": vol.name,
        "Driver": vol.driver,
        "Scope": doc["Scope"],
        "Mountpoint": doc["Mountpoint"],
        "Links": na,
        "Size": na,
        "Group": na,
        "Availability": na,
        "Status": na,
    }
    return LabeledRow("VolumeRow", doc["Labels"] or {}, fields)


volume.add_command(ls, "list")


@volume.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Do not fail on a missing volume.")
def rm(names: tuple[str, ...], force: bool) -> None:
    """Remove one or more volumes (refused while a container uses them)."""
    from lamina.errors import LaminaError

    engine = _engine()
    failed = False
    for name in names:
        try:
            engine.remove_volume(name, force=force)
        except LaminaError as e:
            print(f"lamina: error: {e}", file=sys.stderr)
            failed = True
            continue
        click.echo(name)
    if failed:
        sys.exit(1)


volume.add_command(rm, "remove")


@volume.command("inspect")
@click.argument("names", nargs=-1, required=True)
@INSPECT_FORMAT_OPTION
def inspect(names: tuple[str, ...], fmt: str | None) -> None:
    """Show details of one or more volumes, as JSON."""
    from lamina.cli._output import print_inspect
    from lamina.errors import LaminaError

    engine = _engine()
    out = []
    missing = []
    for name in names:
        try:
            out.append(engine.volume(name).to_dict())
        except LaminaError:
            missing.append(name)
    print_inspect(fmt, out, [f"no such volume: {name}" for name in missing])


@volume.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Also remove unused named volumes.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--filter", "filters", multiple=True, metavar="label=K[=V]")
def prune(all_: bool, force: bool, filters: tuple[str, ...]) -> None:
    """Remove unused volumes: anonymous ones, or all with -a."""
    from lamina.cli._output import human_size

    if not force and sys.stdin.isatty():
        what = "all unused volumes" if all_ else "all anonymous volumes not used by a container"
        if not click.confirm(f"This will remove {what}. Continue?"):
            return
    from lamina.engine import InvalidFilter

    try:
        result = _engine().prune_volumes(all=all_, filters=parse_filters(filters, "volume prune"))
    except InvalidFilter as e:
        raise FlagError(str(e), "volume prune") from None
    if result.removed:
        click.echo("Deleted Volumes:")
        for name in result.removed:
            click.echo(name)
        click.echo("")
    click.echo(f"Total reclaimed space: {human_size(result.reclaimed)}")
