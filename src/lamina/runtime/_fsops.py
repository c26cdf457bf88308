"""Filesystem operations on a container's overlayfs root: diff, cp, commit.

A container's root is an overlay mount: read-only lower dirs (the image's snapshots,
topmost first, as in the ``lowerdir=`` option), the container's ``upper`` dir where
every change lands (deleted lower entries as 0:0 character devices, directories
that hide their lower contents marked ``trusted.overlay.opaque=y``), and ``merged``,
the mounted view.

- ``diff`` reads only ``upper`` and the lower dirs, so it works whether or not the
  rootfs is mounted (``docker diff`` semantics).
- ``stat_path``, ``copy_out`` and ``copy_in`` are ``cp``'s work on a root: the
  process backend runs them in ``_copier``'s child, confined to the container's own
  view (``rootfs`` is then ``/``: a chroot in the container's mount namespace, or a
  private one holding its root and mounts), so nothing the container does meanwhile
  (swapping a directory for a symlink to a host path) can lead them out of it.
  Symlinks are still resolved as if ``rootfs`` were ``/`` and files opened without
  following a final symlink: the same functions stay correct on any root.
- ``tar_of`` archives a host path the same way, for ``cp`` into a container.
- ``commit_layer`` / ``commit_image`` turn ``upper`` into a gzip layer and an image.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from lamina.errors import InvalidReference, LaminaError
from lamina.image import (
    Compression,
    Descriptor,
    ImageRecord,
    LayerWritten,
    LocalImages,
    Manifest,
    Platform,
    Reference,
    StoreLease,
    apply_layer,
    dump_json,
    media,
    open_decompressed,
    parse_reference,
    write_layer,
)

# Not re-exported by lamina.image (yet): the commit instructions and the file-like
# adapter over a content store ingest that ``lamina import`` writes layers through.
from lamina.image._config import rfc3339
from lamina.image._import import apply_changes, ingest_layer
from lamina.runtime._paths import secure_join
from lamina.runtime._types import ChangeEntry, ContainerConfig, PathStat
from lamina.runtime.common import merge_env, not_found

_CHUNK = 1 << 20
_OPAQUE_XATTR = "trusted.overlay.opaque"
# Overlay bookkeeping and host security labels do not belong in what leaves the host.
_SKIPPED_XATTRS = ("trusted.overlay.", "user.overlay.", "security.selinux")


# -- docker diff ---------------------------------------------------------------


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, _OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _lower_child(stack: Sequence[str], name: str) -> tuple[bool, list[str]]:
    """Whether ``name`` shows in the lower view of a directory whose lower copies are
    ``stack`` (topmost first), and the lower copies of it if it is a directory."""
    found = False
    child: list[str] = []
    for d in stack:
        p = f"{d}/{name}"
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if _is_whiteout(st):
            break
        found = True
        if not stat.S_ISDIR(st.st_mode):
            break  # a non-directory hides whatever the layers below have there
        child.append(p)
        if _is_opaque(p):
            break
    return found, child


def _lower_names(stack: Sequence[str]) -> set[str]:
    """Names visible in the lower view of a directory."""
    names: set[str] = set()
    hidden: set[str] = set()
    for d in stack:
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            if e.name in names or e.name in hidden:
                continue
            if _is_whiteout(e.stat(follow_symlinks=False)):
                hidden.add(e.name)
            else:
                names.add(e.name)
    return names


def diff(
    upper: Path, lowerdirs: Sequence[Path], *, mountpoints: Iterable[str] = ()
) -> list[ChangeEntry]:
    """``docker diff``: what the container changed, added (A) or deleted (D) compared
    with its image, sorted by path. ``lowerdirs`` are topmost first.

    A directory present in ``upper`` that the image has is reported changed (it is
    only there because something in it, or it, changed). An opaque directory replaced
    the image's one: the image's entries it hides are reported deleted.

    ``mountpoints`` are the container paths something is mounted on (``/etc/hosts``,
    volumes, tmpfs, ``/proc``...). Where the image lacks one, the runtime creates an
    empty file or directory in ``upper`` to mount on: such stubs are not the
    container's changes (Docker keeps them in a layer of its own), and neither are
    the directories that are in ``upper`` only because of them.
    """
    out: list[ChangeEntry] = []
    hidden = {posixpath.normpath("/" + p.lstrip("/")) for p in mountpoints}
    _diff_dir(str(upper), "", [str(d) for d in lowerdirs], False, hidden, out)
    out.sort(key=lambda c: c.path)
    return out


def _diff_dir(
    updir: str,
    rel: str,
    stack: list[str],
    opaque: bool,
    hidden: set[str],
    out: list[ChangeEntry],
) -> bool:
    """Append the changes under ``updir`` to ``out``; True if a mount stub was left
    out below it."""
    with os.scandir(updir) as it:
        entries = list(it)
    if opaque:
        present = {e.name for e in entries}
        for name in sorted(_lower_names(stack) - present):
            out.append(ChangeEntry("D", f"{rel}/{name}"))
    stubs = False
    for entry in entries:
        path = f"{rel}/{entry.name}"
        st = entry.stat(follow_symlinks=False)
        in_lower, child_stack = _lower_child(stack, entry.name)
        if _is_whiteout(st):
            if in_lower:
                out.append(ChangeEntry("D", path))
            continue
        if not in_lower and path in hidden and _is_stub(entry.path, st):
            stubs = True
            continue
        kind = "C" if in_lower else "A"
        out.append(ChangeEntry(kind, path))
        if not stat.S_ISDIR(st.st_mode):
            continue
        mark = len(out)
        # Below an opaque directory nothing of the image shows through.
        child_opaque = opaque or _is_opaque(entry.path)
        below = _diff_dir(entry.path, path, child_stack, child_opaque, hidden, out)
        stubs = stubs or below
        if below and len(out) == mark and (kind == "A" or _same_owner_mode(st, child_stack)):
            out.pop()  # made (A) or copied up (C) only to hold mount stubs
    return stubs


def _is_stub(path: str, st: os.stat_result) -> bool:
    """An empty file or directory, as runtimes create to mount on."""
    if stat.S_ISREG(st.st_mode):
        return st.st_size == 0
    if stat.S_ISDIR(st.st_mode):
        with os.scandir(path) as it:
            return next(it, None) is None
    return False


def _same_owner_mode(st: os.stat_result, lower_copies: Sequence[str]) -> bool:
    """Whether a copied-up directory still has its image owner and mode."""
    if not lower_copies:
        return False
    try:
        low = os.lstat(lower_copies[0])
    except OSError:
        return False
    return (st.st_mode, st.st_uid, st.st_gid) == (low.st_mode, low.st_uid, low.st_gid)


# -- docker cp -----------------------------------------------------------------


def archive_name(path: str) -> str:
    """The name ``docker cp`` gives the top entry: the basename as the user wrote it
    (``/etc/hosts`` -> ``hosts``); ``dir/.`` and ``/`` give ``.`` (the contents)."""
    stripped = path.rstrip("/")
    if stripped.endswith("/.") or stripped in ("", "."):
        return "."
    return posixpath.basename(stripped) or "."


def _container_path(rootfs: Path, host: Path) -> str:
    """``host`` (under ``rootfs``) as the container names it."""
    rel = os.path.relpath(host, os.path.realpath(rootfs))
    return "/" if rel == "." else "/" + rel


def stat_path(rootfs: Path, path: str) -> PathStat:
    """What is at ``path`` inside the rootfs, as ``docker cp`` stats it: a final
    symlink is not followed, its ``link_target`` is where it leads, fully resolved
    inside the rootfs (as far as it exists)."""
    host = secure_join(rootfs, path, follow_final=False)
    try:
        st = os.lstat(host)
    except (FileNotFoundError, NotADirectoryError):
        raise not_found(path) from None
    if path.endswith("/") and not stat.S_ISDIR(st.st_mode):
        raise LaminaError(f"{path}: not a directory")
    target = ""
    if stat.S_ISLNK(st.st_mode):
        target = _container_path(rootfs, secure_join(rootfs, path))
    name = posixpath.basename(path.rstrip("/")) or "/"
    return PathStat(name, st.st_size, st.st_mode, st.st_mtime, target)


def copy_out(rootfs: Path, path: str, *, follow_link: bool = False) -> Iterator[bytes]:
    """A tar stream (PAX, numeric owners) of ``path`` inside the mounted rootfs, as
    ``docker cp CTR:path -`` writes it. A symlink at ``path`` is archived as a link
    unless ``follow_link``. Raises NotFound before yielding anything. Archiving the
    whole root leaves out ``/proc`` and ``/sys`` (the kernel's, not the container's)."""
    host = secure_join(rootfs, path, follow_final=follow_link)
    try:
        st = os.lstat(host)
    except (FileNotFoundError, NotADirectoryError):
        raise not_found(path) from None
    if path.rstrip("/") != path and not stat.S_ISDIR(st.st_mode) and path.strip("/"):
        raise LaminaError(f"{path}: not a directory")
    skip = _KERNEL_DIRS if _container_path(rootfs, host) == "/" else frozenset()
    return _TarStream(str(host), archive_name(path), st, skip=skip).chunks()


def tar_of(path: str, name: str, *, owner: tuple[int, int] | None = None) -> Iterator[bytes]:
    """A tar stream of host ``path`` in ``copy_out``'s form, its top entry named
    ``name`` (``.``: a directory's contents). ``owner``: the (uid, gid) every entry
    gets instead of the file's own."""
    return _TarStream(path, name, os.lstat(path), owner=owner).chunks()


_KERNEL_DIRS = frozenset({"proc", "sys"})


class _TarStream:
    def __init__(
        self,
        top: str,
        name: str,
        st: os.stat_result,
        *,
        owner: tuple[int, int] | None = None,
        skip: frozenset[str] = frozenset(),
    ) -> None:
        self.top = top
        self.name = name
        self.top_st = st
        self.owner = owner
        self.skip = skip  # names left out of the top directory
        self.links: dict[tuple[int, int], str] = {}
        self.buf = bytearray()

    def chunks(self) -> Iterator[bytes]:
        stack: list[tuple[str, str, os.stat_result]] = [(self.top, self.name, self.top_st)]
        while stack:
            host, name, st = stack.pop()
            yield from self._entry(host, name, st)
            if stat.S_ISDIR(st.st_mode):
                with os.scandir(host) as it:
                    children = sorted(it, key=lambda e: e.name, reverse=True)
                if host == self.top:
                    children = [e for e in children if e.name not in self.skip]
                for e in children:
                    child = e.name if name == "." else f"{name}/{e.name}"
                    stack.append((e.path, child, e.stat(follow_symlinks=False)))
        self.buf += b"\0" * (2 * tarfile.BLOCKSIZE)
        yield bytes(self.buf)

    def _header(self, ti: tarfile.TarInfo) -> Iterator[bytes]:
        self.buf += ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if len(self.buf) >= _CHUNK:
            yield bytes(self.buf)
            self.buf.clear()

    def _entry(self, host: str, name: str, st: os.stat_result) -> Iterator[bytes]:
        mode = st.st_mode
        ti = tarfile.TarInfo(name + "/" if stat.S_ISDIR(mode) and name != "." else name)
        ti.mode = stat.S_IMODE(mode)
        ti.uid, ti.gid = self.owner or (st.st_uid, st.st_gid)
        ti.uname = ti.gname = ""
        ti.mtime = int(st.st_mtime)
        ti.pax_headers = _xattr_headers(host)
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            first = self.links.get((st.st_dev, st.st_ino))
            if first is not None:
                ti.type, ti.linkname = tarfile.LNKTYPE, first
                yield from self._header(ti)
                return
            self.links[(st.st_dev, st.st_ino)] = name
        if stat.S_ISREG(mode):
            yield from self._file(ti, host, st.st_size)
            return
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(host)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            return  # sockets cannot be archived
        yield from self._header(ti)

    def _file(self, ti: tarfile.TarInfo, host: str, size: int) -> Iterator[bytes]:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            ti.size = size
            yield from self._header(ti)
            remaining = size
            while remaining > 0:
                chunk = os.read(fd, min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                if self.buf:
                    self.buf += chunk
                    yield bytes(self.buf)
                    self.buf.clear()
                else:
                    yield chunk
            # A file that shrank meanwhile is padded, as tar does: the header is out.
            self.buf += b"\0" * (remaining + (-size % tarfile.BLOCKSIZE))
        finally:
            os.close(fd)


def _xattr_headers(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[str, str] = {}
    for attr in sorted(names):
        if attr.startswith(_SKIPPED_XATTRS):
            continue
        try:
            value = os.getxattr(path, attr, follow_symlinks=False)
        except OSError:
            continue
        out["SCHILY.xattr." + attr] = value.decode("utf-8", "surrogateescape")
    return out


def extraction_point(rootfs: Path, path: str) -> Path:
    """The directory ``path`` inside the rootfs (symlinks followed inside it) that
    ``copy_in`` extracts into; NotFound, or LaminaError if it is not a directory."""
    dest = secure_join(rootfs, path)
    try:
        st = os.lstat(dest)
    except (FileNotFoundError, NotADirectoryError):
        raise not_found(path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise LaminaError(f"extraction point is not a directory: {path}")
    return dest


def copy_in(rootfs: Path, path: str, tar_stream: BinaryIO) -> None:
    """Extract a tar stream (plain, gzip or zstd) into directory ``path`` inside the
    mounted rootfs, as ``docker cp - CTR:path`` does. Entries stay inside that
    directory whatever their names or symlinks say; owners in the archive are kept."""
    dest = extraction_point(rootfs, path)
    with open_decompressed(tar_stream) as plain:
        apply_layer(plain, dest, overlay=False)


# -- docker commit ---------------------------------------------------------------


@dataclass(frozen=True)
class CommittedLayer:
    path: Path  # the gzip blob, named after its digest
    layer: LayerWritten


def commit_layer(upper: Path, out_dir: Path) -> CommittedLayer:
    """Write the container's changes (its overlay upper dir) as a gzip layer blob in
    ``out_dir`` (``<hex>.tar.gz``); whiteouts and opaque dirs become ``.wh.`` entries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".layer-{secrets.token_hex(8)}.tmp"
    try:
        with open(tmp, "wb") as f:
            written = write_layer(upper, f, compression=Compression.GZIP, overlay_upper=True)
            f.flush()
            os.fsync(f.fileno())
        final = out_dir / f"{written.digest.removeprefix('sha256:')}.tar.gz"
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return CommittedLayer(final, written)


# Docker layer media types and their OCI twins (same bytes): the new manifest is OCI.
_OCI_LAYER_TYPE = {
    media.DOCKER_LAYER_TAR: media.OCI_LAYER_TAR,
    media.DOCKER_LAYER_GZIP: media.OCI_LAYER_GZIP,
    media.DOCKER_LAYER_FOREIGN: media.OCI_LAYER_ND_GZIP,
}


def committed_config(cfg: ContainerConfig, image_env: Sequence[str]) -> dict[str, Any]:
    """What ``commit`` keeps of a container's own settings in the new image's config
    (Docker's rules: command, entrypoint, env over the image's, workdir, user, labels);
    both backends use it."""
    out: dict[str, Any] = {}
    if cfg.command is not None:
        out["Cmd"] = cfg.command
    if cfg.entrypoint is not None:
        out["Entrypoint"] = cfg.entrypoint
    if cfg.env:
        out["Env"] = merge_env(list(image_env), cfg.env)
    if cfg.working_dir:
        out["WorkingDir"] = cfg.working_dir
    if cfg.user:
        out["User"] = cfg.user
    if cfg.labels:
        out["Labels"] = dict(cfg.labels)
    return out


def commit_image(
    local: LocalImages,
    *,
    base_image_id: str,
    upper: Path,
    reference: str | None = None,
    changes: Sequence[str] = (),
    message: str | None = None,
    author: str | None = None,
    container_config: Mapping[str, Any] | None = None,
    created_by: str = "",
) -> ImageRecord:
    """``docker commit``: a new image = the base image + one layer of ``upper``.

    The new image's container config is the base's, updated with
    ``container_config`` (keys of the image config's ``config`` object, e.g. the
    container's Cmd and Env), then with the ``changes`` instructions. Stored as an
    OCI manifest with a gzip layer, named ``reference`` when given.
    """
    ref = None
    if reference is not None:
        ref = parse_reference(reference)
        if ref.digest is not None:
            raise InvalidReference(f"cannot commit to a digest reference: {reference}")
    base = local.require(base_image_id)
    config: dict[str, Any] = local.config(base)
    cfg = dict(config.get("config") or {})
    cfg.update(container_config or {})
    cfg = apply_changes(changes, cfg)  # a bad change fails before any work
    base_manifest = local.manifest_for(base.manifest_digest)
    # Protects the base image and the new blobs from a concurrent rmi/prune until the
    # new record names them.
    with local.lease("commit") as lease:
        lease.protect(images=[base.digest])
        return _commit_record(local, lease, base_manifest, config, cfg, upper, ref, author,
                              message, created_by)  # fmt: skip


def _commit_record(
    local: LocalImages,
    lease: StoreLease,
    base_manifest: Manifest,
    config: dict[str, Any],
    cfg: dict[str, Any],
    upper: Path,
    ref: Reference | None,
    author: str | None,
    message: str | None,
    created_by: str,
) -> ImageRecord:
    written = ingest_layer(local.content, upper, ref="commit", lease=lease, overlay_upper=True)
    now = rfc3339(time.time_ns())
    config["created"] = now
    config["config"] = cfg
    if author:
        config["author"] = author
    else:
        config.pop("author", None)
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), written.diff_id]
    history: dict[str, Any] = {"created": now}
    if author:
        history["author"] = author
    if created_by:
        history["created_by"] = created_by
    if message:
        history["comment"] = message
    config["history"] = [*(config.get("history") or []), history]
    config_bytes = dump_json(config)
    config_digest = lease.add_blob(config_bytes)

    layers = [
        Descriptor(_OCI_LAYER_TYPE.get(d.media_type, d.media_type), d.digest, d.size, urls=d.urls)
        for d in base_manifest.layers
    ]
    layers.append(Descriptor(written.media_type, written.digest, written.size))
    manifest = Manifest(
        media.OCI_MANIFEST, Descriptor(media.OCI_CONFIG, config_digest, len(config_bytes)), layers
    )
    target = lease.add_blob(dump_json(manifest))
    plat = Platform.of_config(config)
    record = local.record(target, plat)
    return local.images.put(record, [str(ref)] if ref else [])
