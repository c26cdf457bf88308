"""The one HAProxy of a root: started detached in master-worker mode so that it
outlives the lamina process that started it, found again from its pid file by the
next one (adopted), reloaded without dropping a connection, stopped.

Liveness is the master's: its pid file names a process that is not a zombie, runs
``haproxy`` with this root's configuration and answers on the master socket. When the
master is gone its workers exit too (HAProxy's master-worker pipe); what is left
(sockets, pid file) is removed before a new one starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from lamina.ingress import _runtime
from lamina.ingress._config import Paths
from lamina.ingress._model import IngressError

HAPROXY = "/usr/sbin/haproxy"
_START_TIMEOUT = 10.0


def _binary() -> str:
    return os.environ.get("LAMINA_HAPROXY", HAPROXY)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _runs_config(pid: int, paths: Paths) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return bool(argv) and b"haproxy" in argv[0] and str(paths.cfg).encode() in argv


def master_pid(paths: Paths) -> int | None:
    """The pid of this root's running master, or None when there is none."""
    try:
        pid = int(paths.pid.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if _alive(pid) and _runs_config(pid, paths) and _runtime.answers(paths.master_sock):
        return pid
    return None


def clean_leftovers(paths: Paths) -> None:
    """Remove what a killed HAProxy left; only when ``master_pid`` is None."""
    for path in (paths.pid, paths.master_sock, paths.admin_sock):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def check_config(paths: Paths, cfg: Path) -> None:
    """HAProxy's own verdict on a configuration file (``-c``)."""
    proc = subprocess.run(
        [_binary(), "-c", "-q", "-f", str(cfg)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        lines = proc.stderr.splitlines()
        alerts = [ln for ln in lines if "ALERT" in ln] or lines
        raise IngressError(f"HAProxy rejects the ingress configuration: {_tail(alerts)}")


def _tail(lines: list[str]) -> str:
    return lines[0].strip() if lines else "no reason given"


def check_ports(address: str, ports: list[int]) -> None:
    """Refuse ports another program listens on, before HAProxy tries them (a reload
    that cannot bind fails with no word of why)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for port in ports:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as e:
                why = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
                raise IngressError(f"cannot listen on {address} port {port}: {why}") from None


def start(paths: Paths) -> int:
    """Start the master (which forks its worker) and wait until both answer."""
    clean_leftovers(paths)
    offset = _log_size(paths)
    with open(paths.log, "ab") as log:
        proc = subprocess.run(
            [
                _binary(),
                "-W",
                "-D",
                "-S",
                f"{paths.master_sock},mode,600",
                "-f",
                str(paths.cfg),
                "-p",
                str(paths.pid),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            check=False,
            timeout=60,
            start_new_session=True,
        )
    if proc.returncode != 0:
        clean_leftovers(paths)
        raise IngressError(f"HAProxy did not start: {_log_alert(paths, offset)}")
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        pid = master_pid(paths)
        if pid is not None and _runtime.answers(paths.admin_sock):
            return pid
        time.sleep(0.02)
    stop(paths)
    raise IngressError(f"HAProxy did not come up: {_log_alert(paths, offset)}")


def _log_size(paths: Paths) -> int:
    try:
        return paths.log.stat().st_size
    except FileNotFoundError:
        return 0


def _log_alert(paths: Paths, offset: int) -> str:
    """The first alert HAProxy logged since ``offset`` (the cause; later ones are
    consequences such as "Some protocols failed to start"), without its prefix."""
    try:
        with open(paths.log, "rb") as f:
            f.seek(offset)
            lines = f.read(65536).decode(errors="replace").splitlines()
    except OSError:
        lines = []
    alerts = [ln for ln in lines if "ALERT" in ln] or lines
    if not alerts:
        return "no reason given"
    return alerts[0].split(" : ", 1)[-1].strip()


def reload(paths: Paths) -> None:
    """A hitless reload: the master starts a new worker on the new configuration,
    which takes the listening sockets over from the old one (``expose-fd
    listeners``); the old worker finishes its connections and exits."""
    before = _runtime.show_proc(paths.master_sock)
    _runtime.command(paths.master_sock, "reload")
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            now = _runtime.show_proc(paths.master_sock)
        except IngressError:
            time.sleep(0.02)  # the master re-executes itself: its socket comes back
            continue
        if now.failed > before.failed:
            # A daemonized master logs nowhere: its workers stay on the old config.
            raise IngressError("HAProxy's reload failed; the previous configuration stays")
        worker = now.current_worker
        new_worker = now.reloads > before.reloads and worker != before.current_worker
        # Done once the new worker serves and the old ones take no new connection
        # (they get the soft stop just after the new one is ready).
        if (
            new_worker
            and worker
            and _worker_answers(paths, worker)
            and all(_runtime.stopping(paths.master_sock, pid) for pid in _old(now))
        ):
            return
        time.sleep(0.02)
    raise IngressError("HAProxy's reload did not finish in time")


def _old(proc: _runtime.Proc) -> list[int]:
    return proc.old_workers + [pid for pid, reloads in proc.workers if reloads > 0]


def _worker_answers(paths: Paths, worker: int) -> bool:
    """Whether the admin socket is served by ``worker`` (the new one) yet."""
    try:
        info = _runtime.command(paths.admin_sock, "show info", timeout=2.0)
    except IngressError:
        return False
    return f"\nPid: {worker}\n" in f"\n{info}"


def stop(paths: Paths, timeout: float = 10.0) -> None:
    """Stop the master and its workers (hard stop: connections are cut)."""
    pid = master_pid(paths)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    clean_leftovers(paths)
