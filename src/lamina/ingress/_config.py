"""haproxy.cfg from listeners and backends (pure).

One frontend per port; routes are ``use_backend`` rules ordered exact host, then
wildcard (longest domain first), then any host, each by longest path prefix first;
what no route takes gets a 404 from a backend that has no servers. Servers are
written out too (``disabled`` when not ready) so that a reload starts with the live
set; between reloads they change through the runtime API (``_runtime``), which is why
their options (``SERVER_OPTIONS``) must be the same in both places: servers added at
run time inherit no ``default-server``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lamina.ingress._model import Backend, Listener, Route, Server, backend_mode

NOT_FOUND_BACKEND = "lamina_not_found"
# A backend of its own keeps a redirecting route in its place among the others
# (frontend http-request rules would all run before any use_backend).
REDIRECT_BACKEND = "lamina_redirect_https"
ACME_PREFIX = "/.well-known/acme-challenge/"


@dataclass(frozen=True)
class Paths:
    """Files of one ingress under ``<root>/ingress/``."""

    dir: Path

    @property
    def cfg(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def pid(self) -> Path:
        return self.dir / "haproxy.pid"

    @property
    def master_sock(self) -> Path:
        return self.dir / "master.sock"

    @property
    def admin_sock(self) -> Path:
        return self.dir / "admin.sock"

    @property
    def log(self) -> Path:
        return self.dir / "haproxy.log"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def applied(self) -> Path:
        return self.dir / "applied.json"

    @property
    def acme_map(self) -> Path:
        return self.dir / "acme.map"

    @property
    def certs(self) -> Path:
        return self.dir / "certs"

    @property
    def crt_list(self) -> Path:
        return self.dir / "certs.list"

    @property
    def default_cert(self) -> Path:
        return self.dir / "default.pem"


def backend_name(key: str) -> str:
    return f"be_{key}"


# Options of every server, in the config and in ``add server``. Idle connections are
# purged within half a second so that a removed server can be deleted soon
# (``del server`` waits until it has none).
SERVER_OPTIONS = "check inter 1s fall 2 rise 2 pool-purge-delay 500ms"


def worker_threads() -> int:
    """HAProxy's threads: the host's cores but one, left to the replicas it forwards
    to, which run on the same host. HAProxy's default (all cores) loses there: on 2
    cores one thread did the same work with ~15% less CPU per request and 20-45% more
    requests/s than two (``bench/ingress.py --variants``, docs/BENCHMARKS.md)."""
    return max(1, min(64, len(os.sched_getaffinity(0)) - 1))  # 64: HAProxy's MAX_THREADS


def server_line(server: Server) -> str:
    disabled = "" if server.ready else " disabled"
    return f"    server {server.name} {server_address(server)} {SERVER_OPTIONS}{disabled}"


def server_address(server: Server) -> str:
    """``ADDRESS:PORT`` as HAProxy reads it (an IPv6 address in brackets)."""
    address = f"[{server.address}]" if ":" in server.address else server.address
    return f"{address}:{server.port}"


def _bind_address(address: str, port: int) -> str:
    return f"ipv6@{address}:{port}" if ":" in address else f"{address}:{port}"


def render(
    paths: Paths,
    address: str,
    listeners: list[Listener],
    backends: list[Backend],
    *,
    with_servers: bool = True,
) -> str:
    """The whole configuration; ``with_servers=False`` leaves the servers out, which is
    what tells a structural change (a reload) from a change of servers (runtime API)."""
    modes = {r.backend: backend_mode(r.protocol) for li in listeners for r in li.routes}
    out = [
        "# Written by lamina (lamina.ingress); changes here are overwritten.",
        "global",
        f"    stats socket {paths.admin_sock} mode 600 level admin expose-fd listeners",
        "    stats timeout 2m",
        "    hard-stop-after 30m",
        "    maxconn 8000",
        f"    nbthread {worker_threads()}",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout tunnel 1h",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        "    timeout queue 30s",
        "    timeout client-fin 5s",
        "    retries 3",
        "    option redispatch 1",
        "",
    ]
    for listener in listeners:
        if not listener.udp:
            out += _frontend(paths, address, listener)
    out += [
        f"backend {NOT_FOUND_BACKEND}",
        "    mode http",
        '    http-request return status 404 content-type text/plain string "no route\\n"',
        "",
        f"backend {REDIRECT_BACKEND}",
        "    mode http",
        "    http-request redirect scheme https code 301",
        "",
    ]
    for backend in sorted(backends, key=lambda b: b.key):
        if modes.get(backend.key) != "udp":
            out += _backend(backend, modes.get(backend.key, "http"), with_servers)
    return "\n".join(out) + "\n"


def _frontend(paths: Paths, address: str, listener: Listener) -> list[str]:
    bind = f"    bind {_bind_address(address, listener.port)}"
    if listener.tcp:
        route = listener.routes[0]
        return [
            f"frontend fe_{listener.port}",
            "    mode tcp",
            bind,
            f"    default_backend {backend_name(route.backend)}",
            "",
        ]
    if listener.tls:
        bind += f" ssl crt {paths.default_cert} crt-list {paths.crt_list} alpn http/1.1"
    scheme = "https" if listener.tls else "http"
    out = [
        f"frontend fe_{listener.port}",
        "    mode http",
        bind,
        "    option forwardfor",
        f"    http-request set-header X-Forwarded-Proto {scheme}",
    ]
    if not listener.tls:
        # ACME HTTP-01: answered from a map the runtime API fills, nothing proxied.
        found = f"{{ path,map({paths.acme_map}) -m found }}"
        out.append(
            "    http-request return status 200 content-type text/plain "
            f"lf-string %[path,map({paths.acme_map})] if {{ path_beg {ACME_PREFIX} }} {found}"
        )
    rules: list[str] = []
    for i, route in enumerate(_ordered(listener.routes)):
        conditions = []
        if route.host is not None:
            host = route.host.lower()
            if host.startswith("*."):
                out.append(f"    acl host_{i} hdr(host),field(1,:),lower -m end {host[1:]}")
            else:
                out.append(f"    acl host_{i} hdr(host),field(1,:),lower -m str {host}")
            conditions.append(f"host_{i}")
        if route.path is not None and route.path != "/":
            prefix = route.path.rstrip("/")
            out.append(f"    acl path_{i} path -m str {prefix}")
            out.append(f"    acl path_{i} path -m beg {prefix}/")
            conditions.append(f"path_{i}")
        cond = f" if {' '.join(conditions)}" if conditions else ""
        target = REDIRECT_BACKEND if route.redirect_https else backend_name(route.backend)
        rules.append(f"    use_backend {target}{cond}")
    out += rules
    out += [f"    default_backend {NOT_FOUND_BACKEND}", ""]
    return out


def _ordered(routes: tuple[Route, ...]) -> list[Route]:
    def rank(route: Route) -> tuple[int, int, int]:
        host = (route.host or "").lower()
        host_rank = 2 if not host else (1 if host.startswith("*.") else 0)
        path = (route.path or "/").rstrip("/")
        return (host_rank, -len(host), -len(path))

    return sorted(routes, key=rank)


def _backend(backend: Backend, mode: str, with_servers: bool) -> list[str]:
    out = [
        f"backend {backend_name(backend.key)}",
        f"    mode {mode}",
        f"    balance {backend.balance}",
    ]
    if backend.health_path:
        out.append(f"    option httpchk GET {backend.health_path}")
    if mode == "http":
        # A replica that dies with a request in flight costs a retry elsewhere, not
        # the client's request; only requests safe to repeat are repeated.
        out.append("    retry-on conn-failure empty-response response-timeout")
        out.append("    http-request disable-l7-retry if !METH_GET !METH_HEAD")
    if with_servers:
        out += [server_line(s) for s in backend.servers]
    out.append("")
    return out
