"""A VM container's bind mounts and volumes, as virtio-fs shared directories.

Lifecycle, driven by ``VmRuntime`` (``_backend``):

1. ``prepare_mounts`` at ``create``, with the process backend's rules and code: each
   ``VOLUME`` of the image no mount covers becomes an anonymous volume
   (``_oci._with_image_volumes``); named volumes are created on first use and, when
   new, filled from the image (``VolumeStore.populate``, Docker's copy-up, from the
   image's layers: one layer is its snapshot directory, several a read-only overlay
   of them mounted for the copy); bind sources must be absolute, existing directories:
   virtio-fs shares directories, so a single file cannot be bind-mounted. The result is
   plain data for the container's row, parents before children (Docker's order, so a
   mount inside another one lands on top of it), each with a unique virtio-fs tag.
2. ``shared_dirs`` in the supervisor turns that data into ``SharedDir``s and the mount
   points ``start_vm`` passes to the agent (``lamina.fs=``). A named volume is looked up
   again at each start: one removed meanwhile fails the start with one line.
3. ``release_volumes`` deletes the container's anonymous volumes (``rm -v``, ``--rm``).

``--tmpfs`` and ``--mount type=tmpfs`` are the guest's own tmpfs mounts: ``tmpfs_mounts``
checks them at ``create`` (Docker's defaults ``noexec,nosuid,nodev`` merged as the process
backend merges them) and ``tmpfs_cmdline`` hands them to the agent (``lamina.tmpfs=``:
mount point, MS_* flags in hex, data options; percent-encoded).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError
from lamina.image import ImageRecord, LocalImages
from lamina.runtime._types import ContainerConfig
from lamina.vm._config import SharedDir


def prepare_mounts(
    root: Path, local: LocalImages, record: ImageRecord, config: ContainerConfig
) -> list[dict[str, Any]]:
    """The container's shares (see the module doc); volumes it made are removed again
    when a later step fails."""
    from lamina.runtime._oci import _with_image_volumes
    from lamina.runtime._spec import _check_target
    from lamina.runtime._volumes import VolumeStore

    img = local.config(record).get("config") or {}
    mounts = _with_image_volumes(config, img.get("Volumes") or {}).mounts
    seen: set[str] = set()
    for m in mounts:
        target = _check_target(m.target)
        if target in seen:
            raise LaminaError(f"duplicate mount point: {target}")
        seen.add(target)
        if m.type == "bind":
            _check_bind_source(m.source)
        elif m.type not in ("volume", "tmpfs"):
            raise LaminaError(f"unsupported mount type {m.type!r} for {m.target}")
    store = VolumeStore(root / "volumes")
    created: list[str] = []
    shares: list[dict[str, Any]] = []
    try:
        to_fill: list[tuple[Any, str]] = []
        for m in mounts:
            if m.type == "tmpfs":  # the guest's own: tmpfs_mounts
                continue
            share: dict[str, Any] = {"target": _check_target(m.target), "read_only": m.read_only}
            if m.type == "bind":
                share["source"] = m.source
            else:
                existed = bool(m.source) and store.exists(m.source)
                vol = store.create(m.source or None)
                if not existed:
                    created.append(vol.name)
                share["volume"] = vol.name
                share["anonymous"] = not m.source
                if "nocopy" not in m.options and not any(os.scandir(vol.mountpoint)):
                    to_fill.append((vol, share["target"]))
            shares.append(share)
        if to_fill:
            with _image_tree(local, record) as tree:
                from lamina.runtime._paths import secure_join

                for vol, target in to_fill:
                    store.populate(vol, secure_join(tree, target))
    except BaseException:
        for name in created:
            with contextlib.suppress(LaminaError, OSError):
                store.remove(name, force=True)
        raise
    # Parents first (as Docker sorts mounts): a mount point inside another share is
    # made in that share after it is mounted.
    shares.sort(key=lambda s: len(Path(s["target"]).parts))
    for i, share in enumerate(shares):
        share["tag"] = f"lamina{i}"
    return shares


def _check_bind_source(source: str) -> None:
    from lamina.vm._virtiofs import check_shareable

    if not source.startswith("/"):
        raise LaminaError(f"invalid bind mount source {source!r}: it must be an absolute path")
    if not os.path.exists(source):
        raise LaminaError(f"bind source path does not exist: {source}")
    if not os.path.isdir(source):
        raise LaminaError(
            f"cannot bind-mount the file {source} into a micro-VM container: virtio-fs "
            "shares directories only (mount its directory instead)"
        )
    check_shareable(Path(source))


@contextlib.contextmanager
def _image_tree(local: LocalImages, record: ImageRecord) -> Any:
    """The image's merged filesystem as a host directory, for the copy-up."""
    from lamina._mount import MNT_DETACH, libc, mount_overlay

    lowers = local.snapshots.lowerdirs(local.unpack(record))
    if len(lowers) == 1:  # a single layer is its own merged view
        yield lowers[0]
        return
    if os.geteuid() != 0:
        raise LaminaError("filling a volume from a layered image needs root (an overlay mount)")
    scratch = local.root / "vm" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    mnt = Path(tempfile.mkdtemp(prefix="copyup-", dir=scratch))
    try:
        err = mount_overlay(mnt, [str(p) for p in lowers])  # no upper dir: read-only
        if err:
            raise LaminaError(f"cannot mount the image to fill a volume: {os.strerror(err)}")
        try:
            yield mnt
        finally:
            libc().umount2(str(mnt).encode(), MNT_DETACH)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(mnt)


def shared_dirs(
    root: Path, shares: list[dict[str, Any]]
) -> tuple[tuple[SharedDir, ...], dict[str, str]]:
    """(shared directories, tag -> container path) for ``start_vm``."""
    from lamina.runtime._volumes import VolumeStore

    store = VolumeStore(root / "volumes")
    dirs = []
    for s in shares:
        path = Path(s["source"]) if "source" in s else store.path(s["volume"])
        dirs.append(SharedDir(path, s["tag"], bool(s["read_only"])))
    return tuple(dirs), {s["tag"]: s["target"] for s in shares}


def release_volumes(root: Path, shares: list[dict[str, Any]]) -> None:
    """Delete the anonymous volumes among ``shares`` (a missing one is no error)."""
    from lamina.runtime._volumes import VolumeStore

    store = VolumeStore(root / "volumes")
    for s in shares:
        if s.get("anonymous"):
            with contextlib.suppress(LaminaError, OSError):
                store.remove(s["volume"], force=True)


def volume_names(shares: list[dict[str, Any]]) -> list[str]:
    """The volumes a container uses (for ``volume rm`` and prune to refuse)."""
    return [s["volume"] for s in shares if "volume" in s]


# Mount flags of tmpfs options (linux/mount.h); their opposites clear them.
_MS_FLAGS = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "sync": 0x10,
             "dirsync": 0x80, "noatime": 0x400, "nodiratime": 0x800,
             "relatime": 0x200000, "strictatime": 0x1000000}  # fmt: skip
_CLEARING = {"rw": "ro", "suid": "nosuid", "dev": "nodev", "exec": "noexec",
             "atime": "noatime", "diratime": "nodiratime"}  # fmt: skip
_TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks")


def tmpfs_mounts(config: ContainerConfig) -> list[dict[str, Any]]:
    """The container's tmpfs mounts as ``{"target", "flags", "data"}``: ``--tmpfs`` and
    ``--mount type=tmpfs`` with Docker's default options, as the process backend
    merges them; a bad option or a target another mount has is one error line."""
    from lamina.runtime._spec import _check_target, _tmpfs_mount

    wanted = [(m.target, [o for opt in m.options for o in opt.split(",")], m.read_only)
              for m in config.mounts if m.type == "tmpfs"]  # fmt: skip
    wanted += [(t, opts.split(",") if opts else [], False) for t, opts in config.tmpfs.items()]
    taken = {_check_target(m.target) for m in config.mounts if m.type != "tmpfs"}
    out = []
    for target, options, read_only in wanted:
        target = _check_target(target)
        if target in taken:
            raise LaminaError(f"duplicate mount point: {target}")
        taken.add(target)
        flags, data = 0, []
        for opt in _tmpfs_mount(target, options, read_only)["options"]:
            key = opt.split("=", 1)[0]
            if opt in _MS_FLAGS:
                flags |= _MS_FLAGS[opt]
            elif opt in _CLEARING:
                flags &= ~_MS_FLAGS[_CLEARING[opt]]
            elif key in _TMPFS_DATA and "=" in opt:
                data.append(opt)
            else:
                raise LaminaError(f"invalid tmpfs option {opt!r} for {target}")
        out.append({"target": target, "flags": flags, "data": ",".join(data)})
    return out


def tmpfs_cmdline(mounts: list[dict[str, Any]]) -> tuple[str, ...]:
    """The agent's kernel argument for ``tmpfs_mounts``' result (none without any)."""
    from lamina.vm._qemu import _percent

    if not mounts:
        return ()
    entries = (f"{_percent(m['target'])}:{m['flags']:x}:{_percent(m['data'])}" for m in mounts)
    return ("lamina.tmpfs=" + ",".join(entries),)
