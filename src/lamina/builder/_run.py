"""RUN: one command in a container (the engine's, given as ``BuildOptions.containers``:
the builder sits below the engine and imports none of it), its changes captured.

``Runner.run`` creates a container from the image record of the current layer
stack (``_commit.stack_image``) with everything else passed explicitly (argv, env,
user, working directory, network, mounts), attaches to stream its output to the
progress view, starts it and waits. Its overlay *upper* directory is then the
step's changes: the mountpoint stubs runc had to create (``/etc/hosts`` and
friends, ``--mount`` targets, and parent directories made only for them) are
removed first, and what remains is handed back for ``_commit.Store.commit_dir``.
The container is always removed, whatever happens; its ``owner`` is the build's
lease, so if the build itself is killed the engine removes it once the lease is
dead. Scratch directories and views are registered on that lease too.

``--mount`` kinds: ``bind`` (context, stage or image; read-only unless ``rw``,
whose writes are discarded), ``cache`` (persistent under the cache root;
``sharing=shared|private|locked``), ``tmpfs`` and ``secret`` (from ``--secret``;
a file, or an environment variable with ``env=``). ``ssh`` is refused. The network
(``lamina build --network``, ``RUN --network``) is Docker's: ``default`` is the
engine's default bridge network (a namespace of the step's own, NAT to the outside, as
a ``run`` without ``--network`` gets), ``host`` the host's, ``none`` loopback only; the
engine settles it (``settle``) as it does a ``run``'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import posixpath
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.builder._dockerfile import BuildError
from lamina.builder._fileops import overlay_view, remove_scratch, resolve_in, scratch_dir, unmount
from lamina.builder._mounts import MountSpec
from lamina.builder._upload import secret_bytes
from lamina.image._gc import StoreLease

# What the runtime mounts in every container: runc creates these when missing.
_DEFAULT_TARGETS = ("/proc", "/dev", "/sys", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf")

# ------------------------------------------------------------------ stub cleanup


def _lower_stat(lowers: list[Path], rel: str) -> os.stat_result | None:
    for lower in lowers:
        try:
            st = os.lstat(lower / rel)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None  # a whiteout: deleted in that layer
        return st
    return None


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def clean_stubs(upper: Path, lowers: list[Path], targets: list[str]) -> None:
    """Remove from ``upper`` the mountpoints runc created (empty files and dirs that
    the layers below lack) and directories copied up or made only to hold them."""
    parents: set[str] = set()
    for target in targets:
        rel = target.strip("/")
        if not rel:
            continue
        path = upper / rel
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if _lower_stat(lowers, rel) is not None:
            continue
        try:
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                path.unlink()
            elif stat.S_ISDIR(st.st_mode) and not any(os.scandir(path)):
                path.rmdir()
            else:
                continue
        except OSError:
            continue
        parent = posixpath.dirname(rel)
        while parent:
            parents.add(parent)
            parent = posixpath.dirname(parent)
    for rel in sorted(parents, key=lambda p: -p.count("/")):
        path = upper / rel
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or any(os.scandir(path)) or _is_opaque(path):
                continue
        except OSError:
            continue
        below = _lower_stat(lowers, rel)
        same = below is not None and (
            stat.S_IMODE(below.st_mode) == stat.S_IMODE(st.st_mode)
            and below.st_uid == st.st_uid
            and below.st_gid == st.st_gid
            and stat.S_ISDIR(below.st_mode)
        )
        if below is None or same:
            with contextlib.suppress(OSError):
                path.rmdir()


# ------------------------------------------------------------------ running


class RunFailed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Sink(io.RawIOBase):
    """Where the runtime's attach writes the container's output."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._emit(data)
        return len(data)


@dataclass
class RunRequest:
    image_id: str
    lowers: list[Path]  # the stack's snapshot dirs, top first (for stub cleanup)
    argv: list[str]
    env: list[str]
    user: str
    workdir: str
    network: str  # default | none | host
    mounts: list[MountSpec] = field(default_factory=list)
    insecure: bool = False
    extra_binds: list[tuple[str, str]] = field(default_factory=list)  # (host file, target)


@dataclass
class MountSources:
    """How the runner gets at what mounts name: context paths and stage/image views."""

    context_path: Callable[[str], str]
    stack_lowers: Callable[[str], list[Path]]  # from= value -> snapshot dirs, top first
    secrets: dict[str, tuple[str, str]]  # id -> ("file", path) | ("env", value)


class Runner:
    """Runs RUN steps; one container engine per thread (its stores are not shared)."""

    def __init__(
        self,
        root: Path,
        cache_mounts: Path,
        lease: StoreLease,
        containers: Callable[[], Any] | None,
    ) -> None:
        self.root = root
        self.cache_mounts = cache_mounts
        self.lease = lease
        self._containers = containers
        self._local = threading.local()
        self._active: set[str] = set()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def runtime(self) -> Any:
        rt = getattr(self._local, "rt", None)
        if rt is None:
            if self._containers is None:
                raise BuildError("RUN needs containers: no engine was given to this build")
            rt = self._containers()
            self._local.rt = rt
            with self._lock:
                self._opened.append(rt)
        return rt

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for rt in opened:
            close = getattr(rt, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def kill_all(self) -> None:
        """Stop every container this runner started (interrupt, failure elsewhere)."""
        with self._lock:
            active = list(self._active)
        if not active:
            return
        rt = self.runtime()
        for cid in active:
            with contextlib.suppress(Exception):
                rt.kill(cid)

    @contextlib.contextmanager
    def _mounts(
        self, req: RunRequest, sources: MountSources, env: list[str]
    ) -> Iterator[list[Any]]:
        """The container mounts for ``req.mounts``, with whatever they need (views,
        locks, secret files) held until the run is over."""
        from lamina.runtime import Mount

        out: list[Any] = []
        with contextlib.ExitStack() as stack:
            scratch: list[Path] = []  # made on first use: most RUNs need none

            def tmp() -> Path:
                if not scratch:
                    scratch.append(scratch_dir(self.root, self.lease))
                    stack.callback(remove_scratch, scratch[0])
                path = scratch[0] / f"m{len(os.listdir(scratch[0]))}"
                path.mkdir()
                return path

            for m in req.mounts:
                if m.type == "tmpfs":
                    opts = [f"size={m.size}"] if m.size else []
                    out.append(Mount("tmpfs", m.target, options=opts))
                elif m.type == "cache":
                    path = self._cache_dir(m, stack, tmp)
                    out.append(
                        Mount("bind", m.target, source=str(path), read_only=bool(m.readonly))
                    )
                elif m.type == "secret":
                    mount = self._secret(m, sources, env, tmp)
                    if mount is not None:
                        out.append(Mount("bind", m.target, source=str(mount), read_only=True))
                else:
                    source, ro = self._bind(m, sources, stack, tmp)
                    out.append(Mount("bind", m.target, source=str(source), read_only=ro))
            for host, target in req.extra_binds:
                out.append(Mount("bind", target, source=host, read_only=True))
            yield out

    def _cache_dir(
        self, m: MountSpec, stack: contextlib.ExitStack, tmp: Callable[[], Path]
    ) -> Path:
        name = hashlib.sha256(m.id.encode()).hexdigest()[:32]
        path = self.cache_mounts / name
        if not path.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            new = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}")
            self.lease.add_path(new)
            new.mkdir(exist_ok=True)
            os.chmod(new, m.mode if m.mode is not None else 0o755)
            os.chown(new, m.uid or 0, m.gid or 0)
            try:
                os.rename(new, path)
            except OSError:
                shutil.rmtree(new, ignore_errors=True)  # another build made it first
            self.lease.discard(new)
        if m.sharing == "shared":
            return path
        lock = os.open(path.with_name(name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        stack.callback(os.close, lock)
        if m.sharing == "locked":
            fcntl.flock(lock, fcntl.LOCK_EX)
            return path
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return tmp()  # private and in use: this run gets a fresh, empty cache
        return path

    def _secret(
        self, m: MountSpec, sources: MountSources, env: list[str], tmp: Callable[[], Path]
    ) -> Path | None:
        """The file to mount for a secret (None: nothing to mount); ``env=`` secrets
        are added to ``env``."""
        secret = sources.secrets.get(m.id)
        if secret is None:
            if m.required:
                raise BuildError(
                    f"secret {m.id!r} is required but was not given (--secret id={m.id},src=FILE)"
                )
            return None
        data = secret_bytes(m.id, *secret, error=BuildError)
        if m.env is not None:
            env.append(f"{m.env}={data.decode('utf-8', 'replace')}")
        if not m.target:
            return None
        path = tmp() / "secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, m.uid or 0, m.gid or 0)
            os.fchmod(fd, m.mode if m.mode is not None else 0o400)
        finally:
            os.close(fd)
        return path

    def _bind(
        self,
        m: MountSpec,
        sources: MountSources,
        stack: contextlib.ExitStack,
        tmp: Callable[[], Path],
    ) -> tuple[Path, bool]:
        """(host source, read-only) of a bind mount. ``rw`` gets a writable overlay
        (or copy) whose changes are thrown away with the run."""
        writable = m.readonly is False
        if m.from_ is None:
            base = Path(sources.context_path(""))
            host = resolve_in(base, m.source or "/")
            if not os.path.lexists(host):
                raise BuildError(f"bind source {m.source or '.'} not found in the build context")
            if not writable:
                return host, True
            if host.is_dir():
                return stack.enter_context(overlay_view(tmp(), [host], writable=True)), False
            copy = tmp() / host.name
            shutil.copy2(host, copy)
            return copy, False
        lowers = sources.stack_lowers(m.from_)
        view = stack.enter_context(overlay_view(tmp(), lowers, writable=writable))
        host = resolve_in(view, m.source or "/")
        if not os.path.lexists(host):
            raise BuildError(f"bind source {m.source or '/'} not found in {m.from_}")
        return host, not writable

    def run(
        self,
        req: RunRequest,
        sources: MountSources,
        emit: Callable[[bytes], None],
        commit: Callable[[Path | None], Any],
    ) -> Any:
        """Run ``req``; on success call ``commit(upper)`` with the cleaned upper dir
        (or None when the step changed nothing) and return what it returns. Raises
        RunFailed on a non-zero exit."""
        from lamina.runtime import ContainerConfig, Security

        rt = self.runtime()
        env = list(req.env)
        with self._mounts(req, sources, env) as mounts:
            config = ContainerConfig(
                image=req.image_id,
                image_ref="lamina-build",
                entrypoint=[],
                command=list(req.argv),
                env=env,
                working_dir=req.workdir or "/",
                user=req.user or None,
                hostname="buildkitsandbox",
                mounts=mounts,
                security=Security(no_new_privileges=False, privileged=req.insecure),
                labels={"io.lamina.builder": "1"},
                owner=self.lease.id,  # disposable: removed by the engine if the build dies
            )
            # The network as a run's: "default" is the engine's default bridge.
            network = None if req.network == "default" else req.network
            rt.settle(config, rt.images.require(req.image_id), requested="process",
                      network=network)  # fmt: skip
            container = rt.create(config)
            cid = container.id
            with self._lock:
                self._active.add(cid)
            try:
                sink = _Sink(emit)
                rt.attach(cid, stdin=None, stdout=sink, stderr=sink, tty=False, start=True)
                outcome = rt.wait(cid)
                if outcome.exit_code != 0 or outcome.error:
                    raise RunFailed(outcome.exit_code, outcome.error)
                upper = _upper_dir(rt.inspect(cid))
                targets = [*_DEFAULT_TARGETS, *(str(m.target) for m in mounts)]
                clean_stubs(upper, req.lowers, targets)
                return commit(upper if any(os.scandir(upper)) else None)
            finally:
                with self._lock:
                    self._active.discard(cid)
                with contextlib.suppress(Exception):
                    rt.remove(cid, force=True)


def _upper_dir(inspect: dict[str, Any]) -> Path:
    """The exited container's overlay upper dir, from the engine's Docker-style
    inspect; its root filesystem must be unmounted by now (the engine does that
    when it records the exit), as the directory is about to become a snapshot."""
    data = (inspect.get("GraphDriver") or {}).get("Data") or {}
    upper, merged = data.get("UpperDir"), data.get("MergedDir")
    if not upper:
        raise BuildError("the runtime does not expose the container's changes (no UpperDir)")
    if merged and os.path.ismount(str(merged)):
        unmount(Path(str(merged)))
    return Path(str(upper))
