"""What the ingress serves: routes (a port, a protocol, a host and path) to backends (a
set of servers and how to balance them). Plain dataclasses, checked once by ``validate``
so that nothing a caller passes can break the HAProxy configuration it becomes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from lamina.errors import LaminaError

Protocol = Literal["http", "https", "tcp", "udp", "websocket"]
Balance = Literal["roundrobin", "leastconn"]

PROTOCOLS: tuple[str, ...] = ("http", "https", "tcp", "udp", "websocket")
BALANCES: tuple[str, ...] = ("roundrobin", "leastconn")

# HAProxy identifiers (backend and server names) and what we put in ACLs and paths:
# nothing that could end a config token or open a new one.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")


class InvalidIngress(LaminaError, ValueError):
    """Routes or backends the ingress cannot serve (said in one line)."""


class IngressError(LaminaError):
    """HAProxy could not be started, reached or reconfigured."""


@dataclass(frozen=True)
class Server:
    """One replica: where it listens and whether lamina considers it ready."""

    name: str
    address: str
    port: int
    ready: bool = True


@dataclass(frozen=True)
class Backend:
    """Servers balanced together; ``health_path`` makes HAProxy's own checks HTTP GETs
    of that path (without it they are TCP connects)."""

    key: str
    servers: tuple[Server, ...] | list[Server] = ()
    balance: Balance = "roundrobin"
    health_path: str | None = None


@dataclass(frozen=True)
class Route:
    """Traffic on ``port`` for ``host`` (exact or ``*.domain``; None: any) whose path
    starts with ``path`` (None: any) goes to ``backend``. ``redirect_https`` on an http
    route answers its requests with a redirect to https instead."""

    port: int
    protocol: Protocol
    backend: str
    host: str | None = None
    path: str | None = None
    redirect_https: bool = False


@dataclass(frozen=True)
class Listener:
    """One port: its mode and the routes sharing it."""

    port: int
    tls: bool
    tcp: bool
    routes: tuple[Route, ...] = field(default_factory=tuple)
    udp: bool = False  # served by the kernel's NAT (``_udp``), not by HAProxy


def check_host(host: str) -> str:
    if len(host) > 253 or not _HOST.match(host):
        raise InvalidIngress(f"invalid host name: {host!r}")
    return host.lower()


def _check_port(port: object, what: str) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidIngress(f"{what}: invalid port {port!r}")


def validate(routes: Iterable[Route], backends: Iterable[Backend]) -> list[Listener]:
    """The listeners ``routes`` make, once routes and backends are known good."""
    by_key: dict[str, Backend] = {}
    for backend in backends:
        if not _NAME.match(backend.key):
            raise InvalidIngress(f"invalid backend key: {backend.key!r}")
        if backend.key in by_key:
            raise InvalidIngress(f"backend {backend.key}: defined twice")
        if backend.balance not in BALANCES:
            raise InvalidIngress(f"backend {backend.key}: invalid balance {backend.balance!r}")
        if backend.health_path is not None and not _PATH.match(backend.health_path):
            raise InvalidIngress(
                f"backend {backend.key}: invalid health path {backend.health_path!r}"
            )
        names: set[str] = set()
        for server in backend.servers:
            if not _NAME.match(server.name) or server.name in names:
                raise InvalidIngress(f"backend {backend.key}: invalid server name {server.name!r}")
            names.add(server.name)
            if not _ADDRESS.match(server.address):
                raise InvalidIngress(
                    f"backend {backend.key}: invalid server address {server.address!r}"
                )
            _check_port(server.port, f"backend {backend.key}: server {server.name}")
        by_key[backend.key] = backend

    # A UDP port is another port than the TCP port of the same number.
    by_port: dict[tuple[int, bool], list[Route]] = {}
    modes: dict[str, str] = {}
    for route in routes:
        _check_port(route.port, "route")
        if route.protocol not in PROTOCOLS:
            raise InvalidIngress(f"port {route.port}: invalid protocol {route.protocol!r}")
        if route.backend not in by_key:
            raise InvalidIngress(f"port {route.port}: unknown backend {route.backend!r}")
        if route.host is not None:
            check_host(route.host)
        if route.path is not None and not _PATH.match(route.path):
            raise InvalidIngress(f"port {route.port}: invalid path {route.path!r}")
        mode = backend_mode(route.protocol)
        if modes.setdefault(route.backend, mode) != mode:
            used = " and ".join(sorted({mode, modes[route.backend]}))
            raise InvalidIngress(f"backend {route.backend}: used by both {used} routes")
        by_port.setdefault((route.port, route.protocol == "udp"), []).append(route)

    listeners = []
    for (port, _), port_routes in sorted(by_port.items()):
        kinds = {_kind(r.protocol) for r in port_routes}
        if len(kinds) > 1:
            raise InvalidIngress(f"port {port}: cannot mix {' and '.join(sorted(kinds))} routes")
        kind = kinds.pop()
        if kind in ("tcp", "udp") and len(port_routes) > 1:
            raise InvalidIngress(f"port {port}: only one {kind} route per port")
        if kind in ("tcp", "udp") and (port_routes[0].host or port_routes[0].path):
            raise InvalidIngress(f"port {port}: a {kind} route has no host or path")
        seen: set[tuple[str | None, str | None]] = set()
        for r in port_routes:
            match = (r.host.lower() if r.host else None, r.path)
            if match in seen:
                raise InvalidIngress(
                    f"port {port}: two routes for host {r.host or '*'} and path {r.path or '/'}"
                )
            seen.add(match)
        listeners.append(
            Listener(
                port,
                tls=kind == "tls",
                tcp=kind == "tcp",
                routes=tuple(port_routes),
                udp=kind == "udp",
            )
        )
    return listeners


def _kind(protocol: str) -> str:
    return {"https": "tls", "tcp": "tcp", "udp": "udp"}.get(protocol, "plain")


def backend_mode(protocol: str) -> str:
    """What a backend is to carry a route of ``protocol``: HAProxy's ``http`` or
    ``tcp`` mode, or ``udp`` (the kernel's NAT, no HAProxy backend at all)."""
    return protocol if protocol in ("tcp", "udp") else "http"
