"""Per-container locks and directories.

Every container has a directory of its backend's (``containers/<id>``, ``vms/<id>``)
holding ``lock``: a flock held by whoever changes the container (creator, starter,
remover), from before the directory has any content until the record says what it
is. A free lock and a record that disagrees with the files means its owner died.
A directory is removed by renaming it away first (``_fsutil.remove_dir``): a process
about to open its lock then fails instead of making a new file in a directory being
deleted.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from lamina.engine._names import new_id
from lamina.errors import LaminaError

_ID_LEN = 64


def open_lock(path: Path) -> int:
    """An open descriptor of ``path`` (made if missing); FileNotFoundError or
    NotADirectoryError when its directory is gone."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def still_there(fd: int, path: Path) -> bool:
    """Whether the lock ``fd`` is still the one at ``path`` (not removed while this
    process waited for it)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except (FileNotFoundError, NotADirectoryError):
        return False


def new_dir(parent: Path) -> tuple[str, int]:
    """A new container ID with ``parent/<id>`` made and its lock held: the creator holds
    it until the record is in, so a directory without a record and a free lock is what
    a killed create left. (Reconciling in another process may take a directory not
    locked yet: then try another ID.)"""
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        cid = new_id()
        lock = parent / cid / "lock"
        lock.parent.mkdir()
        try:
            fd = open_lock(lock)
        except (FileNotFoundError, NotADirectoryError):
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        if still_there(fd, lock):
            return cid, fd
        os.close(fd)
    raise LaminaError("cannot make a container directory: it keeps being removed")


def list_dir(d: Path) -> list[str]:
    try:
        return os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return []


def is_id(name: str) -> bool:
    return len(name) == _ID_LEN and all(c in "0123456789abcdef" for c in name)
