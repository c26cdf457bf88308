"""Layer archives: decompress, apply (unpack) and write (create) OCI/Docker layer tarballs.

Contract:
- `open_decompressed` turns a compressed blob stream into the uncompressed tar stream; it never
  closes the caller's stream, and decompression errors surface as `InvalidLayer`.
- `apply_layer` reads an uncompressed tar stream once, front to back, and materialises it under
  `target`, returning the diff_id (sha256 of every uncompressed byte, including what follows the
  end-of-archive marker). It is not atomic: on error `target` is left partly written, so callers
  that need all-or-nothing (the snapshot store) unpack into a scratch directory. Whatever the
  archive says, nothing outside `target` is ever created, modified, chowned or chmodded: entry
  names may not climb above the root, symlinks met in parent components are resolved as if
  `target` were "/" (clamped to it), and a symlink in the final component is replaced, never
  followed. The guarantee assumes no other process rewrites `target` while a layer is applied.
- `write_layer` walks a directory and writes a deterministic layer (sorted, numeric owners, PAX,
  optional mtime clamp), returning the digests of the compressed and uncompressed bytes.
"""

from __future__ import annotations

import enum
import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, cast

import zstandard
from isal import igzip_threaded, isal_zlib

from lamina.errors import InvalidLayer, NotFound

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

_CHUNK = 1 << 20  # file data copy size
_TAR_BUFSIZE = 64 * 1024  # tarfile's read-ahead from the decompressor
_GZIP_LEVEL = 1  # isal levels are 0..3; 1 is the best speed/size trade-off for layers
_ZSTD_LEVEL = 3
_MAX_SYMLINKS = 40  # same bound as the kernel's path walk
_NS = 1_000_000_000

_WH_PREFIX = ".wh."
_WH_META_PREFIX = ".wh..wh."
_WH_OPAQUE = ".wh..wh..opq"
_OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_PAX_XATTR = "SCHILY.xattr."
# Overlayfs interprets these on lower/upper dirs (redirects, metacopy, opacity): a layer must
# never be able to plant them, and an upper dir's own copies must not leak into a layer.
_DROPPED_XATTRS = ("trusted.overlay.", "user.overlay.")
# Errors caused by what the archive asks for (as opposed to the host failing, e.g. ENOSPC).
_LAYER_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ELOOP,
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.ENOTEMPTY,
        errno.EMLINK,
        errno.E2BIG,
        errno.ERANGE,
    }
)


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_MEDIA_TYPE_COMPRESSION = {
    MEDIA_TYPE_OCI_LAYER: Compression.NONE,
    MEDIA_TYPE_OCI_LAYER_GZIP: Compression.GZIP,
    MEDIA_TYPE_OCI_LAYER_ZSTD: Compression.ZSTD,
    MEDIA_TYPE_OCI_LAYER_NONDIST: Compression.NONE,
    MEDIA_TYPE_OCI_LAYER_NONDIST_GZIP: Compression.GZIP,
    MEDIA_TYPE_OCI_LAYER_NONDIST_ZSTD: Compression.ZSTD,
    MEDIA_TYPE_DOCKER_LAYER: Compression.NONE,
    MEDIA_TYPE_DOCKER_LAYER_GZIP: Compression.GZIP,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: Compression.GZIP,
}

_OCI_MEDIA_TYPE = {
    Compression.NONE: MEDIA_TYPE_OCI_LAYER,
    Compression.GZIP: MEDIA_TYPE_OCI_LAYER_GZIP,
    Compression.ZSTD: MEDIA_TYPE_OCI_LAYER_ZSTD,
}


def detect_compression(head: bytes) -> Compression:
    """Identify the compression of a blob from its first bytes (4 are enough)."""
    if head.startswith(b"\x1f\x8b"):
        return Compression.GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return Compression.ZSTD
    return Compression.NONE


def compression_for_media_type(mt: str) -> Compression | None:
    """The compression a layer media type announces, or None if it is not a known layer type."""
    return _MEDIA_TYPE_COMPRESSION.get(mt)


def media_type_for(compression: Compression) -> str:
    """The OCI layer media type for a compression."""
    return _OCI_MEDIA_TYPE[compression]


# --------------------------------------------------------------------------- decompression


class _Reader(io.RawIOBase):
    """A raw reader defined by its ``read``: ``readinto`` (what buffered readers and
    ``shutil`` call) goes through it."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class PrefixedReader(_Reader):
    """Replays the bytes consumed to sniff the magic, then the rest of the stream."""

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self._head = head
        self._raw = raw

    def read(self, size: int = -1, /) -> bytes:
        head = self._head
        if not head:
            return self._raw.read(size)
        if size < 0:
            self._head = b""
            return head + self._raw.read()
        self._head = head[size:]
        return head[:size]


class _Decompressed(_Reader):
    """A decompressing reader whose codec errors become InvalidLayer; close() spares the source."""

    def __init__(
        self,
        inner: IO[bytes],
        kind: str,
        errors: tuple[type[BaseException], ...],
        frames: _ZstdFrames | None = None,
    ) -> None:
        self._inner = inner
        self._kind = kind
        self._errors = errors
        self._frames = frames

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self._inner.read(size)
        except self._errors as e:
            raise InvalidLayer(f"{self._kind} layer data is corrupt: {e}") from e
        if not data and size and self._frames is not None and not self._frames.complete:
            raise InvalidLayer(f"{self._kind} layer data is truncated")
        return data

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        # Straight into the caller's buffer: one copy fewer than read() for every byte.
        try:
            n = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        except self._errors as e:
            raise InvalidLayer(f"{self._kind} layer data is corrupt: {e}") from e
        frames = self._frames
        if not n and memoryview(buffer).nbytes and frames is not None and not frames.complete:
            raise InvalidLayer(f"{self._kind} layer data is truncated")
        return int(n or 0)

    def close(self) -> None:
        if not self.closed:
            try:
                self._inner.close()
            finally:
                super().close()


_ZSTD_FRAME_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE_MASK = 0xFFFFFFF0
_ZSTD_SKIPPABLE_MAGIC = 0x184D2A50


class _ZstdFrames(_Reader):
    """Passes compressed bytes through while following the zstd frame structure (headers and
    block headers only; contents are skipped), because zstandard's stream reader takes a
    stream cut mid-frame for a complete one. `complete` tells whether the bytes seen so far
    end on a frame boundary."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._skip = 0  # bytes to pass before the next header field
        self._need = 4  # size of the header field being collected
        self._field = bytearray()
        self._state = "magic"
        self._checksum = False
        self._lost = False  # not a zstd stream: leave the error to the decompressor

    @property
    def complete(self) -> bool:
        return self._lost or (self._state == "magic" and not self._field and not self._skip)

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        if data and not self._lost:
            self._track(data)
        return data

    def _track(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                i += take
                self._skip -= take
                continue
            take = min(self._need - len(self._field), n - i)
            self._field += data[i : i + take]
            i += take
            if len(self._field) == self._need:
                field = bytes(self._field)
                self._field.clear()
                self._advance(field)
                if self._lost:
                    return

    def _advance(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            if magic == _ZSTD_FRAME_MAGIC:
                self._state, self._need = "fhd", 1
            elif magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_MAGIC:
                self._state, self._need = "skippable", 4
            else:
                self._lost = True
        elif state == "skippable":
            self._skip = int.from_bytes(field, "little")
            self._state, self._need = "magic", 4
        elif state == "fhd":
            fhd = field[0]
            single_segment = (fhd >> 5) & 1
            self._checksum = bool((fhd >> 2) & 1)
            fcs = (single_segment, 2, 4, 8)[fhd >> 6]
            self._skip = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
            self._state, self._need = "block", 3
        elif state == "block":
            header = int.from_bytes(field, "little")
            kind, size = (header >> 1) & 3, header >> 3
            self._skip = 1 if kind == 1 else size  # an RLE block stores one byte
            if header & 1:  # last block of the frame
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4


def _read_head(fileobj: IO[bytes], n: int) -> bytes:
    head = b""
    while len(head) < n:
        data = fileobj.read(n - len(head))
        if not data:
            break
        head += data
    return head


def open_decompressed(fileobj: BinaryIO, compression: Compression | None = None) -> BinaryIO:
    """Wrap a (possibly) compressed layer stream into its uncompressed byte stream.

    `compression=None` sniffs the magic bytes. Closing the result stops any decompression
    thread but leaves `fileobj` open: the caller owns it.
    """
    head = b""
    if compression is None:
        head = _read_head(fileobj, 4)
        compression = detect_compression(head)
    # Always wrapped, so closing the result never closes the caller's stream.
    src = cast(IO[bytes], PrefixedReader(head, fileobj))
    if compression is Compression.GZIP:
        # The threaded reader inflates in a background thread (isal releases the GIL), so
        # decompression overlaps with hashing and file writes in the caller's thread.
        inner = cast(IO[bytes], igzip_threaded.open(src, "rb", threads=1))  # type: ignore[no-untyped-call]
        errors = (gzip.BadGzipFile, EOFError, cast(type[Exception], isal_zlib.error))
        return cast(BinaryIO, _Decompressed(inner, "gzip", errors))
    if compression is Compression.ZSTD:
        frames = _ZstdFrames(src)
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], frames), read_size=_CHUNK, read_across_frames=True, closefd=False
        )
        return cast(BinaryIO, _Decompressed(reader, "zstd", (zstandard.ZstdError,), frames))
    return cast(BinaryIO, src)


# --------------------------------------------------------------------------- hashing streams


class _HashingReader(_Reader):
    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size)
        self._sha.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        readinto = getattr(self._raw, "readinto", None)
        if readinto is None:
            return super().readinto(view)
        n = int(readinto(view) or 0)
        self._sha.update(view[:n])
        self.size += n
        return n

    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


class _ForwardReader(io.RawIOBase):
    """A stream that tarfile may treat as seekable: seeking forward reads and discards,
    seeking back is an error. tarfile then reads headers and file data straight from
    a plain buffered reader instead of through its stream mode, which joins and slices
    every byte a few times over."""

    def __init__(self, raw: _HashingReader) -> None:
        self._raw = raw
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        n = self._raw.readinto(buffer)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence != os.SEEK_SET:
            raise tarfile.ReadError("layer stream cannot seek from its end")
        if offset < self._pos:
            raise tarfile.ReadError("layer stream cannot seek backwards")
        while self._pos < offset:
            # At the end of the stream the position stays short: the next read finds nothing.
            skipped = len(self._raw.read(min(_CHUNK, offset - self._pos)))
            if not skipped:
                break
            self._pos += skipped
        return self._pos


class _HashingWriter(io.RawIOBase):
    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: ReadableBuffer, /) -> int:
        view = memoryview(b).cast("B")
        self._sha.update(view)
        n = len(view)
        self.size += n
        while view:
            written = self._raw.write(view)
            # A raw (unbuffered) sink may take less than asked for.
            view = view[written if written is not None else len(view) :]
        return n

    def flush(self) -> None:
        self._raw.flush()

    def tell(self) -> int:
        return self.size

    def digest(self) -> str:
        return "sha256:" + self._sha.hexdigest()


# --------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class LayerResult:
    """What apply_layer read: diff_id and size cover every uncompressed byte of the stream."""

    diff_id: str
    size: int
    entries: int


def normalise_parts(name: str) -> list[str] | None:
    """The components of archive path ``name`` lexically normalised (``.`` and empty
    ones dropped, so a leading '/' goes as tar drops it; ``..`` taking one back);
    None when a ``..`` would climb above the root."""
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(comp)
    return parts


def _split(name: str, entry: str) -> list[str]:
    """Lexically normalise an archive path; a leading '/' is dropped as tar does."""
    if "\x00" in name:
        raise InvalidLayer(f"layer entry {entry!r}: path contains a NUL byte")
    parts = normalise_parts(name)
    if parts is None:
        raise InvalidLayer(f"layer entry {entry!r}: path escapes the layer root")
    return parts


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    raw = ti.pax_headers.get("mtime")
    if raw is not None:
        try:
            return int(Decimal(raw) * _NS)
        except ArithmeticError:
            pass
    return int(ti.mtime) * _NS


def _set_times(target: int | str, mtime_ns: int, *, nofollow: bool) -> None:
    try:
        if isinstance(target, int):
            os.utime(target, ns=(mtime_ns, mtime_ns))
        else:
            os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=not nofollow)
    except OverflowError:
        pass  # a timestamp the host cannot represent is not worth failing the layer
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise


def _write_all(fd: int, data: bytes) -> None:
    n = os.write(fd, data)
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        view = view[os.write(fd, view) :]


class _Applier:
    """State of one apply_layer run. All paths it keeps are `rel`: relative to root, resolved
    (no symlink among their components), "" being the root itself."""

    def __init__(self, target: Path, overlay: bool, tf: tarfile.TarFile, owners: bool) -> None:
        self.root = os.path.realpath(target)
        self.overlay = overlay
        self.tf = tf
        self.is_root = os.geteuid() == 0
        self.chown = self.is_root and owners  # else entries belong to this process
        # Real directories known to exist; all their ancestors are in it too.
        self.dirs: set[str] = {""}
        # Paths this layer created, plus their ancestors (whiteouts must spare them).
        self.added: set[str] = set()
        # Whiteout devices made by this layer (overlay mode).
        self.whiteouts: set[str] = set()
        # Directory mode and mtime, applied once their contents are in place.
        self.dir_meta: dict[str, tuple[int, int]] = {}
        # Hardlinks whose target comes later in the archive: normalised name -> entry.
        self.pending_links: dict[str, tarfile.TarInfo] = {}

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _mark(self, rel: str) -> None:
        added = self.added
        while rel and rel not in added:
            added.add(rel)
            rel = rel.rpartition("/")[0]

    def _forget(self, rel: str) -> None:
        """Drop cached knowledge about rel and everything under it (it was just removed)."""
        self.whiteouts.discard(rel)
        if rel not in self.dirs:
            return
        prefix = rel + "/"

        def gone(p: str) -> bool:
            return p == rel or p.startswith(prefix)

        self.dirs = {d for d in self.dirs if not gone(d)}
        self.dir_meta = {d: m for d, m in self.dir_meta.items() if not gone(d)}
        self.whiteouts = {w for w in self.whiteouts if not gone(w)}

    def _clear(self, rel: str, *, keep_dir: bool = False) -> bool:
        """Remove whatever is at rel (a final symlink itself, never its target).

        Returns True when rel is a directory kept because keep_dir was asked.
        """
        path = self._abs(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(path)
        else:
            os.unlink(path)
        self._forget(rel)
        return False

    def _resolve(self, parts: list[str], entry: str, *, create: bool) -> str | None:
        """Resolve a directory path inside the root, following symlinks clamped to the root.

        Missing directories are created (0755, as tar does) when `create`, else None is
        returned; None is also returned for a non-directory component unless `create`, in
        which case one from a lower layer is replaced by a directory (what overlayfs shows).
        """
        key = "/".join(parts)
        dirs = self.dirs
        if key in dirs:
            return key
        cur: list[str] = []
        todo = parts[::-1]
        links = 0
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if cur:  # ".." at the root stays at the root
                    cur.pop()
                continue
            cur.append(comp)
            rel = "/".join(cur)
            if rel in dirs:
                continue
            path = self._abs(rel)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return None
                self._mkdir_implicit(rel)
                continue
            if stat.S_ISDIR(st.st_mode):
                dirs.add(rel)
                continue
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > _MAX_SYMLINKS:
                    raise InvalidLayer(f"layer entry {entry!r}: too many levels of symbolic links")
                link = os.readlink(path)
                cur.pop()
                if link.startswith("/"):
                    cur.clear()
                todo.extend(reversed(link.split("/")))
                continue
            if not create:
                return None
            if rel in self.added:
                raise InvalidLayer(f"layer entry {entry!r}: {rel!r} is not a directory")
            os.unlink(path)
            self._forget(rel)
            self._mkdir_implicit(rel)
        return "/".join(cur)

    def _mkdir_implicit(self, rel: str) -> None:
        path = self._abs(rel)
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # independent of the umask
        self.dirs.add(rel)
        self._mark(rel)

    # -- entries

    def entry(self, ti: tarfile.TarInfo) -> None:
        name = ti.name
        parts = _split(name, name)
        if not parts:
            return  # the root itself: its metadata belongs to whoever mounts it (as containerd)
        if self.pending_links:
            self.pending_links.pop("/".join(parts), None)  # a later entry wins
        base = parts[-1]
        if base.startswith(_WH_PREFIX):
            self._whiteout(name, parts)
            return
        parent = self._resolve(parts[:-1], name, create=True)
        assert parent is not None
        rel = _join(parent, base)
        if ti.isreg():
            self._file(ti, rel)
        elif ti.isdir():
            self._dir(ti, rel)
        elif ti.issym():
            self._symlink(ti, rel)
        elif ti.islnk():
            self._hardlink(ti, rel, parts)
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            self._special(ti, rel)
        else:
            raise InvalidLayer(f"layer entry {name!r}: unsupported entry type {ti.type!r}")

    def _file(self, ti: tarfile.TarInfo, rel: str) -> None:
        path = self._abs(rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            self._clear(rel)
            fd = os.open(path, flags, 0o600)
        try:
            if ti.size:
                self._copy_data(ti, fd)
            # Order matters: chown clears setuid bits and file capabilities.
            if self.chown:
                os.fchown(fd, ti.uid, ti.gid)
            os.fchmod(fd, ti.mode & 0o7777)
            self._xattrs(ti, fd, symlink=False)
            _set_times(fd, _mtime_ns(ti), nofollow=True)
        finally:
            os.close(fd)
        self._mark(rel)

    def _copy_data(self, ti: tarfile.TarInfo, fd: int) -> None:
        src: IO[bytes] | None
        if ti.sparse is None:
            # The data follows the header: read it from the archive stream itself rather than
            # through extractfile's reader, which copies every byte once more.
            src = cast(IO[bytes], self.tf.fileobj)
            src.seek(ti.offset_data)
        else:
            src = self.tf.extractfile(ti)
        assert src is not None
        remaining = ti.size
        while remaining > 0:
            chunk = src.read(min(_CHUNK, remaining))
            if not chunk:
                raise InvalidLayer(f"layer entry {ti.name!r}: archive ends inside the file data")
            _write_all(fd, chunk)
            remaining -= len(chunk)

    def _dir(self, ti: tarfile.TarInfo, rel: str) -> None:
        path = self._abs(rel)
        # Whiteout then directory in one layer: the directory must hide the lower one.
        opaque = rel in self.whiteouts
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not self._clear(rel, keep_dir=True):
                os.mkdir(path, 0o700)
        self.dirs.add(rel)
        self._mark(rel)
        if opaque:
            self._set_opaque(rel)
        if self.chown:
            os.chown(path, ti.uid, ti.gid, follow_symlinks=False)
        self._xattrs(ti, path, symlink=False)
        self.dir_meta[rel] = (ti.mode & 0o7777, _mtime_ns(ti))

    def _symlink(self, ti: tarfile.TarInfo, rel: str) -> None:
        target = ti.linkname
        if not target or "\x00" in target:
            raise InvalidLayer(f"layer entry {ti.name!r}: invalid symlink target {target!r}")
        path = self._abs(rel)
        try:
            os.symlink(target, path)
        except FileExistsError:
            self._clear(rel)
            os.symlink(target, path)
        if self.chown:
            os.chown(path, ti.uid, ti.gid, follow_symlinks=False)
        self._xattrs(ti, path, symlink=True)
        _set_times(path, _mtime_ns(ti), nofollow=True)
        self._mark(rel)

    def _link_source(self, ti: tarfile.TarInfo) -> str | None:
        """Absolute path of an existing hardlink target inside the root, None if not there yet."""
        tparts = _split(ti.linkname, ti.name)
        if not tparts:
            raise InvalidLayer(f"layer entry {ti.name!r}: hardlink to the layer root")
        parent = self._resolve(tparts[:-1], ti.name, create=False)
        if parent is None:
            return None
        src = self._abs(_join(parent, tparts[-1]))
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            raise InvalidLayer(
                f"layer entry {ti.name!r}: hardlink target {ti.linkname!r} is a directory"
            )
        return src

    def _hardlink(self, ti: tarfile.TarInfo, rel: str, parts: list[str]) -> None:
        src = self._link_source(ti)
        if src is None:
            self.pending_links["/".join(parts)] = ti
            return
        self._link(src, rel)

    def _link(self, src: str, rel: str) -> None:
        path = self._abs(rel)
        if src != path:
            # linkat without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
            try:
                os.link(src, path, follow_symlinks=False)
            except FileExistsError:
                self._clear(rel)
                os.link(src, path, follow_symlinks=False)
        self._mark(rel)

    def _special(self, ti: tarfile.TarInfo, rel: str) -> None:
        path = self._abs(rel)
        if ti.isfifo():
            kind = stat.S_IFIFO
        elif not self.is_root:
            return  # device nodes need CAP_MKNOD; rootless unpacking skips them (as containerd)
        else:
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
        dev = os.makedev(ti.devmajor, ti.devminor) if kind != stat.S_IFIFO else 0
        try:
            os.mknod(path, kind | 0o600, dev)
        except FileExistsError:
            self._clear(rel)
            os.mknod(path, kind | 0o600, dev)
        if self.chown:
            os.chown(path, ti.uid, ti.gid, follow_symlinks=False)
        os.chmod(path, ti.mode & 0o7777)  # final component is the node just made
        self._xattrs(ti, path, symlink=False)
        _set_times(path, _mtime_ns(ti), nofollow=True)
        self._mark(rel)

    def _xattrs(self, ti: tarfile.TarInfo, target: int | str, *, symlink: bool) -> None:
        headers = ti.pax_headers
        if not headers:
            return
        for key, value in headers.items():
            if not key.startswith(_PAX_XATTR):
                continue
            attr = key[len(_PAX_XATTR) :]
            if not attr or attr.startswith(_DROPPED_XATTRS):
                continue
            data = value.encode("utf-8", "surrogateescape")
            try:
                if isinstance(target, int):
                    os.setxattr(target, attr, data)
                else:
                    os.setxattr(target, attr, data, follow_symlinks=False)
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    continue  # the filesystem cannot hold it (e.g. tmpfs and user.*)
                if e.errno == errno.EPERM and (symlink or not self.is_root):
                    continue  # user.* on symlinks, trusted.* without CAP_SYS_ADMIN
                raise

    # -- whiteouts

    def _whiteout(self, name: str, parts: list[str]) -> None:
        base = parts[-1]
        if base == _WH_OPAQUE:
            self._opaque(name, parts[:-1])
            return
        if base.startswith(_WH_META_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk etc.) means nothing here
        victim = base[len(_WH_PREFIX) :]
        if victim in ("", ".", ".."):
            raise InvalidLayer(f"layer entry {name!r}: invalid whiteout name")
        parent = self._resolve(parts[:-1], name, create=self.overlay)
        if parent is None:
            return  # nothing there to hide
        rel = _join(parent, victim)
        if rel in self.added:
            # Whiteouts only hide lower layers: keep this layer's own entry, but a directory
            # must then hide what the lower layers have under it.
            if rel in self.dirs:
                self._hide_lower_contents(rel)
            return
        self._clear(rel)
        if self.overlay:
            os.mknod(self._abs(rel), stat.S_IFCHR, 0)  # overlayfs whiteout: char device 0:0
            self.whiteouts.add(rel)

    def _opaque(self, name: str, dparts: list[str]) -> None:
        drel = self._resolve(dparts, name, create=self.overlay)
        if drel is not None:
            self._hide_lower_contents(drel)

    def _hide_lower_contents(self, drel: str) -> None:
        if self.overlay:
            self._set_opaque(drel)
        else:
            self._prune(drel)

    def _set_opaque(self, rel: str) -> None:
        os.setxattr(self._abs(rel), _OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)

    def _prune(self, drel: str) -> None:
        """Empty a directory of what lower layers put there, keeping this layer's entries."""
        with os.scandir(self._abs(drel)) as it:
            names = [e.name for e in it]
        for n in names:
            crel = _join(drel, n)
            if crel in self.added:
                if crel in self.dirs:
                    self._prune(crel)
                continue
            self._clear(crel)

    # -- end of archive

    def finish(self) -> None:
        for ti in self.pending_links.values():
            src = self._link_source(ti)
            if src is None:
                raise InvalidLayer(
                    f"layer entry {ti.name!r}: hardlink target {ti.linkname!r} is not in the layer"
                )
            parts = _split(ti.name, ti.name)
            parent = self._resolve(parts[:-1], ti.name, create=True)
            assert parent is not None
            self._link(src, _join(parent, parts[-1]))
        self.pending_links.clear()
        # Last, so creating their contents did not bump the mtimes. _forget keeps this map
        # free of anything replaced since, so each path is still the real directory we made.
        for rel, (mode, mtime_ns) in self.dir_meta.items():
            path = self._abs(rel)
            os.chmod(path, mode)
            _set_times(path, mtime_ns, nofollow=True)


def apply_layer(
    stream: BinaryIO, target: Path, *, overlay: bool = False, owners: bool = True
) -> LayerResult:
    """Unpack an uncompressed layer tar stream into `target` (created if missing).

    `overlay=False` merges onto lower layers already in `target` (whiteouts delete);
    `overlay=True` unpacks into an empty dir meant as an overlayfs lowerdir (whiteouts become
    0:0 char devices, opaque markers the trusted.overlay.opaque xattr). `owners=False`
    leaves every entry owned by this process (tar --no-same-owner, Docker's cp to the host).
    """
    os.makedirs(target, exist_ok=True)
    reader = _HashingReader(stream)
    entries = 0
    try:
        archive = io.BufferedReader(_ForwardReader(reader), _TAR_BUFSIZE)
        try:
            tf = tarfile.TarFile(
                fileobj=cast(IO[bytes], archive),
                mode="r",
                encoding="utf-8",
                errors="surrogateescape",
            )
        except tarfile.ReadError:
            if reader.size == 0:  # an empty stream is an empty layer, as for Go's archive/tar
                return LayerResult(reader.digest(), 0, 0)
            raise
        with tf:
            applier = _Applier(target, overlay, tf, owners)
            while (ti := tf.next()) is not None:
                entries += 1
                tf.members.clear()  # type: ignore[attr-defined]  # the stream reader would otherwise keep every header
                try:
                    applier.entry(ti)
                except OSError as e:
                    if e.errno in _LAYER_ERRNOS:
                        raise InvalidLayer(f"layer entry {ti.name!r}: {e.strerror}") from e
                    raise
            try:
                applier.finish()
            except OSError as e:
                if e.errno in _LAYER_ERRNOS:
                    raise InvalidLayer(f"layer: {e.strerror}: {e.filename}") from e
                raise
        while reader.read(_CHUNK):  # the digest covers the padding past end-of-archive
            pass
    except (tarfile.TarError, EOFError) as e:
        raise InvalidLayer(f"layer archive is malformed: {e}") from e
    return LayerResult(reader.digest(), reader.size, entries)


# --------------------------------------------------------------------------- write


@dataclass(frozen=True)
class LayerWritten:
    """The blob write_layer produced: `digest`/`size` of the compressed bytes, `diff_id`/
    `uncompressed_size` of the tar stream."""

    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    media_type: str


def _normalise_selection(src: str, paths: Iterable[str]) -> tuple[set[str], set[str]]:
    wanted: set[str] = set()
    ancestors: set[str] = set()
    for p in paths:
        parts = _split(p, p)
        if not parts:
            raise InvalidLayer(f"layer path {p!r}: the root itself cannot be selected")
        rel = "/".join(parts)
        if not os.path.lexists(f"{src}/{rel}"):
            raise NotFound(f"layer path {p!r}: no such file in {src}")
        wanted.add(rel)
        for i in range(1, len(parts)):
            ancestors.add("/".join(parts[:i]))
    return wanted, ancestors


def _walk(
    src: str, selection: tuple[set[str], set[str]] | None
) -> Iterator[tuple[str, os.stat_result]]:
    """Pre-order walk, entries of each directory sorted by their raw name bytes."""

    def children(rel: str, inside: bool) -> list[tuple[str, os.stat_result, bool]]:
        path = f"{src}/{rel}" if rel else src
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        out = []
        for e in entries:
            crel = _join(rel, e.name)
            cinside = inside
            if not inside:
                assert selection is not None
                wanted, ancestors = selection
                if crel in wanted:
                    cinside = True
                elif crel not in ancestors:
                    continue
            out.append((crel, e.stat(follow_symlinks=False), cinside))
        return out

    stack = children("", selection is None)[::-1]
    while stack:
        rel, st, inside = stack.pop()
        yield rel, st
        if stat.S_ISDIR(st.st_mode):
            stack.extend(children(rel, inside)[::-1])


class _TarWriter:
    def __init__(
        self, sink: _HashingWriter, src: str, overlay_upper: bool, sde: int | None
    ) -> None:
        self.sink = sink
        self.src = src
        self.overlay_upper = overlay_upper
        self.sde = sde
        self.links: dict[tuple[int, int], str] = {}

    def _header(self, ti: tarfile.TarInfo) -> None:
        self.sink.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _info(self, name: str, st: os.stat_result) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid = st.st_uid
        ti.gid = st.st_gid
        ti.uname = ti.gname = ""  # numeric ownership only: names depend on the host
        mtime = int(st.st_mtime)
        if self.sde is not None and mtime > self.sde:
            mtime = self.sde
        ti.mtime = mtime
        return ti

    def _xattrs(self, path: str) -> dict[str, str]:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise
        out: dict[str, str] = {}
        for attr in sorted(names):
            # Overlay bookkeeping is translated (opaque) or meaningless outside this host;
            # SELinux labels belong to the host, not the image.
            if attr.startswith(_DROPPED_XATTRS) or attr == "security.selinux":
                continue
            try:
                value = os.getxattr(path, attr, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    continue
                raise
            out[_PAX_XATTR + attr] = value.decode("utf-8", "surrogateescape")
        return out

    def add(self, rel: str, st: os.stat_result) -> None:
        path = f"{self.src}/{rel}"
        mode = st.st_mode
        if self.overlay_upper and stat.S_ISCHR(mode) and st.st_rdev == 0:
            parent, _, base = rel.rpartition("/")
            ti = self._info(_join(parent, _WH_PREFIX + base), st)
            ti.mode = 0o600
            self._header(ti)
            return
        ti = self._info(rel, st)
        ti.pax_headers = self._xattrs(path)
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                ti.type = tarfile.LNKTYPE
                ti.linkname = first
                self._header(ti)
                return
            self.links[key] = rel
        if stat.S_ISREG(mode):
            self._file(ti, path, st.st_size)
        elif stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
            self._header(ti)
            if self.overlay_upper and self._is_opaque(path):
                marker = tarfile.TarInfo(f"{rel}/{_WH_OPAQUE}")
                marker.mode, marker.uid, marker.gid = ti.mode, ti.uid, ti.gid
                marker.uname = marker.gname = ""
                marker.mtime = ti.mtime
                self._header(marker)
        elif stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(path)
            self._header(ti)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor = os.major(st.st_rdev)
            ti.devminor = os.minor(st.st_rdev)
            self._header(ti)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
            self._header(ti)
        # sockets cannot be archived: skipped, as tar does

    def _is_opaque(self, path: str) -> bool:
        try:
            return os.getxattr(path, _OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
        except OSError:
            return False

    def _file(self, ti: tarfile.TarInfo, path: str, size: int) -> None:
        ti.size = size
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._header(ti)
            remaining = size
            while remaining > 0:
                chunk = os.read(fd, min(_CHUNK, remaining))
                if not chunk:
                    raise InvalidLayer(f"layer path {ti.name!r}: file shrank while being archived")
                self.sink.write(chunk)
                remaining -= len(chunk)
        finally:
            os.close(fd)
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            self.sink.write(b"\0" * pad)

    def close(self) -> None:
        self.sink.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive, as Go's archive/tar


def _compressor(out: _HashingWriter, compression: Compression) -> IO[bytes] | None:
    """A compressing writer into `out` (to be closed to finish the stream), None for NONE."""
    if compression is Compression.GZIP:
        # pigz-style: 1 MiB blocks deflated in a worker thread, each primed with the previous
        # block's last 32 KiB. Output depends only on the input, not on the thread count.
        gz = igzip_threaded.open(out, "wb", compresslevel=_GZIP_LEVEL, threads=1)  # type: ignore[no-untyped-call]
        return cast(IO[bytes], gz)
    if compression is Compression.ZSTD:
        # Multi-threaded zstd output is identical for any worker count >= 1.
        cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, threads=-1)
        zw = cctx.stream_writer(cast(IO[bytes], out), write_return_read=True, closefd=False)
        return cast(IO[bytes], zw)
    return None


def write_layer(
    src: Path,
    out: BinaryIO,
    *,
    compression: Compression = Compression.GZIP,
    overlay_upper: bool = False,
    source_date_epoch: int | None = None,
    paths: Iterable[str] | None = None,
) -> LayerWritten:
    """Archive the tree under `src` as a layer blob written to `out` (left open).

    Deterministic for a given tree: pre-order walk sorted by name bytes, numeric owners, PAX
    headers, mtimes clamped to `source_date_epoch` when given, hardlinks by (dev, inode).
    `overlay_upper=True` reads `src` as an overlayfs upperdir: 0:0 char devices become `.wh.`
    entries and opaque directories get a `.wh..wh..opq` entry. `paths` restricts the layer to
    those relative paths (directories with their subtree) plus their parent directories.
    """
    root = os.path.realpath(src)
    selection = _normalise_selection(root, paths) if paths is not None else None
    hashed_out = _HashingWriter(cast(IO[bytes], out))
    compressor = _compressor(hashed_out, compression)
    tar_stream = _HashingWriter(
        compressor if compressor is not None else cast(IO[bytes], hashed_out)
    )
    writer = _TarWriter(tar_stream, root, overlay_upper, source_date_epoch)
    try:
        for rel, st in _walk(root, selection):
            writer.add(rel, st)
        writer.close()
    finally:
        if compressor is not None:
            compressor.close()  # flushes the trailer and stops compression threads
    hashed_out.flush()
    return LayerWritten(
        digest=hashed_out.digest(),
        size=hashed_out.size,
        diff_id=tar_stream.digest(),
        uncompressed_size=tar_stream.size,
        media_type=media_type_for(compression),
    )
