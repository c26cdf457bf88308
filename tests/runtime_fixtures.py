"""Helpers for runtime tests: a busybox image in a fresh lamina root, configs, and
the ``lamina`` CLI run in a subprocess on such a root.

The image is made offline from Debian's busybox-static (``lamina.testing``) and
imported with ``import_rootfs``, as a user would with ``lamina import``. It has a
non-root user ``app`` (1000:1000, home /home/app) besides root and nobody.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lamina.image import LocalImages, import_rootfs
from lamina.runtime import ContainerConfig
from lamina.testing import make_busybox_rootfs

IMAGE_REF = "example.com/test/busybox:latest"


def busybox_rootfs(dest: Path) -> Path:
    make_busybox_rootfs(dest)
    with open(dest / "etc" / "passwd", "a") as f:
        f.write("app:x:1000:1000:app:/home/app:/bin/sh\n")
    with open(dest / "etc" / "group", "a") as f:
        f.write("app:x:1000:\n")
    (dest / "home" / "app").mkdir(parents=True, exist_ok=True)
    os.chown(dest / "home" / "app", 1000, 1000)
    return dest


def import_busybox(root: Path, scratch: Path, reference: str = IMAGE_REF) -> str:
    """Import the busybox rootfs into the lamina root; returns the image ID."""
    rootfs = busybox_rootfs(scratch / "rootfs")
    local = LocalImages.open(root)
    try:
        record = import_rootfs(
            local, rootfs, reference=reference, changes=['CMD ["/bin/sh"]', "ENV LANG=C.UTF-8"]
        )
        return str(record.id)
    finally:
        local.close()


def config(image: str, *cmd: str, **kwargs: Any) -> ContainerConfig:
    """A ContainerConfig running ``cmd`` (the image's CMD when empty)."""
    return ContainerConfig(image=image, command=list(cmd) if cmd else None, **kwargs)


def settle_network(root: Path, timeout: float = 30.0) -> None:
    """Wait for the network teardowns a removed ``--rm`` container left to a worker
    (``engine._networks``: ``run --rm`` returns before netavark's teardown; its netns
    and ``netdown`` lease go a moment later)."""
    down, leases = root / "networks" / "down", root / "leases"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = (down.is_dir() and any(down.glob("*.json"))) or (
            leases.is_dir() and any(leases.glob("netdown-*"))
        )
        if not busy:
            return
        time.sleep(0.02)


def overlay_mounts(root: Path) -> list[str]:
    """Mount points under ``root`` (from /proc/self/mountinfo)."""
    prefix = str(root.resolve())
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point.startswith(prefix):
                out.append(point)
    return out


def lamina_cgroups(cid: str) -> list[str]:
    """Existing cgroup dirs of container ``cid`` in every hierarchy."""
    base = Path("/sys/fs/cgroup")
    found = []
    for hierarchy in base.iterdir():
        for d in (hierarchy / "lamina" / cid, base / "lamina" / cid):
            if d.is_dir():
                found.append(str(d))
    return sorted(set(found))


def runc_list(root: Path) -> list[str]:
    out = subprocess.run(
        ["runc", "--root", str(root / "runc"), "list", "-q"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return out.split()


# -- the CLI ---------------------------------------------------------------------------

CLI = [sys.executable, "-m", "lamina.cli.main"]


def cli_image_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A lamina root holding the busybox image as ``IMAGE_REF``; skips the test where
    containers cannot run (not root, no runc or conmon)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (runc, mounts, cgroups)")
    if not (os.path.exists("/usr/sbin/runc") and os.path.exists("/usr/bin/conmon")):
        pytest.skip("needs runc and conmon")
    base = tmp_path_factory.mktemp(name)
    root = base / "root"
    import_busybox(root, base, IMAGE_REF)
    return root


class RemoteMode:
    """Both modes of the CLI (tests marked ``both_modes``, see conftest): when ``on``,
    ``lamina_cli`` sends each command to a daemon serving its root (started on first
    use, one per root, stopped at the session's end) through ``LAMINA_HOST``."""

    on = False
    daemons: dict[Path, Any] = {}

    @classmethod
    def host(cls, root: Path) -> str:
        from daemon_fixtures import Daemon

        daemon = cls.daemons.get(root)
        if daemon is None or daemon.proc.poll() is not None:
            daemon = cls.daemons[root] = Daemon(root)
        return f"unix://{daemon.socket}"

    @classmethod
    def stop_all(cls) -> None:
        for daemon in cls.daemons.values():
            if daemon.proc.poll() is None:
                daemon.stop()
        cls.daemons.clear()


def local_only(reason: str) -> None:
    """Skip the ``[remote]`` run of a test of what the daemon does not serve (said why)."""
    if RemoteMode.on:
        pytest.skip(f"in-process only: {reason}")


def lamina_cli(
    root: Path,
    *args: str,
    input: bytes | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``lamina --root ROOT ARGS...``; stdin is ``input`` or /dev/null; ``env`` is
    added to this process's environment (in remote mode, with LAMINA_HOST: the
    command goes to the root's daemon)."""
    if RemoteMode.on and args and args[0] != "daemon":
        env = {"LAMINA_HOST": RemoteMode.host(root), **(env or {})}
    return subprocess.run(
        [*CLI, "--root", str(root), *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
        cwd=cwd,
        env={**os.environ, **env} if env else None,
    )


def remove_all_containers(root: Path) -> None:
    """``lamina rm -f -v`` of every container on ``root``."""
    ids = lamina_cli(root, "ps", "-a", "-q", "--no-trunc").stdout.split()
    if ids:
        lamina_cli(root, "rm", "-f", "-v", *ids)


def lamina_ok(root: Path, *args: str, input: bytes | None = None) -> str:
    """stdout of ``lamina --root ROOT ARGS...``, which must succeed."""
    r = lamina_cli(root, *args, input=input)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    return r.stdout


def until(check: Callable[[], object], timeout: float = 60) -> None:
    """Wait until ``check()`` is true (polls every 0.1 s), else fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def error_line(stderr: str) -> str:
    """The one ``lamina: error:`` line of a failed command, which must be its last
    line (progress lines may come before it) and its only ``lamina:`` line."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("lamina:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert errors[0].startswith("lamina: error: "), stderr
    return errors[0]


def store_leftovers(root: Path) -> list[str]:
    """What a failed image command may not leave in a lamina root: every file but the
    databases (their -wal/-shm are sqlite's own) and pull's fixed set of lock files,
    and anything in the snapshot store or the ingest area (scratch dirs included)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == "locks":
            continue
        found.extend(os.path.join(rel, name) for name in filenames if ".db" not in name)
        if rel in ("snapshots", "content/ingest"):
            found.extend(os.path.join(rel, d) for d in dirnames)
    return sorted(found)


# Bridge networks need Debian's netavark and aardvark-dns (installed by make setup).
NEEDS_NETAVARK = pytest.mark.skipif(
    not os.path.exists("/usr/lib/podman/netavark"), reason="needs netavark and aardvark-dns"
)


def read_http_head(sock: socket.socket) -> bytes:
    """An HTTP response's status line and headers, read a byte at a time so that nothing
    after them (an upgraded connection's first bytes) is taken from the socket."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    return head
