"""A run's network namespace: a file under the root (``<root>/netns/<id>``) with a
namespace bind-mounted on it, made before the workload starts (netavark sets up the
veths in it; runc and a VM's taps join it by path) and removed when the run ends.

The namespace is made by a short-lived thread: ``unshare(CLONE_NEWNET)`` moves only
the calling thread, whose ``/proc/thread-self/ns/net`` is then bind-mounted on the
file; no process is forked. Without the bind mount nothing keeps it: a creator killed
halfway leaves at most an empty file, which ``remove`` deletes."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path

from lamina._mount import MNT_DETACH, last_errno, libc
from lamina.errors import LaminaError

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096


def path_of(root: Path, cid: str) -> Path:
    return Path(root) / "netns" / cid


def create(path: Path) -> None:
    """A new network namespace pinned at ``path`` (a leftover at it is removed first)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    remove(path)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    os.close(fd)
    failure: list[str] = []

    def make() -> None:
        c = libc()
        if c.unshare(_CLONE_NEWNET) != 0:
            failure.append(f"unshare: {os.strerror(last_errno())}")
            return
        src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        if c.mount(src, str(path).encode(), None, _MS_BIND, None) != 0:
            failure.append(f"mount: {os.strerror(last_errno())}")

    thread = threading.Thread(target=make, name="netns")
    thread.start()
    thread.join()
    if failure:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise LaminaError(f"cannot make a network namespace at {path}: {failure[0]}")


def exists(path: Path) -> bool:
    return os.path.lexists(path)


def remove(path: Path) -> None:
    """Unmount and delete ``path`` (nothing there: nothing to do)."""
    while libc().umount2(str(path).encode(), MNT_DETACH) == 0:
        pass  # mounted more than once (a racing create): every one goes
    err = last_errno()
    if err not in (errno.EINVAL, errno.ENOENT):
        raise LaminaError(f"cannot unmount the network namespace {path}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
