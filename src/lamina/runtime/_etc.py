"""What a container finds in ``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf``,
as Docker writes them, for either isolation (a process container's bind-mounted
files; a VM's guest agent writes the same text).

- ``--network host``: the host's files (``--add-host`` entries added, ``--dns*``
  laid over its resolv.conf).
- ``--dns`` given: those servers, whatever the network (as Podman with netavark 1.4,
  whose aardvark-dns has no per-container upstream servers).
- a bridge network that resolves names (a user network, aardvark-dns on its gateway):
  resolv.conf names the gateways of those networks; aardvark answers for the
  containers of each network and forwards other names to the host's resolvers.
- the default network, ``none``: the host's resolvers minus loopback ones
  (unreachable from inside), else Docker's public fallback.
- hosts: localhost lines, ``--add-host`` entries (``host-gateway``: the gateway of the
  container's first network), then the container's own addresses with its hostname.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lamina.runtime._types import ContainerConfig, Endpoint

DEFAULT_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)
HOST_GATEWAY = "host-gateway"
# Docker's resolvers when the host has none a container can reach.
_FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")
_MAX_NAMESERVERS = 3  # glibc reads no more


def read_host_file(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def hostname(config: ContainerConfig, cid: str, process_hostname: str = "") -> str:
    if config.network == "host":
        return os.uname().nodename
    return process_hostname or config.hostname or cid[:12]


def host_gateway(endpoints: Sequence[Endpoint]) -> str:
    """The address ``host-gateway`` stands for: the host as the container reaches it
    (the gateway of its first network; loopback without one)."""
    for e in endpoints:
        if e.gateway:
            return e.gateway
    return "127.0.0.1"


def hosts(
    config: ContainerConfig,
    endpoints: Sequence[Endpoint],
    name: str,
    *,
    host_hosts: str | None = None,
) -> str:
    """``/etc/hosts`` of a container whose hostname is ``name``."""
    if config.network == "host":
        base = host_hosts if host_hosts is not None else read_host_file("/etc/hosts")
        out = [base or DEFAULT_HOSTS]
    else:
        out = [DEFAULT_HOSTS]
    gateway = host_gateway(endpoints)
    for entry in config.extra_hosts:
        host, _, ip = entry.partition(":")
        out.append(f"{gateway if ip == HOST_GATEWAY else ip}\t{host}\n")
    if config.network != "host":
        for e in endpoints:
            for address in (e.ipv4, e.ipv6):
                if address:
                    out.append(f"{address}\t{name}\n")
    text = "".join(out)
    return text if text.endswith("\n") else text + "\n"


def resolv_conf(
    config: ContainerConfig, endpoints: Sequence[Endpoint], *, host_resolv: str | None = None
) -> str:
    """``/etc/resolv.conf`` of the container (see the module docstring)."""
    host = host_resolv if host_resolv is not None else read_host_file("/etc/resolv.conf")
    servers, search, options = _parse(host)
    if config.network == "host" and not (config.dns or config.dns_search or config.dns_options):
        return host
    resolvers = [e.gateway for e in endpoints if e.dns and e.gateway]
    resolvers += [e.gateway6 for e in endpoints if e.dns and e.gateway6]
    if config.dns:  # as Podman with netavark 1.4 (aardvark has no per-container upstreams)
        servers = list(config.dns)
    elif resolvers and config.network != "host":
        servers = resolvers
    elif config.network != "host":
        servers = [s for s in servers if not _loopback(s)] or list(_FALLBACK_DNS)
    search = list(config.dns_search) or search
    options = list(config.dns_options) or options
    lines = []
    if search and search != ["."]:  # Docker: --dns-search . means none
        lines.append("search " + " ".join(search))
    lines += [f"nameserver {s}" for s in _unique(servers)[:_MAX_NAMESERVERS]]
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def _parse(text: str) -> tuple[list[str], list[str], list[str]]:
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2:
            continue
        if parts[0] == "nameserver":
            servers.append(parts[1])
        elif parts[0] in ("search", "domain"):
            search = parts[1:]
        elif parts[0] == "options":
            options += parts[1:]
    return servers, search, options


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
