"""``lamina system prune`` and ``lamina system df``: the CLI over the engine's housekeeping,
printed as Docker prints them."""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, Any

import click

from lamina.cli._click import FlagError, group
from lamina.cli._common import human_duration, is_remote, open_engine
from lamina.cli._lifecycle import prune_selector
from lamina.cli._output import FORMAT_OPTION

if TYPE_CHECKING:
    from lamina.engine import DiskUsage


@group("system")
def system() -> None:
    """Manage lamina: disk usage and pruning."""


@system.command("prune")
@click.option(
    "-a", "--all", "all_", is_flag=True, help="Remove all unused images, not just dangling ones."
)
@click.option("--volumes", is_flag=True, help="Prune anonymous volumes.")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation.")
@click.option("--filter", "filters", multiple=True, metavar="label=K[=V]|until=TIME")
def prune(all_: bool, volumes: bool, force: bool, filters: tuple[str, ...]) -> None:
    """Remove unused data: stopped containers, dangling (or, with -a, unused) images,
    the build cache, anonymous volumes (with --volumes), and whatever interrupted
    commands left behind."""
    from lamina.cli._output import human_size
    from lamina.engine import prune_system

    if volumes and any(f.startswith("until=") for f in filters):
        raise FlagError('the "until" filter is not supported with "--volumes"', "system prune")
    select = prune_selector(filters, "system prune")
    if not force and sys.stdin.isatty() and not click.confirm(_warning(all_, volumes, filters)):
        return
    engine: Any = open_engine()
    prune = engine.prune_system if is_remote() else functools.partial(prune_system, engine)
    report = prune(all_images=all_, volumes=volumes, select=select)
    for message in report.containers.errors:
        print(f"lamina: error: {message}", file=sys.stderr)
    sections = [
        ("Deleted Containers:", report.containers.deleted),
        ("Deleted Volumes:", report.volumes),
        ("Deleted Images:", [f"untagged: {n}" for n in report.untagged]
                            + [f"deleted: {d}" for d in report.deleted]),
        ("Deleted build cache objects:", report.build_cache),
        ("Removed leftovers of interrupted commands:", report.leftovers),
    ]  # fmt: skip
    for title, items in sections:
        if items:
            click.echo(title)
            for item in items:
                click.echo(item)
            click.echo("")
    click.echo(f"Total reclaimed space: {human_size(report.reclaimed)}")


def _warning(all_: bool, volumes: bool, filters: tuple[str, ...]) -> str:
    """Docker's confirmation text for these options."""
    what = ["all stopped containers"]
    if volumes:
        what.append("all anonymous volumes not used by at least one container")
    what.append(
        "all images without at least one container associated to them"
        if all_
        else "all dangling images"
    )
    what.append("all build cache" if all_ else "unused build cache")
    text = "WARNING! This will remove:\n" + "".join(f"  - {w}\n" for w in what)
    if filters:
        text += "\n  Items to be pruned will be filtered with:\n"
        text += "".join(f"  - {f}\n" for f in sorted(filters))
    return text + "\nAre you sure you want to continue?"


@system.command("df")
@click.option("-v", "--verbose", is_flag=True, help="Show detailed information on space usage.")
@FORMAT_OPTION
def df(verbose: bool, fmt: str) -> None:
    """Show disk usage: images, containers, local volumes and build cache."""
    from lamina.engine import disk_usage

    engine: Any = open_engine()
    usage = engine.system_df() if is_remote() else disk_usage(engine)
    if verbose:
        if fmt not in ("table", "json"):
            raise FlagError("--verbose takes no template (use table or json)", "system df")
        _print_verbose(usage, as_json=fmt == "json")
        return
    from lamina.cli._output import print_listing

    rows = [_summary_row(r) for r in usage.rows]
    print_listing(fmt, rows, [f for _, f in _SUMMARY], _HEADERS)


# (header, field) of the tables Docker prints.
_SUMMARY = [("TYPE", "Type"), ("TOTAL", "TotalCount"), ("ACTIVE", "Active"), ("SIZE", "Size"),
            ("RECLAIMABLE", "Reclaimable")]  # fmt: skip
_IMAGES = [("REPOSITORY", "Repository"), ("TAG", "Tag"), ("IMAGE ID", "ID"),
           ("CREATED", "CreatedSince"), ("SIZE", "Size"), ("SHARED SIZE", "SharedSize"),
           ("UNIQUE SIZE", "UniqueSize"), ("CONTAINERS", "Containers")]  # fmt: skip
_CONTAINERS = [("CONTAINER ID", "ID"), ("IMAGE", "Image"), ("COMMAND", "Command"),
               ("LOCAL VOLUMES", "LocalVolumes"), ("SIZE", "Size"), ("CREATED", "RunningFor"),
               ("STATUS", "Status"), ("NAMES", "Names")]  # fmt: skip
_VOLUMES = [("VOLUME NAME", "Name"), ("LINKS", "Links"), ("SIZE", "Size")]
_CACHE = [("CACHE ID", "ID"), ("CACHE TYPE", "CacheType"), ("SIZE", "Size")]
# Column titles of ``--format 'table ...'``, as Docker's ``system df`` gives them.
_HEADERS = {f: h for h, f in _SUMMARY}


def _table(columns: list[tuple[str, str]], rows: list[dict[str, str]]) -> None:
    from lamina.cli._output import print_table

    print_table([h for h, _ in columns], [[r[f] for _, f in columns] for r in rows])


def _summary_row(row: Any) -> Any:
    from lamina.cli._output import Row, human_size

    reclaimable = human_size(row.reclaimable)
    if row.size > 0 and row.type != "Build Cache":
        reclaimable += f" ({row.reclaimable * 100 // row.size}%)"
    return Row(
        "diskUsageContext",
        {
            "Type": row.type,
            "TotalCount": str(row.total),
            "Active": str(row.active),
            "Size": human_size(row.size),
            "Reclaimable": reclaimable,
        },
    )


def _print_verbose(usage: DiskUsage, *, as_json: bool) -> None:
    """``system df -v``: each image, container, volume and cache entry."""
    import time

    from lamina.cli._output import human_age, human_size, parse_timestamp
    from lamina.cli._ps import ps_row
    from lamina.image import parse_reference

    images = []
    for u in usage.images:
        tag = next((n for n in u.record.names if parse_reference(n).tag), None)
        ref = parse_reference(tag) if tag else None
        images.append({
            "Repository": ref.familiar().rsplit(":", 1)[0] if ref else "<none>",
            "Tag": (ref.tag or "<none>") if ref else "<none>",
            "ID": u.record.id.removeprefix("sha256:")[:12],
            "CreatedSince": human_age(parse_timestamp(u.record.created)),
            "Size": human_size(u.size),
            "SharedSize": human_size(u.shared),
            "UniqueSize": human_size(u.size - u.shared),
            "Containers": str(u.containers),
        })  # fmt: skip
    now = time.time()
    containers = []
    for c in usage.containers:
        row = ps_row(c.container, now)
        containers.append({
            "ID": c.container.id[:12], "Image": row["Image"],
            "Command": row["Command"], "LocalVolumes": str(c.volumes),
            "Size": human_size(c.size), "RunningFor": human_duration(now - c.container.created)
            + " ago", "Status": row["Status"], "Names": row["Names"],
        })  # fmt: skip
    volumes = [
        {"Name": v.name, "Links": str(v.links), "Size": human_size(v.size)} for v in usage.volumes
    ]
    cache = [
        {"ID": c.id.removeprefix("sha256:")[:12], "CacheType": c.kind, "Size": human_size(c.size)}
        for c in usage.build_cache
    ]
    if as_json:
        click.echo(json.dumps({"Images": images, "Containers": containers,
                               "Volumes": volumes, "BuildCache": cache}))  # fmt: skip
        return
    sections = [
        ("Images space usage:", _IMAGES, images),
        ("Containers space usage:", _CONTAINERS, containers),
        ("Local Volumes space usage:", _VOLUMES, volumes),
        (f"Build cache usage: {human_size(usage.rows[3].size)}", _CACHE, cache),
    ]
    for i, (title, columns, rows) in enumerate(sections):
        click.echo(("\n" if i else "") + title + "\n")
        _table(columns, rows)
