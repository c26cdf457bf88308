"""The daemon process: one per root, serving the engine on its listeners.

Start: the root's ``daemon.lock`` is taken (held until the process ends, however it
ends: a second daemon on the root is refused with one line); the listeners are
checked before anything is made (TCP needs TLS client certificates or a bearer token);
the root is reconciled thoroughly (``Engine.sweep``: what a killed daemon or command
left half done is finished or rolled back) and the containers whose restart policy
says so after a reboot are started; then the sockets are made and ``daemon.json``
says who serves and where.

The daemon holds no container state of its own: every container is the store's, its
monitor (conmon, the VM supervisor) and the exit command finish its runs with no
lamina process alive, so a daemon killed with SIGKILL leaves every container running
and the next one takes them over as they are. SIGTERM/SIGINT stop it gracefully:
listeners closed, open connections (streams) ended, sockets removed; containers
keep running.
"""

from __future__ import annotations

import contextlib
import grp
import hmac
import json
import os
import signal
import socket
import ssl
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina import _leases
from lamina.daemon._http import Listener, Request, Server
from lamina.errors import LaminaError

LOCK_FILE = "daemon.lock"
STATE_FILE = "daemon.json"


@dataclass
class DaemonOptions:
    root: Path
    hosts: list[str] = field(default_factory=list)  # empty: the root's default socket
    docker_hosts: list[str] = field(default_factory=list)  # Docker's Engine API (dockerapi)
    tlscert: str | None = None
    tlskey: str | None = None
    tlscacert: str | None = None
    token_file: str | None = None
    group: str | None = None  # owner group of unix sockets (default: root's group 0)
    oci_runtime: str = "runc"
    insecure_registries: tuple[str, ...] = ()
    registries_config: str | None = None
    registry_mirrors: tuple[str, ...] = ()  # tried first by pulls of docker.io names
    default_root: bool = False  # the root is the system's: /run/lamina/lamina.sock
    ingress_address: str = "0.0.0.0"  # where deployments' public endpoints listen
    acme_directory: str | None = None  # ACME certificates for https endpoints' hosts
    acme_email: str = ""
    acme_ca_bundle: str | None = None  # CAs of the ACME directory's own TLS


def default_host(root: Path, *, system_root: bool) -> str:
    """Where the daemon of ``root`` listens without ``--host``: the system root's at
    ``/run/lamina/lamina.sock`` (as Docker's), any other root's at
    ``ROOT/lamina.sock``."""
    if system_root:
        return "unix:///run/lamina/lamina.sock"
    return f"unix://{Path(root).absolute() / 'lamina.sock'}"


def say(line: str) -> None:
    print(f"lamina daemon: {line}", file=sys.stderr, flush=True)


@dataclass
class _Plan:
    """The listeners as asked, checked, before anything is made."""

    unix: list[Path]
    tcp: list[tuple[str, int]]
    docker_unix: list[Path]
    docker_tcp: list[tuple[str, int]]
    tls: ssl.SSLContext | None
    token: bytes | None
    gid: int


def plan(opts: DaemonOptions) -> _Plan:
    hosts = opts.hosts or [default_host(opts.root, system_root=opts.default_root)]
    unix, tcp = _parse_hosts(hosts, "--host")
    docker_unix, docker_tcp = _parse_hosts(opts.docker_hosts, "--docker-host")
    tls = _tls(opts) if (opts.tlscert or opts.tlskey or opts.tlscacert) else None
    token = _token(opts.token_file) if opts.token_file else None
    has_tcp = bool(tcp or docker_tcp)
    if has_tcp and token is None and (tls is None or tls.verify_mode != ssl.CERT_REQUIRED):
        raise LaminaError(
            "refusing to listen on TCP without authentication: give --tlscert, --tlskey and "
            "--tlscacert (clients need certificates signed by that CA) or --token-file"
        )
    if tls is not None and not has_tcp:
        raise LaminaError("--tlscert/--tlskey/--tlscacert are for a tcp:// --host")
    return _Plan(unix, tcp, docker_unix, docker_tcp, tls, token, _gid(opts.group))


def _parse_hosts(hosts: list[str], flag: str) -> tuple[list[Path], list[tuple[str, int]]]:
    unix: list[Path] = []
    tcp: list[tuple[str, int]] = []
    for host in hosts:
        if host.startswith("unix://"):
            path = Path(host.removeprefix("unix://"))
            if not path.is_absolute():
                raise LaminaError(f"{flag} {host}: the socket path must be absolute")
            if len(os.fsencode(str(path))) > 107:
                raise LaminaError(f"{flag} {host}: a unix socket path is limited to 107 bytes")
            unix.append(path)
        elif host.startswith("tcp://"):
            address, sep, port = host.removeprefix("tcp://").rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free
                raise LaminaError(f"{flag} {host}: expected tcp://ADDRESS:PORT")
            tcp.append((address.strip("[]") or "127.0.0.1", int(port)))
        else:
            raise LaminaError(f"{flag} {host}: expected unix:///PATH or tcp://ADDRESS:PORT")
    return unix, tcp


def _tls(opts: DaemonOptions) -> ssl.SSLContext:
    if not (opts.tlscert and opts.tlskey):
        raise LaminaError("TLS needs both --tlscert and --tlskey")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(opts.tlscert, opts.tlskey)
        if opts.tlscacert:
            ctx.load_verify_locations(opts.tlscacert)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise LaminaError(f"cannot load the TLS files: {e}")
    return ctx


def _token(path: str) -> bytes:
    try:
        token = Path(path).read_bytes().strip()
    except OSError as e:
        raise LaminaError(f"cannot read --token-file {path}: {e.strerror}")
    if len(token) < 16:
        raise LaminaError(f"--token-file {path}: the token must have 16 characters or more")
    return token


def _gid(group: str | None) -> int:
    if group is None:
        return 0
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise LaminaError(f"--group {group}: no such group")


def authorize(request: Request, listener: Listener) -> bool:
    """A listener with a token wants ``Authorization: Bearer TOKEN`` (compared in
    constant time); TLS client certificates were checked in the handshake; a unix
    socket is guarded by its owner and mode."""
    if listener.token is None:
        return True
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), listener.token)


def _unix_listener(path: Path, gid: int) -> socket.socket:
    """A socket file of mode 0660, owned by root (this process) and ``gid``: made
    under umask 0177 and changed before ``listen``, so it is never more open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(mode):
            raise LaminaError(f"{path} exists and is not a socket: not replacing it")
        path.unlink()  # a killed daemon's: this one holds the root's lock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chown(path, os.geteuid(), gid)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


def _tcp_listener(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as e:
        sock.close()
        raise LaminaError(f"cannot listen on tcp://{address}:{port}: {e.strerror}")
    sock.listen(128)
    return sock


def serve(opts: DaemonOptions, *, ready: Callable[[list[str]], None] | None = None) -> None:
    """Run the daemon of ``opts.root`` until SIGTERM or SIGINT."""
    root = Path(opts.root).absolute()
    checked = plan(opts)
    root.mkdir(parents=True, exist_ok=True)
    with _leases.try_lock(root / LOCK_FILE) as free:
        if not free:
            raise LaminaError(f"another lamina daemon serves {root}{_who(root)}")
        _serve_locked(root, opts, checked, ready)


def serving(root: Path) -> dict[str, Any] | None:
    """What the daemon serving ``root`` wrote of itself (``pid``, ``hosts``,
    ``docker_hosts``), or None when there is no such file (or it cannot be read)."""
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _who(root: Path) -> str:
    state = serving(root)
    with contextlib.suppress(KeyError, TypeError):
        if state is not None:
            return f" (process {state['pid']}, on {', '.join(state['hosts'])})"
    return ""


def _serve_locked(root: Path, opts: DaemonOptions, checked: _Plan,
                  ready: Callable[[list[str]], None] | None) -> None:  # fmt: skip
    from lamina._fsutil import finish_removals, remove_trees_in_background
    from lamina.daemon import _api, _boot, _deploy

    engines = _api.Engines(root, opts.oci_runtime, insecure_registries=opts.insecure_registries,
                           registries_config=opts.registries_config,
                           registry_mirrors=opts.registry_mirrors, say=say)  # fmt: skip
    with engines.engine() as engine:
        _boot.take_over(engine, say)
    # A removed container's files go in the background: a ``run --rm`` answers once
    # the container is gone from its names, not once its files are (boot swept above).
    remove_trees_in_background()
    _api.API = _api.Api(engines)
    listeners: list[Listener] = []
    made: list[Path] = []
    try:
        from lamina.deploy._ingress import IngressOptions

        ingress = IngressOptions(opts.ingress_address, opts.acme_directory, opts.acme_email,
                                 opts.acme_ca_bundle)  # fmt: skip
        _deploy.start(root, opts.oci_runtime, say, ingress)  # the deployments' converge thread
        docker = None
        if checked.docker_unix or checked.docker_tcp:
            from lamina import dockerapi

            docker = dockerapi.dispatch
        for paths, dispatch in ((checked.unix, None), (checked.docker_unix, docker)):
            for path in paths:
                sock = _unix_listener(path, checked.gid)
                listeners.append(Listener(sock, f"unix://{path}", dispatch=dispatch))
                made.append(path)
        for addresses, dispatch in ((checked.tcp, None), (checked.docker_tcp, docker)):
            for address, port in addresses:
                sock = _tcp_listener(address, port)
                bound = sock.getsockname()[1]
                listeners.append(Listener(sock, f"tcp://{address}:{bound}", tls=checked.tls,
                                          token=checked.token, dispatch=dispatch))  # fmt: skip
        server = Server(listeners, _api.dispatch, authorize)
        hosts = [lst.address for lst in listeners]
        state = {
            "pid": os.getpid(),
            "hosts": [lst.address for lst in listeners if lst.dispatch is None],
            "docker_hosts": [lst.address for lst in listeners if lst.dispatch is not None],
        }
        (root / STATE_FILE).write_text(json.dumps(state) + "\n")
        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            stop.set()
            server.request_stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        say(f"serving {root} on {', '.join(hosts)}")
        if ready is not None:
            ready(hosts)
        try:
            server.serve()
        finally:
            server.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        say("stopped")
    finally:
        for lst in listeners:
            with contextlib.suppress(OSError):
                lst.sock.close()
        for path in made:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            (root / STATE_FILE).unlink()
        _deploy.stop()
        _api.API = None
        engines.close()
        finish_removals(timeout=30)  # what it still deletes; a kill leaves it to the sweep
