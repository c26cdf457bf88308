"""The copier: ``cp`` into and out of a process container, race-free by construction.

Why: a container's files are the container's to rewrite at any moment. A copier that
resolves a path on the host and then opens it (even symlink by symlink, as
``secure_join`` does) loses the race against a container that swaps a directory for
a symlink to a host path in between: CVE-2018-15664, which let ``docker cp`` write
host files as root. Pausing the container only narrows that for callers that
remember to, and does nothing for the volumes a container shares with others.

How: every lookup and every open happens in a child process whose root *is* the
container's, so the kernel cannot resolve any path outside it, whatever the
container does meanwhile (Podman's copier and Docker's chrootarchive do the same):

- running (or paused) container: the child opens a pidfd on the container's init,
  checks that it still is the container's (its parent is the container's conmon,
  whose start time is recorded), opens ``/proc/PID/root``, checks the pidfd again (so
  the pid was not reused in between), joins the init's mount namespace (``setns`` on
  the pidfd) and chroots into that root. It sees what the container sees: volumes,
  binds, tmpfs mounts.
- otherwise: the child unshares a private mount namespace, mounts the container's
  overlay there (or uses the host's mount of it: a created container), clones the
  sources of the container's bind mounts (volumes among them, from its
  ``config.json``), ``pivot_root``s into the container's root and drops the host's
  tree, then attaches the clones at their targets, resolved inside the new root,
  read-only where the container has them so (and the root, for ``--read-only``), as
  Docker mounts a stopped container's volumes for ``cp``. All of it lives in that
  namespace only and goes with the child, also when it is SIGKILLed. The caller holds
  the container's lock meanwhile, so no ``start`` mounts the same upper dir twice.

The child seals its imports first (once it is in the container, every path on
``sys.path`` names one of the container's files): all it needs is loaded before. It
runs ``_fsops``' functions on the root ``/`` and talks to the parent over two
pipes: the tar stream (which the parent decompresses), and JSON status lines, one
when its checks passed or failed (no such path, not a directory: one line each) and
one at the end. The parent never opens a path under the container's root.

The child is a fork of the caller when the caller runs no other thread (the CLI:
~2 ms, where a fresh interpreter costs ~50 ms); a multi-threaded caller gets
``python -m lamina.runtime._copier`` instead, as a fork could inherit a lock another
thread held. Either way it dies with its parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import select
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from lamina._fsutil import write_all
from lamina._mount import MNT_DETACH, last_errno, libc, mount_overlay
from lamina.errors import LaminaError, NotFound
from lamina.image import apply_layer, open_decompressed
from lamina.runtime import _fsops
from lamina.runtime._types import PathStat
from lamina.runtime.common import alive

_CHUNK = 1 << 20

# Linux ABI: flags, and the syscalls glibc 2.36 has no wrapper for (numbers from 424
# on are the same on every architecture).
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000
_PR_SET_PDEATHSIG = 1
_AT_FDCWD, _AT_EMPTY_PATH, _AT_RECURSIVE = -100, 0x1000, 0x8000
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 0x1, 0o2000000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_RDONLY = 0x1
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}

# Looked up now: a codec module imported after the child sealed its imports would fail.
for _codec in ("utf-8", "ascii", "latin-1", "iso8859-1"):
    codecs.lookup(_codec)


@dataclass
class Bind:
    """A bind mount of a container that is not running: host ``source`` at ``target``."""

    source: str
    target: str
    read_only: bool = False
    recursive: bool = True


@dataclass
class RunningRoot:
    """A running (or paused) container: its init, trusted while its parent is the
    container's conmon (pid ``conmon_pid``, started at ``conmon_start``)."""

    pid: int
    conmon_pid: int
    conmon_start: int


@dataclass
class StoppedRoot:
    """A container that is not running: its overlay and bind mounts."""

    merged: str
    lowers: list[str]  # empty: the host has it mounted at ``merged``
    overlay_tail: str  # the overlay options after lowerdir= (upperdir, workdir, ...)
    binds: list[Bind] = field(default_factory=list)
    read_only: bool = False


View = RunningRoot | StoppedRoot


@dataclass
class _Job:
    """What one child does: ``op`` is "stat", "out" or "in"."""

    op: str
    path: str
    follow_link: bool
    view: View
    status_fd: int
    data_fd: int  # the child's end of the tar stream; -1 for stat
    parent: int

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["view_kind"] = "running" if isinstance(self.view, RunningRoot) else "stopped"
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> _Job:
        data = json.loads(text)
        raw = data.pop("view")
        view: View
        if data.pop("view_kind") == "running":
            view = RunningRoot(**raw)
        else:
            raw["binds"] = [Bind(**b) for b in raw["binds"]]
            view = StoppedRoot(**raw)
        return cls(view=view, **data)


# -- the parent's side --------------------------------------------------------------


def stat_path(view: View, path: str) -> PathStat:
    """``_fsops.stat_path`` in the container's view."""
    with contextlib.closing(_Child.start(view, "stat", path)) as child:
        return PathStat(**child.report(last=True)["stat"])


def copy_out(view: View, path: str, *, follow_link: bool = False) -> Iterator[bytes]:
    """``_fsops.copy_out`` in the container's view: its errors are raised here, then
    the returned iterator streams the tar."""
    child = _Child.start(view, "out", path, follow_link=follow_link)
    try:
        child.report()
    except BaseException:
        child.close()
        raise
    return child.stream_out()


def copy_in(view: View, path: str, tar_stream: BinaryIO) -> None:
    """``_fsops.copy_in`` in the container's view."""
    with contextlib.closing(_Child.start(view, "in", path)) as child:
        child.report()  # the extraction point is a directory
        child.feed(tar_stream)
        child.report(last=True)


class _Child:
    """A started copier: its pid, status pipe and our end of the data pipe."""

    def __init__(self, pid: int, wait: Callable[[], int], status_fd: int, data_fd: int) -> None:
        self.pid = pid
        self._wait = wait
        self.status = os.fdopen(status_fd, "rb")
        self.data = data_fd
        self.done = False  # the child said its last word: it exits by itself
        self.exit_code: int | None = None

    @classmethod
    def start(cls, view: View, op: str, path: str, *, follow_link: bool = False) -> _Child:
        status_r, status_w = os.pipe()
        ours = theirs = -1
        if op != "stat":
            r, w = os.pipe()
            ours, theirs = (r, w) if op == "out" else (w, r)
        job = _Job(op, path, follow_link, view, status_w, theirs, os.getpid())
        try:
            pid, wait = _launch(job)
        except BaseException:
            for fd in (status_r, ours):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (status_w, theirs):
                if fd >= 0:
                    os.close(fd)
        return cls(pid, wait, status_r, ours)

    def report(self, *, last: bool = False) -> dict[str, Any]:
        """The child's next status line (``last``: its final one); an error it
        reports is raised as NotFound or LaminaError."""
        line = self.status.readline()
        if not line:
            self.done = True
            self._reap()
            raise LaminaError(f"the copier ended without a word ({_describe(self.exit_code)})")
        msg: dict[str, Any] = json.loads(line)
        if "error" in msg:
            self.done = True
            raise (NotFound if msg.get("kind") == "NotFound" else LaminaError)(msg["error"])
        self.done = last
        return msg

    def stream_out(self) -> Iterator[bytes]:
        try:
            while chunk := os.read(self.data, _CHUNK):
                yield chunk
            self.report(last=True)  # the end, or what failed after the stream began
        finally:
            self.close()

    def feed(self, tar_stream: BinaryIO) -> None:
        """Send the tar stream, decompressed (here, as the child imports nothing more)."""
        try:
            with open_decompressed(tar_stream) as plain:
                while chunk := plain.read(_CHUNK):
                    write_all(self.data, chunk)
        except BrokenPipeError:
            pass  # the child stopped reading: its status says why
        finally:
            os.close(self.data)
            self.data = -1

    def __del__(self) -> None:  # a stream dropped before its first chunk
        with contextlib.suppress(Exception):
            self.close()

    def _reap(self) -> None:
        if self.exit_code is None:
            self.exit_code = self._wait()

    def close(self) -> None:
        """Close the pipes and reap the child, killed first unless it is done (the
        stream was abandoned, or the caller failed). Idempotent."""
        if self.exit_code is not None and self.data < 0:
            return
        if self.data >= 0:
            os.close(self.data)
            self.data = -1
        self.status.close()
        if not self.done:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._reap()


def _launch(job: _Job) -> tuple[int, Callable[[], int]]:
    """Start the child: (pid, a function that waits for it and returns its exit code,
    negative for a signal, as ``Popen.wait``)."""
    libc()  # loaded before the fork: ctypes' import must not happen in the child
    if threading.active_count() == 1:
        pid = os.fork()
        if pid == 0:
            gc.disable()  # a collected inherited object would close an fd reused since
            _child_main(job)

        def wait() -> int:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        return pid, wait
    import subprocess  # only here: most callers fork

    fds = [fd for fd in (job.status_fd, job.data_fd) if fd >= 0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lamina.runtime._copier", job.to_json()],
        pass_fds=fds,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc.pid, proc.wait


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


# -- the child's side ---------------------------------------------------------------


def _child_main(job: _Job) -> NoReturn:
    code = 1
    try:
        _die_with(job.parent)
        _keep_only_fds(job.status_fd, job.data_fd)
        _seal_imports()
        if isinstance(job.view, RunningRoot):
            _enter_running(job.view)
        else:
            _enter_stopped(job.view)
        _serve(job)
        code = 0
    except BaseException as e:  # reported as one line, never a traceback
        with contextlib.suppress(BaseException):
            _send(job.status_fd, _error_report(e))
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:
    libc().prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(1)


def _keep_only_fds(*keep: int) -> None:
    """Close every inherited descriptor but ``keep`` (a host directory's among them
    would be a way out of the root); stdio goes to /dev/null."""
    null = os.open("/dev/null", os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)
    if null > 2:
        os.close(null)
    lowest = 3
    for fd in sorted(k for k in keep if k >= 0):
        os.closerange(lowest, fd)
        lowest = fd + 1
    os.closerange(lowest, os.sysconf("SC_OPEN_MAX"))


def _seal_imports() -> None:
    """No import from a file from now on: the paths on sys.path are about to name
    the container's files. Built-in and frozen modules stay importable."""
    allowed = ("BuiltinImporter", "FrozenImporter")  # importlib.machinery's, as classes
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__name__", "") in allowed]
    sys.path_hooks.clear()
    sys.path_importer_cache.clear()
    sys.path.clear()


def _enter_running(view: RunningRoot) -> None:
    lost = LaminaError("the container stopped before the copy could start; try again")
    try:
        pidfd = os.pidfd_open(view.pid)
    except ProcessLookupError:
        raise lost from None
    if _parent_pid(view.pid) != view.conmon_pid or not alive(view.conmon_pid, view.conmon_start):
        raise lost
    try:
        root = os.open(f"/proc/{view.pid}/root", os.O_PATH | os.O_DIRECTORY)
    except OSError:
        raise lost from None
    if select.select([pidfd], [], [], 0)[0]:  # readable: it exited, the pid may be reused
        raise lost
    if libc().setns(pidfd, _CLONE_NEWNS) != 0:
        raise _os_error("cannot enter the container's mount namespace")
    os.fchdir(root)
    os.chroot(".")
    os.close(root)
    os.close(pidfd)


def _parent_pid(pid: int) -> int:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    return int(raw[raw.rfind(b")") + 2 :].split()[1])


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("set", "clr", "propagation", "userns_fd")]


def _enter_stopped(view: StoppedRoot) -> None:
    lib = libc()
    if lib.unshare(_CLONE_NEWNS) != 0:
        raise _os_error("cannot make a mount namespace for the copy")
    if lib.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise _os_error("cannot make the copy's mounts private")
    if not os.path.ismount(view.merged):
        if not view.lowers:
            raise LaminaError("the container's root filesystem was unmounted meanwhile")
        try:
            err = mount_overlay(Path(view.merged), view.lowers, view.overlay_tail)
        except ValueError as e:
            raise LaminaError(str(e)) from None
        if err:
            raise LaminaError(f"cannot mount the container's root filesystem: {os.strerror(err)}")
    trees = [_clone(bind) for bind in view.binds]
    os.chdir(view.merged)
    pivot_root = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if pivot_root is not None and lib.syscall(pivot_root, b".", b".") == 0:
        lib.umount2(b".", MNT_DETACH)  # the host's tree, stacked on the new root
    else:  # EINVAL when this process runs chrooted: a chroot confines it as well
        os.chroot(".")
    os.chdir("/")
    for tree, bind in zip(trees, view.binds, strict=True):
        _attach(tree, bind)
    if view.read_only and lib.mount(None, b"/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY, None):
        raise _os_error("cannot make the container's root read-only")


def _clone(bind: Bind) -> int:
    """A detached copy of the mount tree at ``bind.source`` (read-only if asked)."""
    lib = libc()
    rec = _AT_RECURSIVE if bind.recursive else 0
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | rec
    tree = int(lib.syscall(_SYS_OPEN_TREE, _AT_FDCWD, bind.source.encode(), flags))
    if tree < 0:
        raise _os_error(f"cannot mount {bind.source} at {bind.target}")
    if bind.read_only:
        attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
        size, where = ctypes.sizeof(attr), _AT_EMPTY_PATH | rec
        if lib.syscall(_SYS_MOUNT_SETATTR, tree, b"", where, ctypes.byref(attr), size):
            raise _os_error(f"cannot make {bind.target} read-only")
    return tree


def _attach(tree: int, bind: Bind) -> None:
    """Mount ``tree`` at ``bind.target`` in the container's root, making the mount
    point as runc does when it is missing."""
    target = bind.target
    if not os.path.lexists(target):
        if stat.S_ISDIR(os.fstat(tree).st_mode):
            os.makedirs(target, 0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    flags = _MOVE_MOUNT_F_EMPTY_PATH
    if libc().syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, target.encode(), flags) != 0:
        raise _os_error(f"cannot mount {bind.source} at {target}")
    os.close(tree)


def _serve(job: _Job) -> None:
    root = Path("/")
    if job.op == "stat":
        found = _fsops.stat_path(root, job.path)
        _send(job.status_fd, {"stat": dataclasses.asdict(found)})
    elif job.op == "out":
        chunks = _fsops.copy_out(root, job.path, follow_link=job.follow_link)
        _send(job.status_fd, {"ok": True})
        for chunk in chunks:
            write_all(job.data_fd, chunk)
        os.close(job.data_fd)
        _send(job.status_fd, {"ok": True})
    else:
        dest = _fsops.extraction_point(root, job.path)
        _send(job.status_fd, {"ok": True})
        with os.fdopen(job.data_fd, "rb") as data:
            apply_layer(data, dest)
        _send(job.status_fd, {"ok": True})


def _send(fd: int, msg: dict[str, Any]) -> None:
    write_all(fd, json.dumps(msg).encode() + b"\n")


def _os_error(what: str) -> LaminaError:
    return LaminaError(f"{what}: {os.strerror(last_errno())}")


def _error_report(e: BaseException) -> dict[str, Any]:
    if isinstance(e, NotFound):
        return {"error": str(e), "kind": "NotFound"}
    if isinstance(e, LaminaError):
        return {"error": str(e)}
    if isinstance(e, OSError) and e.strerror:
        return {"error": f"{e.strerror}: {e.filename}" if e.filename else e.strerror}
    if isinstance(e, KeyboardInterrupt):
        return {"error": "interrupted"}
    return {"error": f"the copier failed: {type(e).__name__}: {e}"}


if __name__ == "__main__":  # a multi-threaded caller's child: see _launch
    _child_main(_Job.from_json(sys.argv[1]))
