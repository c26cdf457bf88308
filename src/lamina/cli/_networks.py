"""Network commands: ``network create|ls|inspect|rm|prune|connect|disconnect``
(Docker's, bridge driver), through the engine's networks (``Engine.networks``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from lamina.cli._click import DockerGroup, FlagError
from lamina.cli._common import parse_filters
from lamina.cli._output import FORMAT_OPTION, INSPECT_FORMAT_OPTION

if TYPE_CHECKING:
    from lamina.engine import Engine
    from lamina.network._model import Network


def _engine() -> Engine:
    from lamina.cli._common import open_engine

    return open_engine(containers=False)


def _pairs(values: tuple[str, ...], flag: str, command: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        k, _, v = item.partition("=")
        if not k:
            raise FlagError(f"invalid {flag} {item!r}: no name before '='", command)
        out[k] = v
    return out


@click.group("network", cls=DockerGroup)
def network() -> None:
    """Manage networks (create, ls, inspect, rm, prune, connect, disconnect)."""


@network.command("create")
@click.argument("name")
@click.option("-d", "--driver", default="bridge", show_default=True, help="Only bridge exists.")
@click.option("--subnet", "subnets", multiple=True, metavar="CIDR", help="Subnet (IPv4 or IPv6).")
@click.option("--gateway", "gateways", multiple=True, metavar="IP", help="Gateway of a subnet.")
@click.option(
    "--ip-range", "ip_ranges", multiple=True, metavar="CIDR", help="Lease addresses from this part."
)
@click.option("--internal", is_flag=True, help="No traffic to or from outside the network.")
@click.option("--ipv6", is_flag=True, help="Enable IPv6 (with an IPv6 --subnet).")
@click.option("--label", "labels", multiple=True, metavar="KEY[=VALUE]", help="Set metadata.")
@click.option("-o", "--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="mtu=N, com.docker.network.bridge.name=NAME.")  # fmt: skip
def create(
    name: str,
    driver: str,
    subnets: tuple[str, ...],
    gateways: tuple[str, ...],
    ip_ranges: tuple[str, ...],
    internal: bool,
    ipv6: bool,
    labels: tuple[str, ...],
    opts: tuple[str, ...],
) -> None:
    """Create a network; prints its ID."""
    net = _engine().networks.create(
        name, driver=driver, subnets=subnets, gateways=gateways, ip_ranges=ip_ranges,
        internal=internal, ipv6=ipv6, labels=_pairs(labels, "--label", "network create"),
        options=_pairs(opts, "-o", "network create"),
    )  # fmt: skip
    click.echo(net.id)


_HEADERS = {"ID": "NETWORK ID", "Name": "NAME", "Driver": "DRIVER", "Scope": "SCOPE",
            "IPv6": "IPV6", "Internal": "INTERNAL", "CreatedAt": "CREATED AT",
            "Labels": "LABELS"}  # fmt: skip


def _row(net: Network) -> Any:
    from datetime import datetime

    from lamina.cli._output import LabeledRow

    created = datetime.fromtimestamp(net.created).astimezone().strftime("%Y-%m-%d %H:%M:%S %z %Z")
    fields = {"ID": net.id[:12], "Name": net.name, "Driver": net.driver, "Scope": "local",
              "IPv6": str(net.ipv6).lower(), "Internal": str(net.internal).lower(),
              "CreatedAt": created}  # fmt: skip
    return LabeledRow("NetworkRow", net.labels, fields)


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display network IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate the output.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="name=, id=, label=, driver=, type=custom|builtin")  # fmt: skip
@FORMAT_OPTION
def ls(quiet: bool, no_trunc: bool, filters: tuple[str, ...], fmt: str) -> None:
    """List networks."""
    from lamina.cli._output import print_listing
    from lamina.engine import InvalidFilter

    try:
        nets = _engine().networks.list(parse_filters(filters, "network ls"))
    except InvalidFilter as e:
        raise FlagError(str(e), "network ls") from None
    if quiet:
        for n in nets:
            click.echo(n.id if no_trunc else n.id[:12])
        return
    rows = [_row(n) for n in nets]
    if no_trunc:
        for r, n in zip(rows, nets, strict=True):
            r["ID"] = n.id
    print_listing(fmt, rows, ("ID", "Name", "Driver", "Scope"), _HEADERS)


network.add_command(ls, "list")


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@INSPECT_FORMAT_OPTION
def inspect(names: tuple[str, ...], fmt: str | None) -> None:
    """Show details of one or more networks, as JSON."""
    from lamina.cli._output import print_inspect
    from lamina.errors import NotFound

    engine = _engine()
    out, missing = [], []
    for name in names:
        try:
            out.append(engine.networks.inspect(name))
        except NotFound as e:
            missing.append(str(e))
    print_inspect(fmt, out, missing)


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Do not fail on a missing network.")
def rm(names: tuple[str, ...], force: bool) -> None:
    """Remove one or more networks (refused while containers use them)."""
    from lamina.errors import LaminaError, NotFound

    engine = _engine()
    failed = False
    for name in names:
        try:
            engine.networks.remove(name)
        except NotFound as e:
            if not force:
                print(f"lamina: error: {e}", file=sys.stderr)
                failed = True
            continue
        except LaminaError as e:
            print(f"lamina: error: {e}", file=sys.stderr)
            failed = True
            continue
        click.echo(name)
    if failed:
        sys.exit(1)


network.add_command(rm, "remove")


@network.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
def prune(force: bool) -> None:
    """Remove every network no container uses."""
    question = "This will remove all custom networks not used by any container. Continue?"
    if not force and sys.stdin.isatty() and not click.confirm(question):
        return
    removed = _engine().networks.prune()
    if removed:
        click.echo("Deleted Networks:")
        for name in removed:
            click.echo(name)


@network.command("connect")
@click.argument("net")
@click.argument("container")
@click.option(
    "--alias", "aliases", multiple=True, help="A DNS name of the container on the network."
)
@click.option("--ip", default="", help="IPv4 address.")
@click.option("--ip6", default="", help="IPv6 address.")
def connect(net: str, container: str, aliases: tuple[str, ...], ip: str, ip6: str) -> None:
    """Connect a container (created or running) to a network."""
    from lamina.cli._common import open_engine

    open_engine().networks.connect(net, container, aliases=aliases, ip=ip, ip6=ip6)


@network.command("disconnect")
@click.argument("net")
@click.argument("container")
@click.option("-f", "--force", is_flag=True, help="Disconnect even if the teardown fails.")
def disconnect(net: str, container: str, force: bool) -> None:
    """Disconnect a container from a network."""
    from lamina.cli._common import open_engine

    open_engine().networks.disconnect(net, container, force=force)
