"""Leases: which lamina process owns a piece of half-done work, and cleanup after it dies.

Lifecycle of a lease, the one way every layer tells a live owner from a dead one:

1. ``take(root, kind)``: the owner creates ``<root>/leases/<id>.lock`` and holds an
   exclusive ``flock`` on it for as long as it lives. The kernel drops that lock when
   the process ends, *however* it ends (SIGKILL included), so liveness needs no pids
   (no reuse) and no heartbeat.
2. Before it creates something that must not outlive it if it dies (a scratch
   directory, a temp file beside a user's output, an overlay mount), the owner
   registers it: ``add_path`` / ``add_mount`` write ``<id>.json`` atomically. Register
   *first*, then create: cleaning up a path that was never made is a no-op, while a
   thing made but not registered would leak. ``discard`` forgets one that was
   committed (renamed into place) or cleaned up by the owner itself.
3. Records elsewhere name the lease id of the work in flight (an image-store lease
   protecting blobs, a build's step containers); whoever finds ``alive()`` false may
   undo that work.
4. ``release()``: normal end; the owner has committed or cleaned what it registered,
   and the lease files go. An owner may hand a lease over to a child process it
   starts (``fileno`` passed to the child, ``Lease.adopt`` there, ``hand_over``
   here): the lock is then held, without a gap, by whichever of the two lives.
   ``reap(root)``: any lamina command may call it; for each lease whose lock it can
   take (its owner is gone), it unmounts what was registered (deepest first), removes
   the paths, then the lease files.

Standard library only: this module sits below every package.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lamina._fsutil import atomic_write

_DIR = "leases"


def _dir(root: Path) -> Path:
    return Path(root) / _DIR


@dataclass
class LeaseInfo:
    """What a lease file says (for diagnostics and ``system df``)."""

    id: str
    kind: str
    pid: int
    created: float
    paths: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)


class Lease:
    """A held lease. Use as a context manager, or call ``release()``."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = Path(root)
        d = _dir(self.root)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.id = f"{kind}-{os.getpid()}-{os.urandom(6).hex()}"
        self.kind = kind
        self._lock_path = d / f"{self.id}.lock"
        self._json_path = d / f"{self.id}.json"
        self._info = LeaseInfo(self.id, kind, os.getpid(), time.time())
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # Blocking: a reaper probing every lock file may hold this new one for a
            # moment (it leaves a lock file without its json alone for a while).
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._write()  # may fail (a full disk): then no lock file may stay either
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_path)
            raise
        self._fd = fd

    def _write(self) -> None:
        data = json.dumps(self._info.__dict__).encode()
        atomic_write(self._json_path, data, mode=0o600, sync=False)

    def add_path(self, path: str | os.PathLike[str]) -> None:
        """Remove ``path`` (file or tree) if this owner dies before ``discard``ing it."""
        p = os.path.abspath(path)
        if p not in self._info.paths:
            self._info.paths.append(p)
            self._write()

    def add_mount(self, path: str | os.PathLike[str]) -> None:
        """Unmount ``path`` if this owner dies with it still mounted."""
        p = os.path.abspath(path)
        if p not in self._info.mounts:
            self._info.mounts.append(p)
            self._write()

    def discard(self, path: str | os.PathLike[str]) -> None:
        """Forget a registered path or mount: it was committed or cleaned up."""
        p = os.path.abspath(path)
        changed = False
        for items in (self._info.paths, self._info.mounts):
            if p in items:
                items.remove(p)
                changed = True
        if changed:
            self._write()

    def fileno(self) -> int:
        """The lock's descriptor: a child process given it (``pass_fds``) can ``adopt``
        the lease and hold it on once this process has handed it over."""
        return self._fd

    def hand_over(self) -> None:
        """Stop holding the lease here without ending it: the child that ``adopt``ed
        it holds it on (the kernel's lock lives while any process has the descriptor
        open) and releases it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @classmethod
    def adopt(cls, root: Path, lease_id: str, fd: int) -> Lease:
        """The lease ``lease_id`` that this process's parent handed over, whose lock
        descriptor it inherited as ``fd``; the lease file names this process from now
        on. ValueError when ``fd`` is not that lease's lock."""
        lease = cls.__new__(cls)
        lease.root = Path(root)
        lease.id = lease_id
        lease._lock_path = _dir(lease.root) / f"{lease_id}.lock"
        lease._json_path = _dir(lease.root) / f"{lease_id}.json"
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lease._lock_path))
        except OSError:
            same = False
        if "/" in lease_id or not same:
            raise ValueError(f"descriptor {fd} is not the lock of lease {lease_id}")
        os.set_inheritable(fd, False)  # what this process starts must not hold it
        info = _read(lease._json_path) or LeaseInfo(lease_id, "", 0, time.time())
        info.pid = os.getpid()
        lease.kind = info.kind
        lease._info = info
        lease._fd = fd
        lease._write()
        return lease

    def release(self) -> None:
        """The work is over (committed, or cleaned up by the owner): drop the lease."""
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._json_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lock_path)
        os.close(self._fd)
        self._fd = -1

    def detach(self) -> None:
        """Let go of this process's hold without ending the lease: a child forked
        while it was held (sharing the lock) finishes the work and releases it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def take(root: Path, kind: str) -> Lease:
    """A new lease for work of ``kind`` (``pull``, ``build``, ``save``...)."""
    return Lease(root, kind)


@contextlib.contextmanager
def _try_lock(lock_path: Path) -> Iterator[bool]:
    """True inside when the lock could be taken (its owner is gone)."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        # Released and unlinked by its owner between our open and flock?
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        yield same
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_lock(lock_path: Path) -> Iterator[bool]:
    """The same test for a lock file kept with the work itself (a container's
    ``lock``, held by whoever changes that container): True inside when the lock was
    taken, so no live process holds it. A missing file is made (its owner died
    before making it); a missing directory yields False."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except (FileNotFoundError, NotADirectoryError):
        yield False
        return
    os.close(fd)
    with _try_lock(lock_path) as free:
        yield free


def alive(root: Path, lease_id: str) -> bool:
    """Whether the owner of ``lease_id`` still runs. A lease that was released (its
    work committed or undone by its owner) counts as not alive."""
    if not lease_id or "/" in lease_id or lease_id.startswith("."):
        return False
    lock_path = _dir(root) / f"{lease_id}.lock"
    if not lock_path.exists():
        return False
    with _try_lock(lock_path) as free:
        return not free and lock_path.exists()


def _read(json_path: Path) -> LeaseInfo | None:
    try:
        raw = json.loads(json_path.read_text())
        return LeaseInfo(
            id=str(raw["id"]),
            kind=str(raw["kind"]),
            pid=int(raw["pid"]),
            created=float(raw["created"]),
            paths=[str(p) for p in raw.get("paths") or []],
            mounts=[str(p) for p in raw.get("mounts") or []],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live(root: Path) -> list[LeaseInfo]:
    """The leases whose owners still run."""
    d = _dir(root)
    out: list[LeaseInfo] = []
    if not d.is_dir():
        return out
    for lock_path in sorted(d.glob("*.lock")):
        lease_id = lock_path.name[: -len(".lock")]
        if alive(root, lease_id):
            info = _read(d / f"{lease_id}.json")
            if info is not None:
                out.append(info)
    return out


def reap(root: Path) -> list[LeaseInfo]:
    """Clean up after every lease whose owner died: unmount its mounts, remove its
    paths, delete its files. Returns what was reaped. Safe to run from any number of
    processes at once."""
    from lamina._mount import unmount_under

    d = _dir(root)
    reaped: list[LeaseInfo] = []
    if not d.is_dir():
        return reaped
    for lock_path in sorted(d.glob("*.lock")):
        lease_id = lock_path.name[: -len(".lock")]
        json_path = d / f"{lease_id}.json"
        with _try_lock(lock_path) as free:
            if not free:
                continue
            found = _read(json_path)
            if found is None and _young(lock_path):
                continue  # its owner may be between making the lock file and taking it
            info = found or LeaseInfo(lease_id, "", 0, 0.0)
            for mount in sorted(info.mounts, key=len, reverse=True):
                unmount_under(mount)
            for path in info.paths:
                _remove(path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(json_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
            reaped.append(info)
    # A lease file whose owner died between creating the json and the lock file cannot
    # exist (the lock comes first); stray json files without a lock are leftovers.
    for json_path in d.glob("*.json"):
        if not json_path.with_suffix(".lock").exists():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(json_path)
    return reaped


_BIRTH = 5.0  # seconds a lease's lock file may exist without its json


def _young(lock_path: Path) -> bool:
    try:
        return time.time() - lock_path.stat().st_mtime < _BIRTH
    except FileNotFoundError:
        return False


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    import stat

    if stat.S_ISDIR(st.st_mode):
        from lamina._mount import unmount_under

        unmount_under(path)  # never recurse into something still mounted below it
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
