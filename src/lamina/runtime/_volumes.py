"""Named and anonymous volumes of the ``local`` driver: plain directories.

Layout, under the directory given to ``VolumeStore`` (``<lamina root>/volumes``)::

    <name>/volume.json   name, driver, created, labels, anonymous
    <name>/_data/        what containers mount

Lifecycle: ``create`` builds the whole volume in a hidden ``.tmp-*`` directory and
renames it into place, so a volume either exists complete or not at all (and two
racing creates of one name both get the same volume, as ``docker volume create``
is idempotent). A volume is filled from the image once (``populate``, Docker's
copy-up) when a container first mounts it while it is still empty. ``remove``
renames the volume away before deleting its data, so a half-deleted volume is never
listed. This store does not know containers: callers pass ``users``, a function
naming the containers that use a volume, and removal refuses while it names any.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina._fsutil import fsync_dir
from lamina.errors import InUse, LaminaError, NotFound

Users = Callable[[str], Sequence[str]]  # volume name -> IDs of containers using it

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


@dataclass
class Volume:
    name: str
    mountpoint: Path  # the _data directory
    driver: str = "local"
    created: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Shaped like ``docker volume inspect``."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
        labels = dict(self.labels)
        if self.anonymous:
            labels.setdefault("com.docker.volume.anonymous", "")
        return {
            "CreatedAt": created,
            "Driver": self.driver,
            "Labels": labels or None,
            "Mountpoint": str(self.mountpoint),
            "Name": self.name,
            "Options": None,
            "Scope": "local",
        }


@dataclass
class PruneResult:
    removed: list[str] = field(default_factory=list)
    reclaimed: int = 0  # bytes


def validate_volume_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise LaminaError(
            f'"{name}" includes invalid characters for a local volume name, only '
            f'"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed (2 characters at least)'
        )
    return name


class VolumeStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- reading
    def _dir(self, name: str) -> Path:
        validate_volume_name(name)
        return self.root / name

    def get(self, name: str) -> Volume:
        d = self._dir(name)
        try:
            meta = json.loads((d / "volume.json").read_bytes())
        except FileNotFoundError:
            raise NotFound(f"volume {name} not found") from None
        except ValueError:
            raise LaminaError(f"volume {name}: {d / 'volume.json'} is not valid JSON") from None
        return Volume(
            name=name,
            mountpoint=d / "_data",
            driver=str(meta.get("driver", "local")),
            created=float(meta.get("created", 0.0)),
            labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
            anonymous=bool(meta.get("anonymous", False)),
        )

    def exists(self, name: str) -> bool:
        return _NAME.fullmatch(name) is not None and (self.root / name / "volume.json").is_file()

    def path(self, name: str) -> Path:
        """The directory containers mount for volume ``name``."""
        return self.get(name).mountpoint

    def list(self) -> list[Volume]:
        out = []
        for entry in sorted(os.listdir(self.root)):
            if entry.startswith(".") or not _NAME.fullmatch(entry):
                continue
            with contextlib.suppress(NotFound, LaminaError):
                out.append(self.get(entry))
        return out

    # -- writing
    def create(self, name: str | None = None, labels: dict[str, str] | None = None) -> Volume:
        """Create a volume; an existing one of that name is returned as it is.
        Without a name, an anonymous volume with a random 64-hex name."""
        anonymous = name is None
        if name is None:
            name = secrets.token_hex(32)
        final = self._dir(name)
        if final.exists():
            return self.get(name)
        tmp = self.root / f".tmp-{name}-{secrets.token_hex(4)}"
        try:
            (tmp / "_data").mkdir(parents=True)
            os.chmod(tmp / "_data", 0o755)  # whatever the umask
            meta = {
                "name": name,
                "driver": "local",
                "created": time.time(),
                "labels": dict(labels or {}),
                "anonymous": anonymous,
            }
            with open(tmp / "volume.json", "wb") as f:
                f.write(json.dumps(meta, indent=1).encode())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.rename(tmp, final)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                return self.get(name)  # created meanwhile by someone else
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(self.root)
        return self.get(name)

    def remove(self, name: str, *, force: bool = False, users: Users | None = None) -> None:
        """Delete a volume and its data. Refused while ``users`` names a container
        using it, even with ``force`` (which only makes a missing volume no error)."""
        if not self.exists(name):
            if force:
                return
            raise NotFound(f"volume {name} not found")
        holders = list(users(name)) if users is not None else []
        if holders:
            raise InUse(f"volume {name} is in use by container {holders[0]}")
        trash = self.root / f".rm-{name}-{secrets.token_hex(4)}"
        try:
            os.rename(self.root / name, trash)
        except FileNotFoundError:
            if force:
                return
            raise NotFound(f"volume {name} not found") from None
        shutil.rmtree(trash, ignore_errors=True)

    def prune(self, users: Users, *, all: bool = False) -> PruneResult:
        """Remove volumes no container uses: anonymous ones only unless ``all``
        (as ``docker volume prune`` since Docker 23)."""
        result = PruneResult()
        for vol in self.list():
            if not (vol.anonymous or all) or list(users(vol.name)):
                continue
            size = disk_usage(vol.mountpoint)
            try:
                self.remove(vol.name, users=users)
            except (NotFound, InUse):
                continue
            result.removed.append(vol.name)
            result.reclaimed += size
        return result

    def clean_temporaries(self) -> None:
        """Delete what an interrupted create or remove left behind."""
        for entry in os.listdir(self.root):
            if entry.startswith((".tmp-", ".rm-")):
                shutil.rmtree(self.root / entry, ignore_errors=True)

    # -- copy-up
    def populate(self, volume: Volume | str, image_dir: Path) -> bool:
        """Docker's copy-up: fill an empty volume with what the image has at the mount
        target (``image_dir``, already resolved inside the container's rootfs).

        Modes, owners, times, xattrs, hard links, symlinks and device nodes are kept,
        and the volume's root takes ``image_dir``'s owner and mode. Returns whether
        anything was copied: a volume with content, or a missing ``image_dir``,
        leaves the volume alone. A failed copy leaves the volume empty.
        """
        vol = self.get(volume) if isinstance(volume, str) else volume
        data = vol.mountpoint
        try:
            src_st = os.lstat(image_dir)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(src_st.st_mode):
            return False
        with _locked(data.parent):
            if any(os.scandir(data)):
                return False
            staging = data.parent / f".populate-{secrets.token_hex(4)}"
            try:
                os.mkdir(staging)
                copy_tree_contents(image_dir, staging)
                for entry in os.listdir(staging):
                    os.rename(staging / entry, data / entry)
            except BaseException:
                for entry in os.listdir(data):
                    _remove_path(data / entry)
                raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            _copy_meta(str(image_dir), str(data), src_st)
        return True


def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
    return total


# -- copying a tree with everything a file carries ---------------------------


def copy_tree_contents(src: Path, dst: Path) -> None:
    """Copy the entries of directory ``src`` into the existing directory ``dst``.

    Never follows symlinks; hard links inside ``src`` stay hard links; sockets are
    skipped (they cannot be copied).
    """
    links: dict[tuple[int, int], str] = {}
    dirs_meta: list[tuple[str, str, os.stat_result]] = []
    _copy_dir_entries(str(src), str(dst), links, dirs_meta)
    # Directory times last: creating entries inside a directory changes its mtime.
    for s, d, st in reversed(dirs_meta):
        _copy_meta(s, d, st)


def _copy_dir_entries(
    src: str,
    dst: str,
    links: dict[tuple[int, int], str],
    dirs_meta: list[tuple[str, str, os.stat_result]],
) -> None:
    with os.scandir(src) as it:
        entries = list(it)
    for entry in entries:
        s = entry.path
        d = os.path.join(dst, entry.name)
        st = entry.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d, 0o700)
            _copy_dir_entries(s, d, links, dirs_meta)
            dirs_meta.append((s, d, st))
            continue
        if st.st_nlink > 1 and not stat.S_ISLNK(mode):
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                os.link(first, d)
                continue
            links[(st.st_dev, st.st_ino)] = d
        if stat.S_ISREG(mode):
            shutil.copyfile(s, d, follow_symlinks=False)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(d, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        else:
            continue  # sockets
        _copy_meta(s, d, st)


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    """Owner, then xattrs, then mode (chown clears setuid bits), then times."""
    link = stat.S_ISLNK(st.st_mode)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    _copy_xattrs(src, dst)
    if not link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as e:
            # Some namespaces cannot be set on the target filesystem (or here):
            # the data matters more than, say, a security label.
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
                raise


def _remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
