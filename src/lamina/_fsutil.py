"""Durable file writes shared by every layer: ``fsync_dir`` and ``atomic_write``.

``atomic_write`` never leaves a half-written file: it writes a temporary file next
to the target (same directory, so the rename stays on one filesystem), optionally
fsyncs it, renames it over the target and, when syncing, fsyncs the directory so
the rename itself survives a crash. A reader sees the old file or the new one,
never a mix; on failure the temporary file is removed and the target is untouched.
Standard library only: this module sits below ``lamina.image`` and everything else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename or create inside it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Give ``path`` to an OSError raised inside that names no file: a write, flush or
    close refused by a full disk says only "No space left on device", and the one
    line the CLI prints must say what could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            e.filename = os.fspath(path)
        raise


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (``os.write`` may write less than it was given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644, sync: bool = True
) -> None:
    """Replace ``path`` with ``data`` in one step. ``mode`` is the new file's mode
    (whatever the umask); ``sync=False`` skips both fsyncs, for files that are
    rebuilt anyway after a crash and sit on a hot path."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with naming(target):
            try:
                os.fchmod(fd, mode)
                write_all(fd, data)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync:
        fsync_dir(target.parent)
