"""Ingress commands: ``ingress ls|inspect`` (routes, backends, each server's health as
HAProxy sees it) and ``ingress cert add|ls|rm`` (the certificates served by SNI), on
the local root's ingress (``lamina.ingress``) or, with ``--host``, the daemon's."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lamina.cli._click import DockerGroup, FlagError
from lamina.cli._output import FORMAT_OPTION

if TYPE_CHECKING:
    from lamina.client._deploy import IngressClient
    from lamina.ingress import Ingress


def _ingress() -> Ingress | IngressClient:
    from lamina.cli._common import _settings, is_remote, open_engine

    if is_remote():
        from lamina.client._deploy import IngressClient

        return IngressClient(open_engine())  # type: ignore[arg-type]
    from lamina.ingress import Ingress

    return Ingress(_settings().root)


@click.group("ingress", cls=DockerGroup)
def ingress() -> None:
    """Public endpoints through HAProxy: routes, backends, certificates."""


_HEADERS = {
    "Port": "PORT", "Protocol": "PROTOCOL", "Host": "HOST", "Path": "PATH",
    "Backend": "BACKEND", "Servers": "SERVERS",
}  # fmt: skip


@ingress.command("ls")
@FORMAT_OPTION
def ls(fmt: str) -> None:
    """List routes with their backend's servers (up/total)."""
    from lamina.cli._output import print_listing

    state = _ingress().inspect()
    backends = {b["key"]: b for b in state["backends"]}
    rows = []
    for route in state["routes"]:
        servers = backends.get(route["backend"], {}).get("servers", [])
        up = sum(1 for s in servers if s["health"] == "up")
        rows.append(
            {
                "Port": route["port"],
                "Protocol": route["protocol"],
                "Host": route["host"] or "*",
                "Path": route["path"] or "/",
                "Backend": route["backend"],
                "Servers": f"{up}/{len(servers)}",
            }
        )
    print_listing(fmt, rows, list(_HEADERS), _HEADERS)


@ingress.command("inspect")
def inspect() -> None:
    """Show the ingress: whether HAProxy runs, routes, backends and servers (JSON)."""
    from lamina.cli._output import print_json

    print_json(_ingress().inspect())


@ingress.group("cert", cls=DockerGroup)
def cert() -> None:
    """Certificates served by SNI on https routes."""


@cert.command("add")
@click.argument("host")
@click.option(
    "--cert",
    "cert_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate (chain).",
)
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM private key.",
)
def cert_add(host: str, cert_file: Path, key_file: Path) -> None:
    """Serve CERT for HOST (exact or *.domain); replaces HOST's certificate."""
    data = []
    for path in (cert_file, key_file):
        try:
            data.append(path.read_bytes())
        except OSError as e:
            raise FlagError(f"cannot read {path}: {e.strerror}", "ingress cert add") from None
    info = _ingress().add_cert(host, data[0], data[1])
    click.echo(f"{info.host} (expires {info.not_after})")


_CERT_HEADERS = {"Host": "HOST", "Expires": "EXPIRES", "Issuer": "ISSUER", "Source": "SOURCE"}


@cert.command("ls")
@FORMAT_OPTION
def cert_ls(fmt: str) -> None:
    """List certificates with their expiry."""
    from lamina.cli._output import print_listing

    rows: list[dict[str, Any]] = [
        {
            "Host": c.host,
            "Expires": c.not_after,
            "Issuer": c.issuer,
            "Source": "acme" if c.acme else "file",
        }
        for c in _ingress().list_certs()
    ]
    print_listing(fmt, rows, list(_CERT_HEADERS), _CERT_HEADERS)


@cert.command("rm")
@click.argument("hosts", nargs=-1, required=True)
def cert_rm(hosts: tuple[str, ...]) -> None:
    """Remove the certificates of HOSTS."""
    ing = _ingress()
    for host in hosts:
        ing.remove_cert(host)
        click.echo(host)
