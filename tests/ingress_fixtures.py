"""Helpers for the ingress tests: backend processes (``ingress_backend.py``), an HTTP
client on loopback, a load loop counting failed requests, and the after-test check
that a root's HAProxy is gone."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from runtime_fixtures import until

from lamina.ingress import Ingress, Server, _udp

BACKEND_SCRIPT = Path(__file__).with_name("ingress_backend.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BackendProc:
    name: str
    proc: subprocess.Popen[str]
    port: int

    def server(self, ready: bool = True) -> Server:
        return Server(self.name, "127.0.0.1", self.port, ready)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@dataclass
class Backends:
    procs: list[BackendProc] = field(default_factory=list)

    def start(self, mode: str, name: str) -> BackendProc:
        proc = subprocess.Popen(
            [sys.executable, str(BACKEND_SCRIPT), mode, name],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        backend = BackendProc(name, proc, int(proc.stdout.readline()))
        self.procs.append(backend)
        return backend

    def stop(self) -> None:
        for p in self.procs:
            p.kill()


def backend_procs() -> Iterator[Backends]:
    """The ``backends`` fixture of the ingress tests: processes killed at the end."""
    b = Backends()
    yield b
    b.stop()


def haproxy_processes(root: Path) -> list[int]:
    """Live processes running this root's HAProxy configuration."""
    cfg = str(root / "ingress" / "haproxy.cfg").encode()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and cfg in argv:
            out.append(int(pid))
    return out


def checked_ingress_root(tmp_path: Path) -> Iterator[Path]:
    """The ``ingress_root`` fixture of the ingress tests: a root whose ingress is
    closed after the test, which must leave no HAProxy, socket, pid file or
    temporary file behind."""
    if not shutil.which("haproxy") and not os.path.exists("/usr/sbin/haproxy"):
        pytest.skip("needs HAProxy")
    root = tmp_path / "root"
    yield root
    Ingress(root).close()
    assert haproxy_processes(root) == []
    left = {p.name for p in (root / "ingress").iterdir()} if (root / "ingress").exists() else set()
    assert not left & {"haproxy.pid", "master.sock", "admin.sock"}
    assert not [n for n in left if n.endswith((".new", ".tmp"))]
    leases = root / "leases"
    assert not (leases.exists() and list(leases.iterdir()))
    if os.geteuid() == 0:  # the UDP endpoints' NAT chain
        rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True)
        assert _udp.chain_name(root) not in rules.stdout


def get(
    port: int, host: str = "localhost", path: str = "/", timeout: float = 10.0
) -> tuple[int, dict[str, Any] | str]:
    """GET through the ingress on a new connection: (status, JSON body or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.getheader("Content-Type") == "application/json":
            return resp.status, json.loads(body)
        return resp.status, body
    finally:
        conn.close()


def served_by(port: int, host: str = "localhost", path: str = "/") -> str:
    status, body = get(port, host, path)
    assert status == 200 and isinstance(body, dict), (status, body)
    return str(body["name"])


class Load:
    """Requests in a loop from ``threads`` threads (each on new connections, as many
    clients), counting answers by server name and failures, until ``stop``."""

    def __init__(self, port: int, host: str = "localhost", threads: int = 2) -> None:
        self.port, self.host = port, host
        self.ok: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def total(self) -> int:
        with self._lock:
            return sum(self.ok.values()) + len(self.failures)

    def more(self, count: int, timeout: float = 20) -> None:
        """Wait until ``count`` more requests have been answered or failed."""
        start = self.total()
        until(lambda: self.total() - start >= count, timeout=timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.port, self.host)
                outcome = str(body["name"]) if status == 200 and isinstance(body, dict) else ""
                failure = "" if outcome else f"status {status}: {body!r}"[:200]
            except OSError as e:
                outcome, failure = "", f"{type(e).__name__}: {e}"
            with self._lock:
                if failure:
                    self.failures.append(failure)
                else:
                    self.ok[outcome] = self.ok.get(outcome, 0) + 1
