"""Volume commands: ``volume create|ls|rm|inspect|prune`` (Docker's local driver).

Volumes live in ``<root>/volumes`` (``VolumeStore``); which containers use one is
the runtime's knowledge, so removal and prune ask it (``volume_users``) and refuse
volumes in use, as Docker does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from lamina.cli._click import DockerGroup, FlagError
from lamina.cli._output import FORMAT_OPTION, INSPECT_FORMAT_OPTION

if TYPE_CHECKING:
    from lamina.runtime._volumes import Volume, VolumeStore


def _root() -> Any:
    return click.get_current_context().find_root().obj.root


def _store() -> VolumeStore:
    from lamina.runtime._volumes import VolumeStore

    return VolumeStore(_root() / "volumes")


def _users() -> Any:
    """volume name -> IDs of the containers using it (created, running or stopped),
    process and micro-VM containers alike."""
    from lamina.engine import open_engine

    return open_engine(_root(), oci_runtime=None).volume_users


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
    from lamina.runtime._volumes import validate_volume_name

    if name and name_opt and name != name_opt:
        raise FlagError(f"conflicting names: {name!r} and --name {name_opt!r}", "volume create")
    if driver != "local":
        raise FlagError(f"unknown volume driver {driver!r}: only local exists", "volume create")
    if opts:
        raise FlagError("the local driver takes no options here (-o)", "volume create")
    import secrets

    # Docker names an unnamed volume at random, and it is a named volume all the
    # same (prune without -a keeps it): not the store's anonymous kind.
    name = name or name_opt or secrets.token_hex(32)
    validate_volume_name(name)
    click.echo(_store().create(name, _labels(labels)).name)


def _matches(vol: Volume, filters: Sequence[str], users: Any) -> bool:
    import fnmatch

    for f in filters:
        key, sep, value = f.partition("=")
        if not sep:
            raise FlagError(f"bad filter {f!r}: expected KEY=VALUE", "volume ls")
        if key == "name":
            if value not in vol.name and not fnmatch.fnmatch(vol.name, value):
                return False
        elif key == "label":
            k, has_value, v = value.partition("=")
            if k not in vol.labels or (has_value and vol.labels[k] != v):
                return False
        elif key == "dangling":
            want = value.lower() in ("true", "1")
            if (not users(vol.name)) != want:
                return False
        elif key == "driver":
            if vol.driver != value:
                return False
        else:
            raise FlagError(
                f"invalid filter {key!r} (supported: name, label, dangling, driver)", "volume ls"
            )
    return True


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

    store = _store()
    users = _users() if any(f.startswith("dangling=") for f in filters) else None
    vols = [v for v in store.list() if _matches(v, filters, users)]
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

    store = _store()
    users = _users()
    failed = False
    for name in names:
        try:
            store.remove(name, force=force, users=users)
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

    store = _store()
    out = []
    missing = []
    for name in names:
        try:
            out.append(store.get(name).to_dict())
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
    store = _store()
    users = _users()
    if filters:
        keep = {v.name for v in store.list() if not _matches(v, filters, users)}

        def filtered_users(name: str) -> Sequence[str]:
            return ["(filtered out)"] if name in keep else users(name)

        result = store.prune(filtered_users, all=all_)
    else:
        result = store.prune(users, all=all_)
    if result.removed:
        click.echo("Deleted Volumes:")
        for name in result.removed:
            click.echo(name)
        click.echo("")
    click.echo(f"Total reclaimed space: {human_size(result.reclaimed)}")
