"""Image archives: ``save`` images to, and ``load`` them from, OCI and Docker archives.

Formats written by ``save(local, names, dest, format=...)``:

- ``oci-archive``: a tar of an OCI image layout (``oci-layout``, ``index.json``,
  ``blobs/sha256/<hex>``). Blobs are written as stored, so manifest and layer
  digests are unchanged. Each name gets an ``index.json`` entry annotated with
  ``org.opencontainers.image.ref.name`` (the tag) and ``io.containerd.image.name``
  (the full name), as containerd and docker write them.
- ``docker-archive``: what ``docker save`` (Docker 25+) writes: the same OCI layout
  plus ``manifest.json`` (Config/RepoTags/Layers) and ``repositories``. Docker's
  loader wants uncompressed layer tars, so compressed layers are decompressed on
  the way (and checked against the config's diff_ids); the OCI manifest in the
  archive then points at those tars. The config is copied byte for byte, so the
  image ID stays the same.
- ``oci-dir``: the OCI image layout as a directory (what ``skopeo copy oci:DIR``
  and ``umoci`` use).

Writes are atomic: everything goes to a temp file (or directory) beside ``dest``
which is renamed into place only when complete; on failure nothing is left, and a
temp file whose writer was killed is registered on its store lease, so the next
command that reaps leases removes it. The lease also protects the saved images'
blobs from a concurrent ``rmi`` while they are read.

``load(local, src)`` reads any of these, a gzip/zstd/xz-compressed archive, a
stream (``docker load < file``), an old-style docker archive
(``<id>/layer.tar``), or an OCI layout directory. A tar is read in one streaming
pass because ``manifest.json`` may come last: every blob member is streamed into
the content store as it passes (verified against its name when the name is a
digest), small metadata is kept in memory, and once the whole archive is read the
images are resolved, checked (every referenced blob present, sizes and
uncompressed diff_ids matching) and recorded. Blobs this load added that no loaded
image references are deleted again. Any failure (a blob that does not match its
digest, a path escaping the archive, a truncated archive) raises a LaminaError
and removes everything the load added: no record, no blob, no snapshot, no
partial ingest.
Before any record is written, the layers of each loaded image are unpacked into
snapshots (as Docker does at load): a layer ``apply_layer`` refuses (``../``
entries, hardlinks out of the layer, ...) fails the load with an error naming the
layer and the entry, instead of the first ``create``, and the image is ready to run.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import secrets
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, cast

from lamina._fsutil import fsync_dir, naming, write_all
from lamina.errors import (
    AlreadyExists,
    DigestMismatch,
    InvalidLayer,
    InvalidManifest,
    InvalidReference,
    LaminaError,
    NotFound,
)
from lamina.image import _media as media
from lamina.image._content import ContentStore
from lamina.image._digest import digest_hex, digest_problem
from lamina.image._gc import StoreLease
from lamina.image._layers import (
    Compression,
    PrefixedReader,
    detect_compression,
    open_decompressed,
)
from lamina.image._local import LocalImages
from lamina.image._manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    check_layers,
    dump_json,
    parse_image_config,
    parse_manifest,
)
from lamina.image._platform import host_platform, select_manifest
from lamina.image._reference import Reference, parse_reference
from lamina.image._store import ImageRecord

ArchiveFormat = Literal["oci-archive", "docker-archive", "oci-dir"]
FORMATS: tuple[str, ...] = ("oci-archive", "docker-archive", "oci-dir")

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"

_CHUNK = 1 << 20
_BLOCK = 512
_RECORD = 20 * _BLOCK
_MAX_META = 64 << 20  # index.json, manifest.json, old-style configs, all together
_META_NAMES = frozenset({"index.json", "manifest.json", "oci-layout", "repositories"})
_BLOB_PATH_RE = re.compile(r"blobs/(sha256|sha512)/([a-f0-9]+)")
_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
_MAX_LINK_HOPS = 16


# ---------------------------------------------------------------------------- save


@dataclass
class _Item:
    record: ImageRecord
    refs: list[Reference] = field(default_factory=list)


def save(
    local: LocalImages,
    names: Sequence[str],
    dest: Path | BinaryIO,
    *,
    format: ArchiveFormat = "oci-archive",
) -> None:
    """Write the images ``names`` (references, IDs; a bare repository means all its
    tags, as ``docker save`` does) to ``dest``: a path, or a binary stream for the
    archive formats."""
    if format not in FORMATS:
        raise LaminaError(f"unknown archive format {format!r} (want {', '.join(FORMATS)})")
    if not names:
        raise LaminaError("save: no images given")
    if isinstance(dest, str | os.PathLike):
        dest = Path(dest)
    # The lease keeps the images' blobs from a concurrent rmi while they are read, and
    # answers for the temp file beside ``dest`` if this process dies.
    with local.lease("save") as lease:
        items = _select(local, names)
        present = lease.protect(images=[item.record.digest for item in items]).images
        for item in items:
            if item.record.digest not in present:
                raise NotFound(f"no such image: {item.record.id}")
        if format == "oci-dir":
            if not isinstance(dest, Path):
                raise LaminaError("oci-dir format needs a directory path, not a stream")
            _save_dir(local, items, dest, lease)
            return
        writer = _write_docker if format == "docker-archive" else _write_oci
        if isinstance(dest, Path):
            _save_file(local, items, dest, writer, lease)
            return
        # A stream cannot be rewound to patch tar headers: build the archive in an
        # anonymous temp file (gone on any exit) and copy it out.
        with tempfile.TemporaryFile(dir=local.root) as tmp:
            tar = _TarWriter(tmp.fileno())
            writer(local, items, tar)
            tar.close()
            tmp.seek(0)
            shutil.copyfileobj(tmp, dest, _CHUNK)
        dest.flush()


def _select(local: LocalImages, names: Sequence[str]) -> list[_Item]:
    items: dict[str, _Item] = {}
    for name in names:
        for record, ref in _matches(local, name):
            item = items.setdefault(record.digest, _Item(record))
            if ref is not None and ref not in item.refs:
                item.refs.append(ref)
    return list(items.values())


def _matches(local: LocalImages, name: str) -> list[tuple[ImageRecord, Reference | None]]:
    try:
        ref: Reference | None = parse_reference(name, default_tag=False)
    except InvalidReference:
        ref = None
    if ref is not None and ref.tag is None and ref.digest is None:
        found: list[tuple[ImageRecord, Reference | None]] = []
        for record in local.images.list():
            for n in record.names:
                r = parse_reference(n)
                if r.digest is None and r.name == ref.name:
                    found.append((record, r))
        if found:
            return sorted(found, key=lambda f: str(f[1]))
    record = local.require(name)
    if ref is not None and ref.digest is None:
        full = ref if ref.tag else ref.with_tag("latest")
        if str(full) in record.names:
            return [(record, full)]
    return [(record, None)]  # saved by ID or digest: no name, as docker does


def _annotations(ref: Reference) -> dict[str, str]:
    return {ANNOTATION_IMAGE_NAME: str(ref), ANNOTATION_REF_NAME: ref.tag or "latest"}


def _index_entries(item: _Item, desc: Descriptor) -> list[Descriptor]:
    if not item.refs:
        return [desc]
    return [
        Descriptor(desc.media_type, desc.digest, desc.size, annotations=_annotations(r))
        for r in item.refs
    ]


def _closure(content: ContentStore, digest: str) -> list[str] | None:
    """Every blob reachable from a manifest or index (itself first); None when some
    are missing from the content store (a pull fetches one platform of an index)."""
    out: list[str] = []
    stack = [digest]
    while stack:
        d = stack.pop()
        if not content.exists(d):
            return None
        out.append(d)
        parsed = parse_manifest(content.read(d))
        if isinstance(parsed, Index):
            stack.extend(m.digest for m in reversed(parsed.manifests))
            continue
        for leaf in (parsed.config, *parsed.layers):
            if not content.exists(leaf.digest):
                return None
            out.append(leaf.digest)
    return out


def _oci_target(local: LocalImages, record: ImageRecord) -> tuple[Descriptor, list[str]]:
    """The descriptor to put in index.json and the blobs it needs: the whole index
    when all of it is here, else the platform manifest."""
    content = local.content
    candidates = [record.digest]
    if record.manifest_digest != record.digest:
        candidates.append(record.manifest_digest)
    for digest in candidates:
        try:
            blobs = _closure(content, digest)
        except InvalidManifest:
            blobs = None  # an index listing artifacts lamina cannot read: save the image only
        if blobs is None:
            continue
        parsed = parse_manifest(content.read(digest))
        return Descriptor(parsed.media_type, digest, content.info(digest).size), blobs
    raise NotFound(f"image {record.id}: content is incomplete in the content store")


def _write_oci(local: LocalImages, items: list[_Item], out: _Out) -> None:
    entries: list[Descriptor] = []
    written: set[str] = set()
    for item in items:
        desc, blobs = _oci_target(local, item.record)
        for digest in blobs:
            if digest not in written:
                written.add(digest)
                out.add_blob(_blob_name(digest), local.content.path(digest))
        entries.extend(_index_entries(item, desc))
    out.add_bytes("oci-layout", _LAYOUT)
    out.add_bytes("index.json", dump_json(Index(media.OCI_INDEX, entries)))


def _write_docker(local: LocalImages, items: list[_Item], tar: _Out) -> None:
    if not isinstance(tar, _TarWriter):  # pragma: no cover - guarded by save()
        raise LaminaError("docker-archive is written as a tar only")
    content = local.content
    entries: list[Descriptor] = []
    manifest_json: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: dict[str, int] = {}  # archive blob digest -> size
    for item in items:
        manifest = local.manifest_for(item.record.manifest_digest)
        config_bytes = content.read(manifest.config.digest)
        config = parse_image_config(config_bytes)
        check_layers(manifest, config)
        diff_ids: list[str] = config["rootfs"]["diff_ids"]
        for layer, diff_id in zip(manifest.layers, diff_ids, strict=True):
            if diff_id not in written:
                written[diff_id] = _write_uncompressed(content, tar, layer, diff_id)
        if manifest.config.digest not in written:
            tar.add_blob(_blob_name(manifest.config.digest), content.path(manifest.config.digest))
            written[manifest.config.digest] = len(config_bytes)
        # Docker's loader reads manifest.json; containerd's reads index.json, whose
        # manifest must point at the uncompressed tars this archive holds.
        reuse = manifest.media_type == media.OCI_MANIFEST and all(
            layer.digest == d for layer, d in zip(manifest.layers, diff_ids, strict=True)
        )
        if reuse:
            target = item.record.manifest_digest
            raw = content.read(target)
        else:
            raw = dump_json(
                Manifest(
                    media.OCI_MANIFEST,
                    Descriptor(media.OCI_CONFIG, manifest.config.digest, len(config_bytes)),
                    [Descriptor(media.OCI_LAYER_TAR, d, written[d]) for d in diff_ids],
                )
            )
            target = "sha256:" + _sha256(raw)
        if target not in written:
            tar.add_bytes(_blob_name(target), raw)
            written[target] = len(raw)
        entries.extend(_index_entries(item, Descriptor(media.OCI_MANIFEST, target, len(raw))))
        manifest_json.append(
            {
                "Config": _blob_name(manifest.config.digest),
                "RepoTags": [r.familiar() for r in item.refs] or None,
                "Layers": [_blob_name(d) for d in diff_ids],
            }
        )
        for r in item.refs:
            if diff_ids and r.tag:
                repositories.setdefault(r.familiar_name(), {})[r.tag] = digest_hex(diff_ids[-1])
    tar.add_bytes("index.json", dump_json(Index(media.OCI_INDEX, entries)))
    tar.add_bytes("manifest.json", json.dumps(manifest_json, separators=(",", ":")).encode())
    tar.add_bytes("oci-layout", _LAYOUT)
    if repositories:
        tar.add_bytes("repositories", json.dumps(repositories, separators=(",", ":")).encode())


def _write_uncompressed(
    content: ContentStore, tar: _TarWriter, layer: Descriptor, diff_id: str
) -> int:
    """Put the uncompressed tar of ``layer`` in the archive; returns its size."""
    name = _blob_name(diff_id)
    if layer.digest == diff_id:
        path = content.path(layer.digest)
        tar.add_blob(name, path)
        return path.stat().st_size
    with content.open(layer.digest) as raw, _decompressed(raw) as stream:
        size, digest = tar.add_stream(name, stream.read)
    if digest != diff_id:
        raise DigestMismatch(
            f"layer {layer.digest} decompresses to {digest}, not its diff_id {diff_id}"
        )
    return size


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tmp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _save_file(
    local: LocalImages,
    items: list[_Item],
    dest: Path,
    writer: Callable[[LocalImages, list[_Item], _Out], None],
    lease: StoreLease,
) -> None:
    if dest.is_dir():
        raise AlreadyExists(f"cannot write archive {dest}: it is a directory")
    tmp = _tmp_name(dest)
    lease.add_path(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with naming(dest):
            tar = _TarWriter(fd)
            writer(local, items, tar)
            tar.close()
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    finally:
        lease.discard(tmp)
    fsync_dir(dest.parent)


def _save_dir(local: LocalImages, items: list[_Item], dest: Path, lease: StoreLease) -> None:
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise AlreadyExists(f"cannot write OCI layout to {dest}: it exists and is not empty")
    tmp = _tmp_name(dest)
    lease.add_path(tmp)
    try:
        tmp.mkdir()
        _write_oci(local, items, _DirWriter(tmp))
        fsync_dir(tmp / "blobs" / "sha256")
        fsync_dir(tmp)
        os.replace(tmp, dest)  # rename(2) may replace an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        lease.discard(tmp)
    fsync_dir(dest.parent)


class _TarWriter:
    """A minimal tar writer on a raw fd, enough for image archives: directories and
    regular files with short names, GNU format (512-byte headers; sizes past 8 GiB
    in base-256), mtime 0 so the same images give the same archive bytes. A member
    whose size is known only after writing it (a layer decompressed on the fly) gets
    a placeholder header that is rewritten in place."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = os.lseek(fd, 0, os.SEEK_CUR)
        self._dirs: set[str] = set()

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.pos += len(data)

    @staticmethod
    def _header(name: str, size: int, *, directory: bool = False) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = 0
        info.mode = 0o755 if directory else 0o644
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        buf = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
        if len(buf) != _BLOCK:  # pragma: no cover - our names are short
            raise LaminaError(f"tar member name too long: {name}")
        return buf

    def _pad(self, size: int) -> None:
        if size % _BLOCK:
            self._write(bytes(_BLOCK - size % _BLOCK))

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i]) + "/"
            if d not in self._dirs:
                self._dirs.add(d)
                self._write(self._header(d, 0, directory=True))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._parents(name)
        self._write(self._header(name, len(data)))
        self._write(data)
        self._pad(len(data))

    def add_blob(self, name: str, path: Path) -> None:
        self._parents(name)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._write(self._header(name, size))
            _copy_fd(f.fileno(), self.fd, size)
        self.pos += size
        self._pad(size)

    def add_stream(self, name: str, read: Callable[[int], bytes]) -> tuple[int, str]:
        """Stream a member of unknown size; returns (size, sha256 digest)."""
        self._parents(name)
        start = self.pos
        self._write(self._header(name, 0))
        h = hashlib.sha256()
        size = 0
        while chunk := read(_CHUNK):
            h.update(chunk)
            self._write(chunk)
            size += len(chunk)
        self._pad(size)
        os.pwrite(self.fd, self._header(name, size), start)
        return size, "sha256:" + h.hexdigest()

    def close(self) -> None:
        end = self.pos + 2 * _BLOCK
        self._write(bytes(2 * _BLOCK + (-end) % _RECORD))


class _DirWriter:
    """The same calls as _TarWriter, writing an OCI layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _open(self, name: str) -> int:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def add_bytes(self, name: str, data: bytes) -> None:
        fd = self._open(name)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def add_blob(self, name: str, path: Path) -> None:
        fd = self._open(name)
        try:
            with open(path, "rb") as f:
                _copy_fd(f.fileno(), fd, os.fstat(f.fileno()).st_size)
            os.fsync(fd)
        finally:
            os.close(fd)


_Out = _TarWriter | _DirWriter


def _copy_fd(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes between fds in the kernel (reflinks where the filesystem
    can), falling back to read/write."""
    remaining = size
    try:
        while remaining:
            n = os.copy_file_range(src, dst, remaining)
            if n == 0:
                break
            remaining -= n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while remaining:
        chunk = os.read(src, min(remaining, _CHUNK))
        if not chunk:
            raise LaminaError("blob changed size while it was being copied")
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        remaining -= len(chunk)


def load(local: LocalImages, src: Path | BinaryIO) -> list[ImageRecord]:
    """Load every image in an archive, a stream or an OCI layout directory; returns
    their records in archive order. All or nothing."""
    if isinstance(src, str | os.PathLike):
        src = Path(src)
    label = str(src) if isinstance(src, Path) else getattr(src, "name", "<stream>")
    with local.lease("load") as lease:
        return _load(_Load(local, str(label), lease), src)


def _load(session: _Load, src: Path | BinaryIO) -> list[ImageRecord]:
    try:
        if isinstance(src, Path) and src.is_dir():
            view: _View = _DirView(session, src)
        elif isinstance(src, Path):
            try:
                f = open(src, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                raise NotFound(f"image archive {src} not found") from None
            with f:
                view = session.scan_tar(f)
        else:
            view = session.scan_tar(src)
        return session.finish(view)
    except BaseException:
        session.rollback()
        raise


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


@dataclass
class _Plan:
    target: str
    names: list[str]
    platform: Platform | None = None


class _View:
    """What an archive holds: small metadata files and blobs by archive path."""

    def meta(self, name: str) -> bytes | None:
        raise NotImplementedError

    def blob(self, path: str, expected: str | None = None) -> str:
        """The digest of the blob at ``path``, ingested into the content store."""
        raise NotImplementedError


class _Load:
    """One load: what it added (to undo on failure) and the archive-independent steps."""

    def __init__(self, local: LocalImages, label: str, lease: StoreLease) -> None:
        self.local = local
        self.content = local.content
        self.lease = lease
        self.label = label
        self.created: set[str] = set()
        self.put: list[str] = []
        self.unpacked: list[str] = []  # snapshots this load made
        self._serial = 0

    # -- ingest
    def ingest(self, f: _Readable, expected: str | None, size: int | None) -> str:
        """Stream ``f`` into the content store (verified against ``expected``)."""
        self._serial += 1
        ref = f"load-{os.getpid()}-{id(self)}-{self._serial}"
        w = self.content.writer(ref, expected, size)
        try:
            w.truncate()
            while chunk := f.read(_CHUNK):
                w.write(chunk)
            actual = w.digest()
            if (expected is None or actual == expected) and self.present(actual):
                w.abort()
                return actual
            try:
                digest = w.commit()
            except DigestMismatch as e:
                raise DigestMismatch(f"image archive {self.label}: {e}") from None
            self.created.add(digest)
            return digest
        except BaseException:
            w.abort()
            raise

    def present(self, digest: str) -> bool:
        """Whether the blob is in the store, where it stays while this load runs."""
        return digest in self.lease.protect(blobs=[digest]).blobs

    def add(self, data: bytes) -> str:
        digest = "sha256:" + _sha256(data)
        if not self.present(digest):
            self.content.add(data, digest)
            self.created.add(digest)
        return digest

    def rollback(self) -> None:
        for digest in self.put:
            with contextlib.suppress(LaminaError):
                self.local.images.delete(digest)
        self._collect_created()

    def _collect_created(self) -> None:
        """Blobs and snapshots this load added that no record references go again (the
        collector decides, so one another operation relies on meanwhile stays)."""
        created = sorted(self.created)
        unpacked = list(self.unpacked)
        self.created.clear()
        self.unpacked.clear()
        if created or unpacked:
            self.lease.unprotect(blobs=created, snapshots=unpacked)
            self.local.collect_garbage(blobs=created, snapshots=unpacked)

    def unpack(self, record: ImageRecord) -> None:
        """Unpack the image's layers into snapshots, as ``create`` would: a layer that
        ``apply_layer`` refuses (an entry escaping the root, a hardlink to outside the
        layer...) fails the load, not the first run; and the image is ready to run."""
        try:
            self.local.unpack(record, self.lease, made=self.unpacked)
        except (InvalidLayer, DigestMismatch) as e:
            raise type(e)(f"image archive {self.label}: {e}") from None

    # -- tar scanning
    def scan_tar(self, f: BinaryIO) -> _TarView:
        view = _TarView(self)
        try:
            if _plain_file(f):
                # A plain tar on disk: headers are read with seeks (the data of blobs
                # already here is never read) and members are copied with pread.
                with tarfile.open(fileobj=f, mode="r:") as tar:
                    view.slices = f.fileno()
                    while (member := tar.next()) is not None:
                        tar.members.clear()  # type: ignore[attr-defined]  # else kept for ever
                        view.take(tar, member)
                return view
            with (
                _decompressed(f) as stream,
                tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as tar,
            ):
                while (member := tar.next()) is not None:
                    tar.members.clear()  # type: ignore[attr-defined]  # else kept for ever
                    view.take(tar, member)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, InvalidLayer) as e:
            raise InvalidManifest(f"cannot read image archive {self.label}: {_why(e)}") from None
        except OSError as e:
            if e.errno is not None:
                raise  # the host failing (ENOSPC...), not the archive
            raise InvalidManifest(f"cannot read image archive {self.label}: {_why(e)}") from None
        return view

    # -- resolving
    def finish(self, view: _View) -> list[ImageRecord]:
        index = view.meta("index.json")
        docker = view.meta("manifest.json")
        plans: list[_Plan] = []
        if index is not None:
            try:
                plans = self._oci_plans(view, index)
            except LaminaError:
                if docker is None:
                    raise
                plans = []  # a Docker archive whose OCI half is unusable: use manifest.json
        if docker is not None:
            entries = _docker_entries(docker)
            if plans:
                self._merge_repo_tags(view, plans, entries)
            else:
                plans = [self._docker_plan(view, e) for e in entries]
        if index is None and docker is None:
            raise InvalidManifest(
                f"{self.label} is not an image archive: it has neither index.json nor manifest.json"
            )
        if not plans:
            raise InvalidManifest(f"image archive {self.label} holds no images")
        records: dict[str, ImageRecord] = {}
        names: dict[str, list[str]] = {}
        for plan in plans:
            if plan.target not in records:
                records[plan.target] = self.local.record(plan.target, plan.platform)
                names[plan.target] = []
            names[plan.target].extend(n for n in plan.names if n not in names[plan.target])
        for record in records.values():
            self.unpack(record)
        out: list[ImageRecord] = []
        for target, record in records.items():
            existed = _has_record(self.local, target)
            stored = self.local.images.put(record, names[target])
            if not existed:
                self.put.append(target)
            out.append(stored)
        self._drop_unreferenced()
        return out

    def _drop_unreferenced(self) -> None:
        # The collector's own reachability walk: every platform of an index counts.
        self._collect_created()

    def _blob(self, view: _View, desc: Descriptor) -> str:
        if digest_problem(desc.digest) is not None or not desc.digest.startswith("sha256:"):
            raise InvalidManifest(f"image archive {self.label}: unsupported digest {desc.digest}")
        digest = view.blob(_blob_name(desc.digest), desc.digest)
        size = self.content.info(digest).size
        if size != desc.size:
            raise DigestMismatch(
                f"image archive {self.label}: blob {desc.digest} is {size} bytes, "
                f"its descriptor says {desc.size}"
            )
        return digest

    def _image(self, view: _View, desc: Descriptor) -> Manifest | None:
        """Check a platform manifest and everything it references is present; None for
        a manifest that is not an image (a signature or other artifact)."""
        parsed = parse_manifest(self.content.read(self._blob(view, desc)), desc.media_type)
        if not isinstance(parsed, Manifest):
            raise InvalidManifest(f"image archive {self.label}: {desc.digest} nests an index")
        if parsed.config.media_type not in media.CONFIG_TYPES:
            return None
        config = parse_image_config(self.content.read(self._blob(view, parsed.config)))
        check_layers(parsed, config)
        for layer in parsed.layers:
            media.layer_compression(layer.media_type)
            self._blob(view, layer)
        return parsed

    def _oci_plans(self, view: _View, index_bytes: bytes) -> list[_Plan]:
        index = parse_manifest(index_bytes)
        if not isinstance(index, Index):
            raise InvalidManifest(f"image archive {self.label}: index.json is not an index")
        plans: list[_Plan] = []
        for desc in index.manifests:
            names = _annotation_names(desc.annotations)
            if desc.media_type in media.MANIFEST_TYPES:
                if self._image(view, desc) is not None:
                    plans.append(_Plan(desc.digest, names))
            elif desc.media_type in media.INDEX_TYPES:
                plans.append(_Plan(desc.digest, names, self._choose(view, desc).platform))
        return plans

    def _choose(self, view: _View, desc: Descriptor) -> Descriptor:
        """The index entry to load: the host's, else the first one present."""
        parsed = parse_manifest(self.content.read(self._blob(view, desc)), desc.media_type)
        if not isinstance(parsed, Index):
            raise InvalidManifest(f"image archive {self.label}: {desc.digest} is not an index")
        order: list[Descriptor] = []
        first_error: LaminaError | None = None
        try:
            order.append(select_manifest(parsed, host_platform()))
        except NotFound as e:
            first_error = e
        order.extend(
            m
            for m in parsed.manifests
            if m not in order
            and m.media_type in media.MANIFEST_TYPES
            and m.platform is not None
            and "unknown" not in (m.platform.os, m.platform.architecture)
        )
        chosen: Descriptor | None = None
        for child in order:
            try:
                if self._image(view, child) is not None:
                    chosen = chosen or child
            except (NotFound, InvalidManifest) as e:
                # Keep every platform the archive carries (so that the index can be
                # pushed again whole); one that is incomplete is simply not kept.
                first_error = first_error or e
        if chosen is not None:
            return chosen
        raise first_error or InvalidManifest(
            f"image archive {self.label}: index {desc.digest} lists no image"
        )

    def _docker_plan(self, view: _View, entry: _DockerEntry) -> _Plan:
        config_digest = view.blob(entry.config)
        config_bytes = self.content.read(config_digest)
        config = parse_image_config(config_bytes)
        diff_ids: list[str] = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(entry.layers):
            raise InvalidManifest(
                f"image archive {self.label}: {entry.config} lists {len(diff_ids)} diff_ids "
                f"but manifest.json lists {len(entry.layers)} layers"
            )
        layers: list[Descriptor] = []
        for path, diff_id in zip(entry.layers, diff_ids, strict=True):
            digest = view.blob(path)
            compression = _blob_compression(self.content.path(digest))
            if compression is None and digest != diff_id:
                raise DigestMismatch(
                    f"image archive {self.label}: layer {path} is {digest}, "
                    f"not the diff_id {diff_id} its config lists"
                )
            media_type = _LAYER_TYPES.get(compression)
            if media_type is None:
                raise InvalidLayer(
                    f"image archive {self.label}: layer {path} is {compression}-compressed "
                    "(supported: plain, gzip, zstd)"
                )
            layers.append(Descriptor(media_type, digest, self.content.info(digest).size))
        manifest = Manifest(
            media.OCI_MANIFEST,
            Descriptor(media.OCI_CONFIG, config_digest, len(config_bytes)),
            layers,
        )
        return _Plan(self.add(dump_json(manifest)), entry.names)

    def _merge_repo_tags(
        self, view: _View, plans: list[_Plan], entries: list[_DockerEntry]
    ) -> None:
        """Names from manifest.json's RepoTags for images loaded from index.json."""
        by_config: dict[str, list[str]] = {}
        for e in entries:
            if e.names:
                with contextlib.suppress(LaminaError):
                    by_config.setdefault(view.blob(e.config), []).extend(e.names)
        for plan in plans:
            config = self.local.manifest_for(plan.target, plan.platform).config.digest
            plan.names.extend(n for n in by_config.get(config, []) if n not in plan.names)


_LAYER_TYPES: dict[str | None, str] = {
    None: media.OCI_LAYER_TAR,
    "gzip": media.OCI_LAYER_GZIP,
    "zstd": media.OCI_LAYER_ZSTD,
}


@dataclass
class _DockerEntry:
    config: str
    layers: list[str]
    names: list[str]


def _docker_entries(raw: bytes) -> list[_DockerEntry]:
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise InvalidManifest(f"manifest.json is not valid JSON: {e}") from None
    if not isinstance(doc, list):
        raise InvalidManifest("manifest.json must be a JSON list")
    out: list[_DockerEntry] = []
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict):
            raise InvalidManifest(f"manifest.json[{i}] must be an object")
        config = entry.get("Config")
        layers = entry.get("Layers")
        tags = entry.get("RepoTags") or []
        if not isinstance(config, str) or not config:
            raise InvalidManifest(f"manifest.json[{i}].Config must be a path")
        if not isinstance(layers, list) or not all(isinstance(p, str) for p in layers):
            raise InvalidManifest(f"manifest.json[{i}].Layers must be a list of paths")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidManifest(f"manifest.json[{i}].RepoTags must be a list of names")
        names = []
        for t in tags:
            ref = parse_reference(t)
            if ref.digest is not None:
                raise InvalidManifest(f"manifest.json[{i}].RepoTags: {t!r} is not a tag")
            names.append(str(ref))
        out.append(_DockerEntry(_safe_path(config), [_safe_path(p) for p in layers], names))
    return out


def _annotation_names(annotations: dict[str, str]) -> list[str]:
    """The name an index.json entry gives its image: containerd's full-name
    annotation, else ref.name when it is a whole reference (a bare tag names no
    repository, so the image stays dangling)."""
    for key in (ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME):
        value = annotations.get(key, "")
        if not value or (key == ANNOTATION_REF_NAME and not ("/" in value or ":" in value)):
            continue
        try:
            ref = parse_reference(value)
        except InvalidReference:
            continue
        if ref.digest is None:
            return [str(ref)]
    return []


def _has_record(local: LocalImages, digest: str) -> bool:
    try:
        local.images.get_by_digest(digest)
    except NotFound:
        return False
    return True


def _safe_path(p: str) -> str:
    """An archive-relative path from manifest.json; refused if it escapes."""
    norm = _norm(p)
    if norm is None:
        raise InvalidManifest(f"manifest.json: path {p!r} escapes the archive")
    return norm


def _norm(p: str) -> str | None:
    if not p or "\x00" in p or p.startswith("/"):
        return None
    norm = posixpath.normpath(p)
    if norm in (".", "..") or norm.startswith("../"):
        return None
    return norm


class _TarView(_View):
    """Members of a tar read once, in order, as a stream."""

    def __init__(self, session: _Load) -> None:
        self.session = session
        self.metas: dict[str, bytes] = {}
        self.blobs: dict[str, str] = {}
        self.links: dict[str, str | None] = {}
        self.meta_bytes = 0
        self.slices: int | None = None  # fd of a plain archive file: members read by pread

    def take(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = _norm(member.name)
        if name is None:
            return  # never referenced: references that escape are refused
        if member.issym() or member.islnk():
            base = posixpath.dirname(name) if member.issym() else ""
            target = member.linkname
            self.links[name] = (
                None if target.startswith("/") else _norm(posixpath.join(base, target))
            )
            return
        if not member.isfile():
            return
        if "/" not in name and (name in _META_NAMES or name.endswith(".json")):
            self.meta_bytes += member.size
            if self.meta_bytes > _MAX_META:
                raise InvalidManifest(
                    f"image archive {self.session.label}: metadata files are too big ({name})"
                )
            meta = tar.extractfile(member)
            assert meta is not None
            self.metas[name] = meta.read()
            return
        if posixpath.basename(name) in ("json", "VERSION"):
            return  # docker's v1 layer metadata, unused since manifest.json
        expected = _expected_digest(name)
        if expected is not None and not expected.startswith("sha256:"):
            return  # the content store is sha256-only; referencing it fails later
        if expected is not None and self.session.present(expected):
            self.blobs[name] = expected  # already here (and verified when it came)
            return
        data: _Readable | None = (
            _Slice(self.slices, member.offset_data, member.size)
            if self.slices is not None and not member.issparse()
            else tar.extractfile(member)
        )
        assert data is not None
        self.blobs[name] = self.session.ingest(data, expected, member.size)

    def meta(self, name: str) -> bytes | None:
        return self.metas.get(name)

    def blob(self, path: str, expected: str | None = None) -> str:
        seen = 0
        current: str | None = path
        while current is not None and current in self.links:
            seen += 1
            if seen > _MAX_LINK_HOPS:
                raise InvalidManifest(f"image archive {self.session.label}: link loop at {path}")
            current = self.links[current]
        if current is None:
            raise InvalidManifest(
                f"image archive {self.session.label}: {path} links outside the archive"
            )
        digest = self.blobs.get(current)
        if digest is None and current in self.metas:
            digest = self.session.add(self.metas[current])
        if digest is None:
            if expected is not None and self.session.present(expected):
                return expected
            raise NotFound(f"image archive {self.session.label} has no {path}")
        if expected is not None and digest != expected:
            raise DigestMismatch(
                f"image archive {self.session.label}: {path} is {digest}, not {expected}"
            )
        return digest


class _DirView(_View):
    """An OCI layout (or extracted docker archive) directory: blobs are ingested only
    when an image references them."""

    def __init__(self, session: _Load, root: Path) -> None:
        self.session = session
        self.root = root
        self.real = os.path.realpath(root)

    def _file(self, path: str) -> Path | None:
        p = self.root / path
        real = os.path.realpath(p)
        if not (real == self.real or real.startswith(self.real + os.sep)):
            raise InvalidManifest(f"{self.session.label}: {path} links outside the directory")
        return p if os.path.isfile(real) else None

    def meta(self, name: str) -> bytes | None:
        p = self._file(name)
        if p is None:
            return None
        if p.stat().st_size > _MAX_META:
            raise InvalidManifest(f"{self.session.label}: {name} is too big")
        return p.read_bytes()

    def blob(self, path: str, expected: str | None = None) -> str:
        if expected is None:
            expected = _expected_digest(path)
        if expected is not None and self.session.present(expected):
            return expected
        p = self._file(path)
        if p is None:
            raise NotFound(f"{self.session.label} has no {path}")
        with open(p, "rb") as f:
            return self.session.ingest(f, expected, os.fstat(f.fileno()).st_size)


class _Slice:
    """A member's data read straight from the archive file with pread."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self.fd, self.pos, self.left = fd, offset, size

    def read(self, n: int) -> bytes:
        if self.left <= 0:
            return b""
        data = os.pread(self.fd, min(n, self.left), self.pos)
        if not data:
            raise EOFError("unexpected end of data")
        self.pos += len(data)
        self.left -= len(data)
        return data


def _plain_file(f: BinaryIO) -> bool:
    """True for an uncompressed archive in a regular file (random access works)."""
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return False
        head = os.pread(f.fileno(), 6, f.tell())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return _sniff(head) is None


def _expected_digest(name: str) -> str | None:
    m = _BLOB_PATH_RE.fullmatch(name)
    if m is None:
        return None
    digest = f"{m.group(1)}:{m.group(2)}"
    return digest if digest_problem(digest) is None else None


def _why(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, EOFError) or "unexpected end" in text:
        return f"truncated ({text})"
    return text


# ---------------------------------------------------------------------------- compression


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"BZh"):
        return "bzip2"
    kind = detect_compression(head)
    return None if kind is Compression.NONE else kind.value


def _blob_compression(path: Path) -> str | None:
    with open(path, "rb") as f:
        return _sniff(f.read(6))


@contextlib.contextmanager
def _decompressed(f: BinaryIO) -> Iterator[BinaryIO]:
    """``f`` decompressed according to its magic bytes (plain data passes through):
    gzip and zstd as layers are (threaded), xz and bzip2 as ``docker load`` accepts."""
    head = f.read(6)
    raw = cast(BinaryIO, io.BufferedReader(PrefixedReader(head, f), _CHUNK))
    kind = _sniff(head)
    if kind == "xz":
        with lzma.LZMAFile(raw) as x:
            yield cast(BinaryIO, x)
    elif kind == "bzip2":
        with bz2.BZ2File(raw) as b:
            yield cast(BinaryIO, b)
    else:
        stream = open_decompressed(raw, detect_compression(head))
        try:
            yield stream
        finally:
            if stream is not raw:
                stream.close()
