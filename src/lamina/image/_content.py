"""The content store: blobs addressed by their sha256 digest.

Lifecycle of a blob, as in containerd's content store:

1. ``ContentStore.writer(ref, expected=...)`` opens an *ingest*: a partial file under
   ``ingest/<hash of ref>/data`` (its ``ref`` beside it). Bytes written to it are hashed
   as they arrive. The ingest is keyed by ``ref`` so that an interrupted download can be
   resumed by a later writer for the same ref (``writer.offset`` says how much is there
   already). The writer holds an exclusive ``flock`` on ``data`` for as long as it is
   open: a second writer of the same ref waits instead of appending to the same file,
   and an ingest whose lock is free is *abandoned* (its writer closed or died).
2. ``BlobWriter.commit()`` fsyncs the data, checks its size and digest against what
   was expected, and only then renames it to ``blobs/sha256/<hex>``. A blob whose
   digest does not match is deleted and never becomes visible.
3. Readers (``open``, ``read``, ``path``, ``info``) see only committed blobs.
4. ``delete`` removes a blob; deciding *which* blobs may be deleted is the job of
   the image plane's garbage collector (``_gc``), which knows what references them.
5. ``clean_ingests`` removes abandoned ingests: at once for refs nobody resumes (every
   writer but a pull's ``pull-<digest>``), after ``resumable_for`` seconds for those.

Three narrow views of the one store: ``BlobReader`` (read by digest), ``BlobIngester``
(write), ``BlobManager`` (list, delete). Callers take the narrowest one they need.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from lamina._fsutil import fsync_dir, naming
from lamina.errors import DigestMismatch, InvalidDigest, NotFound
from lamina.image._digest import validate_digest

# How long an abandoned download is kept for a retried pull to resume it.
RESUMABLE_SECONDS = 24 * 3600
# Ingests of these refs are worth resuming; any other abandoned ingest is garbage.
_RESUMABLE_PREFIX = "pull-"


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int


class BlobReader(Protocol):
    def exists(self, digest: str) -> bool: ...
    def info(self, digest: str) -> BlobInfo: ...
    def open(self, digest: str) -> BinaryIO: ...
    def read(self, digest: str) -> bytes: ...
    def path(self, digest: str) -> Path: ...


class BlobIngester(Protocol):
    def writer(
        self, ref: str, expected: str | None = None, size: int | None = None
    ) -> BlobWriter: ...
    def add(self, data: bytes, expected: str | None = None) -> str: ...


class BlobManager(Protocol):
    def list(self) -> Iterator[BlobInfo]: ...
    def delete(self, digest: str) -> None: ...


class BlobWriter:
    """An open ingest. Use as a context manager: leaving without commit() keeps the
    partial data for a later resume unless ``abort()`` was called."""

    def __init__(
        self, store: ContentStore, ref: str, expected: str | None, size: int | None
    ) -> None:
        self._store = store
        self.ref = ref
        self.expected = validate_digest(expected) if expected else None
        self.expected_size = size
        key = hashlib.sha256(ref.encode()).hexdigest()
        self._dir = store.root / "ingest" / key
        self._data_path = self._dir / "data"
        self._hash = hashlib.sha256()
        fd = _open_locked(self._dir, ref)
        self._file: BinaryIO = open(fd, "ab")  # noqa: SIM115 - closed in close()
        self.offset = 0
        existing = os.fstat(fd).st_size
        if existing:
            # Resume: re-hash what an earlier attempt left (hash state is not persistable).
            with open(self._data_path, "rb") as f:
                while chunk := f.read(1 << 20):
                    self._hash.update(chunk)
            self.offset = existing
        self._closed = False

    def write(self, data: bytes | memoryview) -> int:
        self._hash.update(data)
        with naming(self._data_path):
            self._file.write(data)
        self.offset += len(data)
        return len(data)

    @property
    def path(self) -> Path:
        """The partial data file, for a reader that follows a download as it lands."""
        return self._data_path

    def flush(self) -> None:
        """Push written bytes to the file so that a follower sees them."""
        with naming(self._data_path):
            self._file.flush()

    def sync(self) -> None:
        """flush() and fsync: the ingest survives a crash (for resume)."""
        with naming(self._data_path):
            self._file.flush()
            os.fsync(self._file.fileno())

    def truncate(self) -> None:
        """Throw away what was written so far (a server that ignored a Range request)."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self.offset = 0

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def commit(self) -> str:
        """Verify and publish the blob; returns its digest. On mismatch the ingest is
        discarded and DigestMismatch raised."""
        with naming(self._data_path):
            self._file.flush()
            os.fsync(self._file.fileno())
        actual = self.digest()
        if self.expected_size is not None and self.offset != self.expected_size:
            self.abort()
            raise DigestMismatch(
                f"blob {self.expected or actual}: size {self.offset} does not match "
                f"expected {self.expected_size}"
            )
        if self.expected is not None and actual != self.expected:
            self.abort()
            raise DigestMismatch(f"blob digest mismatch: expected {self.expected}, got {actual}")
        final = self._store._blob_path(actual)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._data_path, final)
        fsync_dir(final.parent)
        shutil.rmtree(self._dir, ignore_errors=True)
        self.close()  # the lock goes with the file, after the ingest
        return actual

    def abort(self) -> None:
        """Throw the ingest away (removed while still locked: no one resumes it)."""
        shutil.rmtree(self._dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # buffered bytes a full disk refuses
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with naming(self._data_path):
                self._file.close()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _aborting(writer: BlobWriter) -> Iterator[None]:
    """Abort ``writer`` if the block fails: data that is not a download has no resume
    (a full disk must not leave a partial ingest behind)."""
    try:
        yield
    except BaseException:
        writer.abort()
        raise


def _open_locked(ingest_dir: Path, ref: str) -> int:
    """The ingest's ``data`` file, opened for appending and exclusively flocked. Waits
    while another writer holds it. A sweeper removes an abandoned ingest while holding
    its lock, so the file locked here may have been unlinked meanwhile: then start over."""
    data_path = ingest_dir / "data"
    while True:
        ingest_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # the directory went between mkdir and open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not os.path.samestat(os.fstat(fd), os.stat(data_path)):
                os.close(fd)
                continue
            if os.fstat(fd).st_size == 0:
                # Written once the lock is held: an unlocked ingest's ref says whether
                # it is worth keeping for a resume (see clean_ingests).
                (ingest_dir / "ref").write_text(ref)
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        return fd


class ContentStore:
    """All three views (reader, ingester, manager) over ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "ingest").mkdir(parents=True, exist_ok=True)

    def _blob_path(self, digest: str) -> Path:
        algo, _, hexpart = validate_digest(digest).partition(":")
        if algo != "sha256":
            raise InvalidDigest(f"unsupported digest algorithm {algo!r} in content store")
        return self.root / "blobs" / "sha256" / hexpart

    # -- reader
    def exists(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def path(self, digest: str) -> Path:
        p = self._blob_path(digest)
        if not p.is_file():
            raise NotFound(f"blob {digest} not found in content store")
        return p

    def info(self, digest: str) -> BlobInfo:
        return BlobInfo(digest, self.path(digest).stat().st_size)

    def open(self, digest: str) -> BinaryIO:
        return open(self.path(digest), "rb")

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    # -- ingester
    def writer(self, ref: str, expected: str | None = None, size: int | None = None) -> BlobWriter:
        return BlobWriter(self, ref, expected, size)

    def add(self, data: bytes, expected: str | None = None) -> str:
        """Ingest a small blob held in memory."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected is not None and validate_digest(expected) != digest:
            raise DigestMismatch(f"blob digest mismatch: expected {expected}, got {digest}")
        if self.exists(digest):
            return digest
        with self.writer(_private_ref("add"), digest, len(data)) as w, _aborting(w):
            w.write(data)
            return w.commit()

    def add_file(self, src: Path, expected: str | None = None) -> str:
        """Ingest a file by streaming it (used by load and import)."""
        with (
            open(src, "rb") as f,
            self.writer(_private_ref("file"), expected) as w,
            _aborting(w),
        ):
            while chunk := f.read(1 << 20):
                w.write(chunk)
            return w.commit()

    # -- manager
    def list(self) -> Iterator[BlobInfo]:
        d = self.root / "blobs" / "sha256"
        for entry in os.scandir(d):
            if entry.is_file():
                yield BlobInfo("sha256:" + entry.name, entry.stat().st_size)

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._blob_path(digest).unlink()

    def clean_ingests(self, resumable_for: float = RESUMABLE_SECONDS) -> int:
        """Remove abandoned ingests (no writer holds their lock); returns how many. A
        pull's partial download is kept ``resumable_for`` seconds after its last write
        for a retried pull to resume; anything else nobody resumes goes at once."""
        removed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.root / "ingest"))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if _remove_abandoned(Path(entry.path), now - resumable_for):
                removed += 1
        return removed


def _private_ref(kind: str) -> str:
    """An ingest ref no other writer uses (nothing resumes it)."""
    return f"{kind}-{os.getpid()}-{secrets.token_hex(8)}"


def _remove_abandoned(ingest_dir: Path, resumable_since: float) -> bool:
    """Remove ``ingest_dir`` when no writer holds it, unless it is a pull's download
    last written after ``resumable_since``. True when it went."""
    try:
        fd = os.open(ingest_dir / "data", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        # No data: being created this instant (its writer starts over when the
        # directory vanishes under it) or left empty by a crash.
        shutil.rmtree(ingest_dir, ignore_errors=True)
        return True
    except NotADirectoryError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a writer has it
        st = os.fstat(fd)
        try:
            if not os.path.samestat(st, os.stat(ingest_dir / "data")):
                return False  # committed or removed, and made again, meanwhile
        except FileNotFoundError:
            return False  # committed or removed meanwhile
        try:
            ref = (ingest_dir / "ref").read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            ref = ""
        if ref.startswith(_RESUMABLE_PREFIX) and st.st_mtime > resumable_since:
            return False
        shutil.rmtree(ingest_dir, ignore_errors=True)
        return True
    finally:
        os.close(fd)
