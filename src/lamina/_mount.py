"""Mounting an overlay filesystem the one way: build stage views and container roots;
and ``unmount_under``, the one way to clear every mount below a directory
(``mounts_under`` lists them).

``mount_overlay`` calls mount(2) through libc (no mount(8) process). The kernel
copies at most one page of mount options; a longer ``lowerdir=`` list is retried
with the lower directories relative to their common parent, mounted from there.
That changes the process's working directory for the call, so it runs under a lock
and the old one is restored before returning.
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

MNT_DETACH = 2  # umount2(2) flag: lazy unmount
MOUNT_OPTIONS_MAX = 4000  # the kernel copies at most one page of mount data
_CHDIR_LOCK = threading.Lock()


@functools.cache
def libc() -> ctypes.CDLL:
    import ctypes  # imported on first use: most commands mount nothing

    return ctypes.CDLL(None, use_errno=True)


def last_errno() -> int:
    """The errno the last libc() call left."""
    import ctypes

    return ctypes.get_errno()


def mount_overlay(target: Path, lowers: Sequence[str], tail: str = "") -> int:
    """Mount an overlay of ``lowers`` (topmost first) at ``target``, ``tail`` appended
    to the options (``,upperdir=...,workdir=...``, ``,volatile``); returns 0, or the
    errno of the failed mount. ValueError when the options do not fit in a page even
    with relative lower directories."""
    opts = f"lowerdir={':'.join(lowers)}{tail}"
    if len(opts) <= MOUNT_OPTIONS_MAX:
        return _mount(target, opts)
    base = os.path.commonpath(lowers)
    rel = [os.path.relpath(p, base) for p in lowers]
    opts = f"lowerdir={':'.join(rel)}{tail}"
    if len(opts) > MOUNT_OPTIONS_MAX:
        raise ValueError(f"too many layers to mount ({len(lowers)})")
    with _CHDIR_LOCK:
        cwd = os.open(".", os.O_RDONLY)
        try:
            os.chdir(base)
            return _mount(target, opts)
        finally:
            os.fchdir(cwd)
            os.close(cwd)


def _mount(target: Path, opts: str) -> int:
    if libc().mount(b"overlay", str(target).encode(), b"overlay", 0, opts.encode()) == 0:
        return 0
    return last_errno() or errno.EIO


def mounts_under(root: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``root`` (from /proc/self/mountinfo)."""
    prefix = str(root)
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return []
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def unmount_under(root: str | os.PathLike[str]) -> None:
    """Lazily unmount every mount at or below ``root``, deepest first (a failed
    debootstrap's /proc, a peer tool's overlays); nothing mounted is no error."""
    for point in sorted(mounts_under(root), key=len, reverse=True):
        libc().umount2(point.encode(), MNT_DETACH)
