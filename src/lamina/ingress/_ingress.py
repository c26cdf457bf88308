"""``Ingress``: the desired routes and backends of a root made real in its HAProxy.

``apply`` renders the whole configuration; when its structure (everything but the
servers, plus the certificates) is what the running HAProxy already has, the servers
are brought in line through the runtime API alone (added, re-addressed, set ready or
in maintenance, drained and deleted) and nothing reloads; otherwise the new file is
checked by HAProxy and the master reloads hitlessly. Applied state is written to
``applied.json`` so that a later ``Ingress`` on the same root (a restarted daemon)
adopts the running HAProxy and changes only what differs.

Every change holds ``<root>/ingress/lock`` (one writer per root across processes);
the configuration is written beside the live one under a lease, so a lamina process
killed halfway leaves nothing that the next one does not remove.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lamina import _hooks, _leases
from lamina._fsutil import atomic_write
from lamina.ingress import _process, _runtime, _udp
from lamina.ingress._certs import CertInfo, CertStore
from lamina.ingress._config import (
    ACME_PREFIX,
    SERVER_OPTIONS,
    Paths,
    backend_name,
    render,
    server_address,
)
from lamina.ingress._model import (
    Backend,
    IngressError,
    Listener,
    Route,
    Server,
    check_host,
    validate,
)

DRAIN_TIMEOUT = 30.0
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


class Ingress:
    """The ingress of one lamina root (``<root>/ingress/``)."""

    def __init__(
        self, root: Path, address: str = "0.0.0.0", drain_timeout: float = DRAIN_TIMEOUT
    ) -> None:
        self.root = Path(root)
        self.address = address
        self.drain_timeout = drain_timeout
        self.paths = Paths(self.root / "ingress")
        self.certs = CertStore(self.paths.certs)
        self._thread_lock = threading.Lock()

    # -- public operations ------------------------------------------------------------

    def apply(self, routes: Sequence[Route], backends: Sequence[Backend]) -> str:
        """Make HAProxy serve ``routes`` to ``backends``. Returns what it took:
        ``started``, ``reloaded``, ``runtime`` (servers changed live) or ``unchanged``."""
        listeners = validate(routes, backends)
        backends = [dataclasses.replace(b, servers=tuple(b.servers)) for b in backends]
        with self._locked():
            return self._apply(list(routes), listeners, backends)

    def close(self) -> None:
        """Stop HAProxy (its connections end) and forget what was applied."""
        with self._locked():
            _process.stop(self.paths)
            _udp.remove(self.root)
            with contextlib.suppress(FileNotFoundError):
                self.paths.applied.unlink()

    def running(self) -> int | None:
        """The master's pid when this root's HAProxy runs."""
        return _process.master_pid(self.paths)

    def inspect(self) -> dict[str, Any]:
        """Routes, backends and each server's live state (for ``lamina ingress``)."""
        applied = self._read_applied()
        pid = self.running()
        backends = []
        udp = {r["backend"] for r in applied.get("routes", []) if r["protocol"] == "udp"}
        for b in applied.get("backends", []):
            live: dict[str, _runtime.LiveServer] = {}
            if b["key"] in udp:  # the kernel's NAT: lamina's readiness is all there is
                servers = [{**s, "health": "nat" if s["ready"] else "maint"} for s in b["servers"]]
                backends.append({**b, "servers": servers})
                continue
            if pid is not None:
                with contextlib.suppress(IngressError):
                    live = _runtime.servers(self.paths.admin_sock, backend_name(b["key"]))
            servers = []
            for s in b["servers"]:
                state = live.get(s["name"])
                servers.append({**s, "health": _health(state)})
            backends.append({**b, "servers": servers})
        return {
            "running": pid is not None,
            "pid": pid,
            "address": applied.get("address", self.address),
            "routes": applied.get("routes", []),
            "backends": backends,
            "certificates": [dataclasses.asdict(c) for c in self.certs.list()],
        }

    def add_cert(self, host: str, cert_pem: bytes, key_pem: bytes) -> CertInfo:
        """Store a certificate for ``host`` and serve it (a reload when running)."""
        info = self.certs.add(host, cert_pem, key_pem)
        self.refresh()
        return info

    def remove_cert(self, host: str) -> None:
        self.certs.remove(host)
        self.refresh()

    def list_certs(self) -> list[CertInfo]:
        return self.certs.list()

    # -- ACME HTTP-01 answers ------------------------------------------------------------

    def set_challenge(self, token: str, key_authorization: str) -> None:
        """Answer ``/.well-known/acme-challenge/<token>`` on every plain HTTP port."""
        self._challenge(token, key_authorization)

    def clear_challenge(self, token: str) -> None:
        self._challenge(token, None)

    def _challenge(self, token: str, value: str | None) -> None:
        # Both go into a runtime API command line and the map file: base64url only
        # (and the "." between the key authorization's two parts).
        if not _BASE64URL.match(token):
            raise IngressError(f"invalid ACME token: {token!r}")
        if value is not None and not _BASE64URL.match(value.replace(".", "", 1)):
            raise IngressError(f"invalid ACME key authorization: {value!r}")
        key = ACME_PREFIX + token
        with self._locked():
            entries = self._read_map()
            entries.pop(key, None)
            if value is not None:
                entries[key] = value
            self._write_map(entries)
            if self.running() is None or not self._serves_challenges():
                return
            sock, map_file = self.paths.admin_sock, self.paths.acme_map
            with contextlib.suppress(IngressError):  # absent: nothing to delete
                _runtime.checked(sock, f"del map {map_file} {key}")
            if value is not None:
                _runtime.checked(sock, f"add map {map_file} {key} {value}")

    def _serves_challenges(self) -> bool:
        """Whether HAProxy loaded the map (it has a plain HTTP port): otherwise the
        runtime API knows no such map, and the file is read at the next reload."""
        try:
            return str(self.paths.acme_map) in self.paths.cfg.read_text()
        except OSError:
            return False

    def _read_map(self) -> dict[str, str]:
        try:
            lines = self.paths.acme_map.read_text().splitlines()
        except FileNotFoundError:
            return {}
        return dict(ln.split(" ", 1) for ln in lines if " " in ln)

    def _write_map(self, entries: dict[str, str]) -> None:
        text = "".join(f"{k} {v}\n" for k, v in sorted(entries.items()))
        atomic_write(self.paths.acme_map, text.encode(), mode=0o600, sync=False)

    # -- the work -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            self.paths.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def refresh(self) -> None:
        """Re-apply what was applied (after a change of certificates)."""
        applied = self._read_applied()
        if not applied or self.running() is None:
            return
        # on the address it serves (a command's Ingress does not know the daemon's flag)
        self.address = applied.get("address", self.address)
        routes = [Route(**r) for r in applied["routes"]]
        backends = [
            Backend(
                key=b["key"],
                servers=tuple(Server(**s) for s in b["servers"]),
                balance=b["balance"],
                health_path=b["health_path"],
            )
            for b in applied["backends"]
        ]
        self.apply(routes, backends)

    def _apply(
        self, routes: list[Route], listeners: list[Listener], backends: list[Backend]
    ) -> str:
        tls = any(li.tls for li in listeners)
        if tls:
            self.certs.ensure_default(self.paths.default_cert)
            self.certs.write_crt_list(self.paths.crt_list)
        if not self.paths.acme_map.exists():
            self._write_map({})
        udp_routes = [r for r in routes if r.protocol == "udp"]
        udp_keys = {r.backend for r in udp_routes}
        proxied = [b for b in backends if b.key not in udp_keys]
        structure = self._structure(listeners, proxied, tls)
        full = render(self.paths, self.address, listeners, proxied)
        applied = self._read_applied()
        pid = _process.master_pid(self.paths)
        # Ports HAProxy does not hold yet must be free (its own it passes on); what
        # it holds is what its configuration binds (applied.json may be older).
        held = set() if pid is None else _bound_ports(self.paths.cfg)
        wanted = sorted({li.port for li in listeners if not li.udp} - held)
        _process.check_ports(self.address, wanted)
        if pid is None:
            _leases.reap(self.root)
            _process.clean_leftovers(self.paths)
            self._write_config(full)
            _process.start(self.paths)
            _hooks.stop_point("ingress:started")
            outcome = "started"
        elif applied.get("structure") != structure or applied.get("address") != self.address:
            previous = self.paths.cfg.read_text()
            self._write_config(full)
            try:
                _process.reload(self.paths)
            except IngressError:
                # The master kept its workers on the previous configuration: so
                # must the file, which its next reload reads.
                self._write_config(previous, check=False)
                raise
            outcome = "reloaded"
        else:
            changed = self._apply_servers(proxied)
            if changed:
                self._write_config(full, check=False)  # a later reload keeps the servers
            outcome = "runtime" if changed else "unchanged"
        nat = _udp.rules(_udp.chain_name(self.root), self.address, udp_routes, backends)
        # Rewritten when they changed, or after a start (a reboot flushed them too).
        if nat != applied.get("udp", []) or (nat and outcome == "started"):
            _udp.apply(self.root, self.address, udp_routes, backends)
            if udp_routes:
                _udp.forget_flows(udp_routes, backends)
            if outcome == "unchanged":
                outcome = "runtime"
        self._write_applied(routes, backends, structure, nat)
        return outcome

    def _structure(self, listeners: list[Listener], backends: list[Backend], tls: bool) -> str:
        digest = hashlib.sha256()
        digest.update(
            render(self.paths, self.address, listeners, backends, with_servers=False).encode()
        )
        if tls:
            digest.update(self.certs.fingerprint().encode())
        return digest.hexdigest()

    def _write_config(self, text: str, check: bool = True) -> None:
        """Replace haproxy.cfg with ``text`` once HAProxy accepts it."""
        new = self.paths.dir / f".haproxy.cfg.{os.getpid()}.new"
        with _leases.take(self.root, "ingress") as lease:
            lease.add_path(new)
            try:
                new.write_text(text)
                _hooks.stop_point("ingress:config-written")
                if check:
                    _process.check_config(self.paths, new)
                os.replace(new, self.paths.cfg)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    new.unlink()
            lease.discard(new)

    def _apply_servers(self, backends: list[Backend]) -> bool:
        """Bring each backend's live servers in line with ``backends``; True when
        anything changed. New servers come first and old ones go last, so that the
        backend never has fewer servers than it needs while traffic flows: servers
        turning ready (or added) before any goes to maintenance or is removed."""
        sock = self.paths.admin_sock
        changed = False
        removals: list[tuple[str, str]] = []
        maints: list[str] = []
        for backend in backends:
            name = backend_name(backend.key)
            live = _runtime.servers(sock, name)
            wanted = {s.name: s for s in backend.servers}
            for server in backend.servers:
                current = live.get(server.name)
                if current is None:
                    self._add_server(name, server)
                    changed = True
                    continue
                if (current.address, current.port) != (server.address, server.port):
                    _runtime.checked(
                        sock,
                        f"set server {name}/{server.name} addr {server.address} port {server.port}",
                        "IP changed",
                        "port changed",
                        "no need to change",
                    )
                    changed = True
                if server.ready and (current.maint or current.drain):
                    _runtime.checked(sock, f"set server {name}/{server.name} state ready")
                    changed = True
                elif not server.ready and not current.maint:
                    maints.append(f"{name}/{server.name}")
            removals += [(name, s) for s in live if s not in wanted]
        for target in maints:
            _runtime.checked(sock, f"set server {target} state maint")
            changed = True
        for name, server_name in removals:
            self._remove_server(name, server_name)
            changed = True
        return changed

    def _add_server(self, name: str, server: Server) -> None:
        sock = self.paths.admin_sock
        _runtime.checked(
            sock,
            f"add server {name}/{server.name} {server_address(server)} {SERVER_OPTIONS}",
            "New server registered",
        )
        # A server added at run time starts in maintenance with its checks off.
        _runtime.checked(sock, f"enable health {name}/{server.name}")
        if server.ready:
            _runtime.checked(sock, f"set server {name}/{server.name} state ready")

    def _remove_server(self, name: str, server_name: str) -> None:
        """Stop new traffic to a server, let its requests finish (up to the drain
        timeout, then cut them) and delete it."""
        sock = self.paths.admin_sock
        target = f"{name}/{server_name}"
        _runtime.checked(sock, f"set server {target} state maint")
        deadline = time.monotonic() + self.drain_timeout
        cut = False
        while True:
            answer = _runtime.command(sock, f"del server {target}").strip()
            if answer.startswith("Server deleted") or "No such server" in answer:
                return
            if time.monotonic() >= deadline:
                if cut:
                    raise IngressError(f"HAProxy refused del server {target}: {answer}")
                _runtime.command(sock, f"shutdown sessions server {target}")
                cut, deadline = True, time.monotonic() + 5.0
            time.sleep(0.05)

    # -- applied state ---------------------------------------------------------------------

    def _read_applied(self) -> dict[str, Any]:
        try:
            data = json.loads(self.paths.applied.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_applied(
        self, routes: list[Route], backends: list[Backend], structure: str, nat: list[str]
    ) -> None:
        data = {
            "address": self.address,
            "structure": structure,
            "udp": nat,
            "routes": [dataclasses.asdict(r) for r in routes],
            "backends": [
                {**dataclasses.asdict(b), "servers": [dataclasses.asdict(s) for s in b.servers]}
                for b in backends
            ],
        }
        atomic_write(
            self.paths.applied, json.dumps(data, indent=1).encode(), mode=0o600, sync=False
        )


def _bound_ports(cfg: Path) -> set[int]:
    try:
        text = cfg.read_text()
    except OSError:
        return set()
    return {int(m) for m in re.findall(r"(?m)^ +bind \S*:(\d+)", text)}


def _health(state: _runtime.LiveServer | None) -> str:
    if state is None:
        return "unknown"
    if state.maint:
        return "maint"
    if state.drain:
        return "drain"
    return "up" if state.up else "down"


__all__ = ["Ingress", "check_host"]
