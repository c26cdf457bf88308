"""A VM container's bind mounts and volumes, as virtio-fs shared directories.

Lifecycle, driven by ``VmTasks`` (``_backend``):

1. ``shares_for`` at ``create``: the engine has made the container's volumes (the
   image's ``VOLUME``s among them, filled from the image) and gives them by mount
   target; bind sources must be absolute, existing directories: virtio-fs shares
   directories, so a single file cannot be bind-mounted. The result is plain data for
   the container's task, parents before children (Docker's order, so a mount inside
   another one lands on top of it), each with a unique virtio-fs tag.
2. ``shared_dirs`` in the supervisor turns that data into ``SharedDir``s and the mount
   points ``start_vm`` passes to the agent (``lamina.fs=``). A named volume is looked up
   again at each start: one removed meanwhile fails the start with one line.

``--tmpfs`` and ``--mount type=tmpfs`` are the guest's own tmpfs mounts: ``tmpfs_mounts``
checks them at ``create`` (Docker's defaults ``noexec,nosuid,nodev`` merged as the process
backend merges them) and ``tmpfs_cmdline`` hands them to the agent (``lamina.tmpfs=``:
mount point, MS_* flags in hex, data options; percent-encoded).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.errors import LaminaError
from lamina.runtime._types import ContainerConfig
from lamina.vm._config import SharedDir

if TYPE_CHECKING:
    from lamina.runtime._volumes import Volume


def shares_for(config: ContainerConfig, volumes: dict[str, Volume]) -> list[dict[str, Any]]:
    """The container's shares (see the module doc); ``volumes``: the volume of each
    volume mount, by target."""
    from lamina.runtime.common import check_mount_target

    seen: set[str] = set()
    shares: list[dict[str, Any]] = []
    for m in config.mounts:
        target = check_mount_target(m.target)
        if target in seen:
            raise LaminaError(f"duplicate mount point: {target}")
        seen.add(target)
        if m.type == "tmpfs":  # the guest's own: tmpfs_mounts
            continue
        share: dict[str, Any] = {"target": target, "read_only": m.read_only}
        if m.type == "bind":
            _check_bind_source(m.source)
            share["source"] = m.source
        elif m.type == "volume":
            vol = volumes[m.target]
            share["volume"] = vol.name
            share["anonymous"] = vol.anonymous
        else:
            raise LaminaError(f"unsupported mount type {m.type!r} for {m.target}")
        shares.append(share)
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
    from lamina.runtime.common import check_mount_target, tmpfs_options

    wanted = [(m.target, [o for opt in m.options for o in opt.split(",")], m.read_only)
              for m in config.mounts if m.type == "tmpfs"]  # fmt: skip
    wanted += [(t, opts.split(",") if opts else [], False) for t, opts in config.tmpfs.items()]
    taken = {check_mount_target(m.target) for m in config.mounts if m.type != "tmpfs"}
    out = []
    for target, options, read_only in wanted:
        target = check_mount_target(target)
        if target in taken:
            raise LaminaError(f"duplicate mount point: {target}")
        taken.add(target)
        flags, data = 0, []
        for opt in tmpfs_options(options, read_only):
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
