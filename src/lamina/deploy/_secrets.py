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

from lamina import _leases
from lamina._hooks import stop_point
from lamina.errors import AlreadyExists, LaminaError, NotFound

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
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
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
