"""Durable file writes shared by every layer: ``fsync_dir`` and ``atomic_write``;
``remove_dir``, which renames a directory away before deleting it.

``atomic_write`` never leaves a half-written file: it writes a temporary file next
to the target (same directory, so the rename stays on one filesystem), optionally
fsyncs it, renames it over the target and, when syncing, fsyncs the directory so
the rename itself survives a crash. A reader sees the old file or the new one,
never a mix; on failure the temporary file is removed and the target is untouched.
Standard library only: this module sits below ``lamina.image`` and everything else.

``remove_dir`` deletes at once, or, in a long-lived process that asked for it
(``remove_trees_in_background``: the daemon), in a background thread, so that a
``run --rm`` answers before its files are gone. Whoever sweeps ``.rm-`` trash (the
engine's reconcile, ``sweep_trash``) deletes what a killed process left queued.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_remover: Any = None  # the background remover's queue (queue.SimpleQueue), when asked
_queued: set[str] = set()  # trees handed to it and not yet deleted


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


def remove_trees_in_background() -> None:
    """From now on ``remove_dir`` hands its trees to one background thread of this
    process (idempotent). For long-lived processes only: trees still queued when the
    process ends stay on disk as ``.rm-`` trash for the next sweep."""
    global _remover
    if _remover is not None:
        return
    import queue
    import shutil
    import threading

    pending: queue.SimpleQueue[Path] = queue.SimpleQueue()

    def run() -> None:
        while True:
            path = pending.get()
            shutil.rmtree(path, ignore_errors=True)
            _queued.discard(str(path))

    threading.Thread(target=run, name="tree-remover", daemon=True).start()
    _remover = pending


def remove_dir(d: Path) -> None:
    """Delete the directory ``d``: renamed to a ``.rm-`` name beside it first (gone from
    its name at once: nothing opens anything in it again), then its files now, or later
    in the background when this process asked for that. One that cannot be renamed
    (busy?) is deleted in place, as well as that goes."""
    trash = d.with_name(f".rm-{d.name}-{os.urandom(4).hex()}")
    try:
        os.rename(d, trash)
    except FileNotFoundError:
        return
    except OSError:
        trash = d
    if _remover is not None and trash is not d:
        _queued.add(str(trash))
        _remover.put(trash)
        return
    import shutil

    shutil.rmtree(trash, ignore_errors=True)


def sweep_trash(path: Path) -> None:
    """Delete ``path``, a ``.rm-`` tree another process (maybe a killed one) left,
    unless this process's background remover has it queued (errors ignored: its
    remover may be deleting it too)."""
    if str(path) not in _queued:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def queued_in(d: Path) -> int:
    """How many trees in ``d`` wait for this process's background remover: not
    something left over, to whoever counts the entries of ``d``."""
    if not _queued:
        return 0
    parent = str(d)
    return sum(1 for p in list(_queued) if os.path.dirname(p) == parent)


def finish_removals(timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) until the background remover has deleted what
    it was handed: a process that ends on purpose leaves no trash behind."""
    import time

    deadline = time.monotonic() + timeout
    while _queued and time.monotonic() < deadline:
        time.sleep(0.01)
