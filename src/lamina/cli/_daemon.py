"""``lamina daemon``: parse the flags, then ``lamina.daemon.serve`` (imported only
here: no other command loads the daemon)."""

from __future__ import annotations

from pathlib import Path

import click

from lamina.cli._click import command

SYSTEM_ROOT = "/var/lib/lamina"  # its daemon listens on /run/lamina/lamina.sock


@command("daemon")
@click.option(
    "-H",
    "--host",
    "hosts",
    multiple=True,
    metavar="unix:///PATH|tcp://ADDR:PORT",
    help="Where to listen (repeatable). Default: unix:///run/lamina/lamina.sock for the "
    "system root, unix://ROOT/lamina.sock for a --root of your own.",
)
@click.option("--tlscert", default=None, metavar="FILE", help="TLS certificate (tcp hosts).")
@click.option("--tlskey", default=None, metavar="FILE", help="TLS key (tcp hosts).")
@click.option(
    "--tlscacert",
    default=None,
    metavar="FILE",
    help="CA whose client certificates are accepted (tcp hosts: clients must have one).",
)
@click.option(
    "--token-file",
    default=None,
    metavar="FILE",
    help="A bearer token clients of tcp hosts must send (Authorization: Bearer ...).",
)
@click.option(
    "--docker-host",
    "docker_hosts",
    multiple=True,
    metavar="unix:///PATH|tcp://ADDR:PORT",
    help="Where to serve Docker's Engine API too (repeatable; tcp as --host: TLS client "
    "certificates or a token), e.g. unix:///run/lamina/docker.sock for DOCKER_HOST.",
)
@click.option(
    "--registry-mirror",
    "registry_mirrors",
    multiple=True,
    metavar="URL",
    help="A mirror pulls of docker.io names try first (repeatable; dockerd's flag), "
    "before the registries config's registry_mirrors.",
)
@click.option(
    "--group", default=None, metavar="GROUP", help="Group owning unix sockets (mode 0660)."
)
@click.option(
    "--ingress-address",
    default="0.0.0.0",
    metavar="ADDR",
    help="Where deployments' public endpoints listen (default: all IPv4 addresses).",
    callback=lambda _ctx, _param, value: _ip_address(value),
)
@click.option(
    "--acme-directory",
    default=None,
    metavar="URL",
    help="An ACME directory: https endpoints' hosts get certificates from it (HTTP-01).",
    callback=lambda _ctx, _param, value: _directory_url(value),
)
@click.option("--acme-email", default="", metavar="ADDR", help="The ACME account's contact.")
@click.option(
    "--acme-ca-bundle",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    metavar="FILE",
    help="CAs trusted for the ACME directory's own TLS (default: the system's).",
)
def daemon(
    hosts: tuple[str, ...],
    tlscert: str | None,
    tlskey: str | None,
    tlscacert: str | None,
    token_file: str | None,
    group: str | None,
    docker_hosts: tuple[str, ...],
    registry_mirrors: tuple[str, ...],
    ingress_address: str,
    acme_directory: str | None,
    acme_email: str,
    acme_ca_bundle: str | None,
) -> None:
    """Serve the engine of this root over HTTP until SIGTERM or SIGINT."""
    from lamina.daemon import DaemonOptions, serve
    from lamina.registry._config import mirror_url

    settings = click.get_current_context().find_root().obj
    root = Path(settings.root)
    options = DaemonOptions(
        root=root,
        hosts=list(hosts),
        docker_hosts=list(docker_hosts),
        tlscert=tlscert,
        tlskey=tlskey,
        tlscacert=tlscacert,
        token_file=token_file,
        group=group,
        oci_runtime=settings.oci_runtime,
        insecure_registries=tuple(settings.insecure_registries),
        registries_config=settings.registries_config,
        registry_mirrors=tuple(mirror_url(u) for u in registry_mirrors),
        default_root=root.absolute() == Path(SYSTEM_ROOT),
        ingress_address=ingress_address,
        acme_directory=acme_directory,
        acme_email=acme_email,
        acme_ca_bundle=acme_ca_bundle,
    )
    serve(options)


def _ip_address(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise click.BadParameter(f"not an IP address: {value!r}") from None


def _directory_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("https://", "http://")):
        raise click.BadParameter(f"not an http(s) URL: {value!r}")
    return value
