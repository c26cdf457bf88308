"""Helpers for the image store's concurrency and SIGKILL tests: a leak check of
everything the image plane can leave behind, a registry proxy that holds a blob's
download at a known point, and a way to kill a lamina command at a measured point."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from registry_server import Fault, FaultProxy
from runtime_fixtures import CLI, overlay_mounts, settle_network


def ingests(root: Path) -> list[str]:
    """Ingest directories (partial writes) under the root's content store."""
    d = root / "content" / "ingest"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def ingest_refs(root: Path) -> list[str]:
    """The refs of the ingests (what wrote them: ``pull-<digest>``, ``import-...``)."""
    out = []
    for name in ingests(root):
        ref = root / "content" / "ingest" / name / "ref"
        out.append(ref.read_text() if ref.exists() else "")
    return out


def leftovers(root: Path, *beside: Path) -> dict[str, list[str]]:
    """Everything interrupted work on ``root`` may leave: ingests, unpack and removal
    scratch dirs, leases, build scratch dirs, mounts under the root, and temp files
    beside the given paths (a ``save -o`` output)."""
    settle_network(root)
    snaps = root / "snapshots"
    leases = root / "leases"
    build_tmp = root / "build-tmp"
    found = {
        "ingests": ingests(root),
        "snapshot scratch": sorted(
            p.name for p in snaps.iterdir() if p.name.startswith((".tmp-", ".del-"))
        )
        if snaps.is_dir()
        else [],
        "leases": sorted(p.name for p in leases.iterdir()) if leases.is_dir() else [],
        "build scratch": sorted(p.name for p in build_tmp.iterdir()) if build_tmp.is_dir() else [],
        "mounts": overlay_mounts(root),
        "temp files": sorted(
            str(p)
            for target in beside
            for p in target.parent.iterdir()
            if p.name.startswith(f".{target.name}.tmp-")
        ),
    }
    return {k: v for k, v in found.items() if v}


def assert_clean(root: Path, *beside: Path) -> None:
    found = leftovers(root, *beside)
    assert found == {}, f"left behind: {found}"


def start(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``lamina --root ROOT ARGS...`` started in the background (output captured)."""
    return subprocess.Popen(
        [*CLI, "--root", str(root), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env} if env else None,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill_when(
    proc: subprocess.Popen[str], ready: Callable[[], object], timeout: float = 60
) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true (polled every 2 ms); fails when
    the process ends first or ``ready`` never holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"ended ({proc.returncode}) before the kill point: {err}{out}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError("the kill point was never reached")
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


class StallProxy(FaultProxy):
    """A registry proxy that holds the body of one blob after ``after`` bytes until
    ``release()``: a download in progress, at a known point, for as long as a test
    needs. ``stalled`` is set once the body is held. ``rearm()`` holds the next one."""

    def __init__(self, upstream_port: int, digest: str, after: int) -> None:
        super().__init__(upstream_port)
        self.digest = digest
        self.after = after
        self.stalled = threading.Event()
        self._go = threading.Event()
        self._armed = True

    def rearm(self) -> None:
        self.stalled.clear()
        self._go.clear()
        self._armed = True

    def release(self) -> None:
        self._go.set()

    def _relay(
        self,
        h: object,
        resp: http.client.HTTPResponse,
        data: bytes | None,
        fault: Fault | None,
    ) -> None:
        path = getattr(h, "path", "")
        if not (self._armed and self.digest in path and data is None):
            super()._relay(h, resp, data, fault)  # type: ignore[arg-type]
            return
        self._armed = False
        wfile = h.wfile  # type: ignore[attr-defined]
        sent = 0
        while chunk := resp.read(65536):
            if sent + len(chunk) > self.after and not self._go.is_set():
                head = chunk[: self.after - sent]
                wfile.write(head)
                wfile.flush()
                sent += len(head)
                chunk = chunk[len(head) :]
                self.stalled.set()
                # A client killed meanwhile is a closed socket: the rest fails to send.
                self._go.wait(timeout=120)
            try:
                wfile.write(chunk)
            except OSError:
                return
            sent += len(chunk)


@contextlib.contextmanager
def released(proxy: StallProxy) -> Iterator[StallProxy]:
    """The proxy, released on the way out whatever happens (no handler left waiting)."""
    try:
        yield proxy
    finally:
        proxy.release()
