"""The secret store of a root: named values encrypted at rest, for ``$S:name`` in a
spec's env and for service secrets as files.

Layout::

    <root>/secrets/key           32 random bytes (AES-256-GCM), 0600; made once
    <root>/secrets/data/<name>   one secret: header, nonce, ciphertext; 0600

The key is written to a leased temporary file and published with ``link(2)``, which
fails when another process published one first: every process ends up using the one
key that was published, and nobody ever reads a half-written one. A secret is
published the same way (``create`` refuses a name that exists, race-free). Each file
is sealed with AES-GCM whose associated data is the secret's name and creation time:
a file renamed, swapped or edited, or read with another root's key, fails to open
(``SecretUnreadable``) instead of yielding wrong bytes. Values are never logged or
put in a message.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lamina import _leases
from lamina._fsutil import write_all
from lamina._hooks import stop_point
from lamina.errors import AlreadyExists, LaminaError, NotFound

if TYPE_CHECKING:
    from lamina.runtime._types import Mount

MAX_SECRET_SIZE = 64 * 1024
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_MAX_NAME = 128
_MAGIC = b"lamina-secret-v1\n"
_HEADER = struct.Struct(">d")  # creation time (seconds since the epoch)
_NONCE_SIZE = 12
_KEY_SIZE = 32
_TAG_SIZE = 16


class InvalidSecret(LaminaError, ValueError):
    """A secret's name or value is not acceptable."""


class SecretUnreadable(LaminaError):
    """A stored secret does not open with the root's key (damaged, moved, or the key
    was replaced)."""


@dataclass(frozen=True)
class SecretInfo:
    """What ``secret ls`` shows of a secret: never its value."""

    name: str
    created: float
    size: int  # bytes of the plain value


def check_name(name: str) -> str:
    """``name`` if it is a valid secret name, else InvalidSecret."""
    if not _NAME_RE.fullmatch(name) or len(name) > _MAX_NAME:
        raise InvalidSecret(
            f"invalid secret name {name!r}: it must match [a-zA-Z0-9][a-zA-Z0-9_.-]* "
            f"(at most {_MAX_NAME} characters)"
        )
    return name


class SecretStore:
    """The secrets of one lamina root (any number of processes at once)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "secrets"
        self.data_dir = self.dir / "data"
        self._key: bytes | None = None

    # -- the key ------------------------------------------------------------------------
    def _ensure_dirs(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)

    def _read_key(self) -> bytes | None:
        try:
            key = (self.dir / "key").read_bytes()
        except FileNotFoundError:
            return None
        if len(key) != _KEY_SIZE:
            raise SecretUnreadable(f"the secret key {self.dir / 'key'} is damaged")
        return key

    def key(self, *, create: bool) -> bytes | None:
        """The root's key; made (once, whoever races) when ``create``."""
        if self._key is None:
            self._key = self._read_key()
            if self._key is None and create:
                self._ensure_dirs()
                # Whoever loses the race reads the winner's key.
                self._publish(self.dir / "key", os.urandom(_KEY_SIZE))
                self._key = self._read_key()
        return self._key

    def _publish(self, target: Path, data: bytes) -> bool:
        """Write ``data`` as ``target`` if no such file exists, in one step (a leased
        temporary file, linked into place). False when ``target`` existed already."""
        _leases.reap(self.root)  # temporary files of writers killed halfway
        with _leases.take(self.root, "secret") as lease:
            tmp = target.with_name(f".{target.name}.{lease.id}.tmp")
            lease.add_path(tmp)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                stop_point("secret:written")
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    return False
                fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return True
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                lease.discard(tmp)

    # -- secrets ------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.data_dir / check_name(name)

    def create(self, name: str, data: bytes) -> SecretInfo:
        """Store ``data`` as secret ``name``; AlreadyExists when it is taken."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        path = self._path(name)
        if len(data) > MAX_SECRET_SIZE:
            raise InvalidSecret(
                f"secret {name} is too large: {len(data)} bytes (at most {MAX_SECRET_SIZE})"
            )
        if path.exists():
            raise _exists(name)
        key = self.key(create=True)
        assert key is not None
        created = time.time()
        header = _HEADER.pack(created)
        nonce = os.urandom(_NONCE_SIZE)
        sealed = AESGCM(key).encrypt(nonce, data, _aad(name, header))
        if not self._publish(path, _MAGIC + header + nonce + sealed):
            raise _exists(name)
        return SecretInfo(name, created, len(data))

    def get(self, name: str) -> bytes:
        """The plain value of secret ``name``; NotFound, or SecretUnreadable when it does
        not open with this root's key."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        raw = self._raw(name)
        header, nonce, sealed = _split(name, raw)
        key = self.key(create=False)
        if key is None:
            raise SecretUnreadable(f"secret {name} cannot be read: the root's secret key is gone")
        try:
            return AESGCM(key).decrypt(nonce, sealed, _aad(name, header))
        except InvalidTag:
            raise SecretUnreadable(
                f"secret {name} cannot be decrypted with this root's key "
                "(the file or the key was changed)"
            ) from None

    def _raw(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no such secret: {name}") from None

    def info(self, name: str) -> SecretInfo:
        header, _nonce, sealed = _split(name, self._raw(name))
        return SecretInfo(name, _HEADER.unpack(header)[0], len(sealed) - _TAG_SIZE)

    def list(self) -> list[SecretInfo]:
        """Every secret, by name (a file being removed at the same time is skipped)."""
        found = []
        for name in sorted(self.names()):
            with contextlib.suppress(NotFound):
                found.append(self.info(name))
        return found

    def names(self) -> set[str]:
        try:
            entries = os.listdir(self.data_dir)
        except FileNotFoundError:
            return set()
        return {n for n in entries if _NAME_RE.fullmatch(n)}

    def remove(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            raise NotFound(f"no such secret: {name}") from None


def _exists(name: str) -> AlreadyExists:
    return AlreadyExists(f"secret {name} already exists")


def _aad(name: str, header: bytes) -> bytes:
    return _MAGIC + name.encode() + b"\0" + header


def _split(name: str, raw: bytes) -> tuple[bytes, bytes, bytes]:
    start = len(_MAGIC)
    body = start + _HEADER.size + _NONCE_SIZE
    if not raw.startswith(_MAGIC) or len(raw) < body + _TAG_SIZE:
        raise SecretUnreadable(f"secret {name} is damaged (not a lamina secret file)")
    return raw[start : start + _HEADER.size], raw[start + _HEADER.size : body], raw[body:]


# -- service secrets as files ----------------------------------------------------------
#
# A replica's secrets are files on a tmpfs (never the disk), bind-mounted read-only
# into it: ``<RUN_DIR>/<root hash>/<replica>/<n>-<name>``, directories 0700 (nobody
# else on the host gets near them), files 0444 unless the service says otherwise
# (Compose's default: a replica running as a user other than root reads them). The
# tmpfs is lamina's own (mounted at RUN_DIR once, under a lock) unless the directory
# is on one already. A replica's directory is built beside its place,
# leased, and renamed in: a writer killed halfway leaves nothing (``_leases.reap``),
# and a replica never sees half its secrets. The directory lives as long as the
# replica (a restart bind-mounts the files again): ``release`` when it is removed,
# ``release_orphans`` for what a dead daemon left.

RUN_DIR = Path("/run/lamina/secrets")
SECRETS_MOUNT_DIR = "/run/secrets"  # where a relative target goes in the container
_TMPFS_OPTIONS = b"mode=0700,size=64m"
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8


@dataclass(frozen=True)
class SecretFile:
    """A secret of the store as a file in a replica: ``target`` absolute, or relative
    to /run/secrets; ``mode`` as Compose's ``secrets[].mode``."""

    name: str
    target: str
    mode: int = 0o444


def _replica_dir(root: Path, replica: str, base: Path) -> Path:
    import hashlib

    if not _NAME_RE.fullmatch(replica):
        raise InvalidSecret(f"invalid replica name {replica!r}")
    digest = hashlib.sha256(str(Path(root).absolute()).encode()).hexdigest()[:16]
    return base / digest / replica


def _on_tmpfs(path: Path) -> bool:
    """Whether ``path`` is on a tmpfs (the deepest mount holding it)."""
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                point = fields[4]
                kind = fields[fields.index("-") + 1]
                inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, kind
    except (OSError, ValueError, IndexError):
        return False
    return fstype == "tmpfs"


def _ensure_tmpfs(base: Path) -> None:
    """``base`` exists, 0700, on a tmpfs: lamina's own mounted there when needed."""
    import fcntl

    from lamina._mount import last_errno, libc

    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    if _on_tmpfs(base):
        return
    lock = os.open(base.parent / f".{base.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _on_tmpfs(base):  # mounted by whoever held the lock before
            return
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        if libc().mount(b"tmpfs", str(base).encode(), b"tmpfs", flags, _TMPFS_OPTIONS) != 0:
            err = last_errno()
            raise LaminaError(f"cannot mount a tmpfs for secrets at {base}: {os.strerror(err)}")
    finally:
        os.close(lock)


def materialize(
    root: Path,
    replica_name: str,
    refs: list[SecretFile] | list[tuple[str, str]],
    *,
    base: Path = RUN_DIR,
) -> list[Mount]:
    """The store's secrets ``refs`` written for replica ``replica_name`` (replacing
    what it had), as read-only bind mounts for its config. NotFound for a secret
    that does not exist (nothing is written then)."""
    from lamina.runtime._types import Mount

    files = [r if isinstance(r, SecretFile) else SecretFile(*r) for r in refs]
    store = SecretStore(root)
    values = [store.get(f.name) for f in files]  # every one readable before any is written
    final = _replica_dir(root, replica_name, base)
    _ensure_tmpfs(base)
    final.parent.mkdir(mode=0o700, exist_ok=True)
    _leases.reap(root)
    with _leases.take(root, "secret-files") as lease:
        tmp = final.parent / f".{replica_name}.{lease.id}"
        old = final.parent / f".{replica_name}.{lease.id}.old"
        lease.add_path(tmp)
        lease.add_path(old)
        tmp.mkdir(mode=0o700)
        mounts = []
        for i, (f, value) in enumerate(zip(files, values, strict=True)):
            host_name = f"{i}-{f.name}"
            fd = os.open(
                tmp / host_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, f.mode
            )
            try:
                os.fchmod(fd, f.mode)
                write_all(fd, value)
            finally:
                os.close(fd)
            target = f.target if f.target.startswith("/") else f"{SECRETS_MOUNT_DIR}/{f.target}"
            mounts.append(Mount(type="bind", source=str(final / host_name), target=target,
                                read_only=True))  # fmt: skip
        stop_point("secret-files:written")
        with contextlib.suppress(FileNotFoundError):
            final.rename(old)  # the replica's earlier files: replaced as a whole
        tmp.rename(final)
        lease.discard(tmp)
        _remove_tree(old)
        lease.discard(old)
    return mounts


def release(root: Path, replica_name: str, *, base: Path = RUN_DIR) -> None:
    """Remove the secret files of a replica that is gone."""
    _remove_tree(_replica_dir(root, replica_name, base))


def release_orphans(root: Path, live_replicas: set[str], *, base: Path = RUN_DIR) -> list[str]:
    """Remove the secret files of every replica of ``root`` not in ``live_replicas``
    (the daemon at its start: a dead one's replicas may have been removed since).
    Returns the replicas cleaned."""
    parent = _replica_dir(root, "x", base).parent
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    gone = sorted(n for n in names if not n.startswith(".") and n not in live_replicas)
    for name in gone:
        _remove_tree(parent / name)
    return gone


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
