"""An image's root filesystem as a read-only EROFS disk for micro-VMs, cached per image.

``image_rootfs(local, record)`` returns ``<root>/vm/rootfs/<manifest hex>.erofs``, built
once with ``mkfs.erofs`` (package ``erofs-utils``, uncompressed: the guest reads it
without inflating anything) from the image's merged layers:

- one layer: straight from its snapshot directory;
- several: from a read-only overlayfs mount of the snapshots, made in a private mount
  namespace (``unshare --mount``) that vanishes with the command, so no mount can leak;
- without root, or with more layers than one mount option can name: the layers are
  applied in merged mode (whiteouts delete) into a scratch directory, then packed.

The file appears by atomic rename; two processes building the same image both work and
the last rename wins with identical content. ``collect_rootfs_garbage`` deletes the disks
of removed images (``lamina rmi`` and ``image prune`` call it). In the guest the agent
mounts the disk read-only with a tmpfs-backed overlay on top, so the workload can write.

``image_user`` resolves ``--user`` against the image's own /etc/passwd and /etc/group,
read from the topmost layer that has them, with Docker's rules (lamina.runtime._userdb).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from lamina.errors import LaminaError
from lamina.image import ImageRecord, LocalImages

_MAX_MOUNT_OPTIONS = 4000  # the kernel takes one page of mount options
_OPAQUE = "trusted.overlay.opaque"


def _mkfs() -> str:
    tool = shutil.which("mkfs.erofs")
    if tool is None:
        raise LaminaError("micro-VM root filesystems need mkfs.erofs (apt-get install erofs-utils)")
    return tool


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise LaminaError(f"{what} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")


def image_rootfs(local: LocalImages, record: ImageRecord) -> Path:
    """The image's EROFS disk, built on first use."""
    out = local.root / "vm" / "rootfs" / f"{record.manifest_digest.split(':')[-1]}.erofs"
    if out.is_file():
        return out
    mkfs = _mkfs()
    chains = local.unpack(record)
    lowers = local.snapshots.lowerdirs(chains)  # top layer first
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    mkfs_cmd = [mkfs, "--quiet", str(tmp)]
    try:
        relative = [os.path.relpath(p, local.snapshots.root) for p in lowers]
        options = "ro,lowerdir=" + ":".join(relative)
        if len(lowers) == 1:
            _run([*mkfs_cmd, str(lowers[0])], "mkfs.erofs")
        elif os.geteuid() == 0 and len(options) <= _MAX_MOUNT_OPTIONS:
            with tempfile.TemporaryDirectory(prefix=".mnt-", dir=out.parent) as mnt:
                script = (
                    'cd "$1" && mount -t overlay overlay -o "$2" "$3" && cd / '
                    '&& shift 3 && exec "$@" "$0"'
                )
                _run(
                    [
                        "unshare", "--mount", "--propagation", "private", "--",
                        "sh", "-c", script, mnt, str(local.snapshots.root), options, mnt,
                        *mkfs_cmd,
                    ],
                    "building the VM root filesystem",
                )  # fmt: skip
        else:
            _build_merged(local, record, mkfs_cmd)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def collect_rootfs_garbage(local: LocalImages) -> list[Path]:
    """Delete the cached disks of images that are gone, and the temp files of builds
    whose process died; returns what went. A disk in use by a running VM stays readable
    to its QEMU after the unlink. (The image plane cannot call this: it is below vm/.)"""
    cache = local.root / "vm" / "rootfs"
    try:
        entries = list(cache.iterdir())
    except FileNotFoundError:
        return []
    keep = {f"{r.manifest_digest.split(':')[-1]}.erofs" for r in local.images.list()}
    removed = []
    for path in entries:
        name = path.name
        if name.endswith(".tmp") and name.startswith("."):
            pid = name.rsplit(".", 2)[-2]
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                continue  # a build in progress
        elif not name.endswith(".erofs") or name in keep:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed


def _build_merged(local: LocalImages, record: ImageRecord, mkfs_cmd: list[str]) -> None:
    from lamina.image import apply_layer, open_decompressed

    manifest = local.manifest_for(record.manifest_digest)
    with tempfile.TemporaryDirectory(prefix=".merge-", dir=Path(mkfs_cmd[-1]).parent) as d:
        tree = Path(d) / "fs"
        for layer in manifest.layers:
            with local.content.open(layer.digest) as blob, open_decompressed(blob) as stream:
                apply_layer(stream, tree, overlay=False)
        _run([*mkfs_cmd, str(tree)], "mkfs.erofs")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except OSError:
        return None


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, _OPAQUE, follow_symlinks=False) == b"y"
    except OSError:
        return False


def layer_file(lowers: list[Path], rel: str) -> Path | None:
    """The regular file at ``rel`` (e.g. ``etc/passwd``) as the merged layers show it,
    looked up top layer first in overlay-form snapshots; None when absent or deleted.

    Symlinks are never followed (they would resolve on the host): a path through one
    counts as absent, which for passwd/group means "no entries", as for a missing file.
    """
    parts = rel.split("/")
    for layer in lowers:
        cur = layer
        opaque = False  # an opaque directory on the way hides the layers below
        for i, part in enumerate(parts):
            cur = cur / part
            st = _lstat(cur)
            if st is None:
                break
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None  # a whiteout deletes it
            if i == len(parts) - 1:
                return cur if stat.S_ISREG(st.st_mode) else None
            if not stat.S_ISDIR(st.st_mode):
                return None
            opaque = opaque or _is_opaque(cur)
        if opaque:
            return None
    return None


def image_user(
    local: LocalImages, record: ImageRecord, spec: str | None
) -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary gids, home) for ``spec`` in the image."""
    from lamina.runtime._userdb import resolve_user

    lowers = local.snapshots.lowerdirs(local.unpack(record))
    with tempfile.TemporaryDirectory(prefix="lamina-user-") as d:
        etc = Path(d) / "etc"
        etc.mkdir()
        for name in ("passwd", "group"):
            src = layer_file(lowers, f"etc/{name}")
            if src is not None:
                shutil.copyfile(src, etc / name)
        user = resolve_user(Path(d), spec)
    return user.uid, user.gid, list(user.additional_gids), user.home
