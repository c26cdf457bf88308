"""File operations of COPY, ADD and WORKDIR, done on a mounted image filesystem.

A step that writes files without running anything mounts an overlay of the
current layer stack with a fresh upper directory (``overlay_view``), writes
through the merged view exactly as BuildKit's file operations do on a snapshot
(paths resolved inside the image root, symlinks included; existing directories
kept; new parent directories made), unmounts, and the upper directory is the
layer. Read-only views of other stages and images (``COPY --from``, bind mounts)
are the same overlay without an upper directory.

Mounts live under ``<root>/build-tmp/<build's lease>/<random>/`` and are always
unmounted on the way out. That lease directory is registered on the build's store
lease before anything is made in it, so the next lamina command that reaps leases
unmounts and removes what a killed build left there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lamina._fsutil import write_all
from lamina._mount import MNT_DETACH, last_errno, libc, mount_overlay
from lamina._paths import join_in_root
from lamina.builder._dockerfile import BuildError
from lamina.errors import LaminaError
from lamina.image._gc import BUILD_SCRATCH, StoreLease


def _mount_overlay(target: Path, lowers: list[str], upper: Path | None, work: Path | None) -> None:
    rw = f",upperdir={upper},workdir={work}" if upper is not None else ""
    try:
        err = mount_overlay(target, lowers, rw)
    except ValueError:
        raise BuildError(f"the image has too many layers to mount ({len(lowers)})") from None
    if err:
        raise BuildError(f"cannot mount an overlay for the build: {os.strerror(err)}")


def unmount(target: Path) -> None:
    for _ in range(50):
        if not os.path.ismount(target):
            return
        if libc().umount2(str(target).encode(), 0) == 0:
            continue
        err = last_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        libc().umount2(str(target).encode(), MNT_DETACH)


def scratch_dir(root: Path, lease: StoreLease) -> Path:
    """A fresh directory in the build's own under ``<root>/build-tmp``."""
    path = lease.scratch_dir(root / BUILD_SCRATCH) / secrets.token_hex(6)
    path.mkdir()
    return path


def remove_scratch(path: Path) -> None:
    """Remove a ``scratch_dir`` (its mounts are gone by now)."""
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def overlay_view(scratch: Path, lowers: list[Path], *, writable: bool) -> Iterator[Path]:
    """Mount the stack ``lowers`` (top first) at ``scratch/merged`` (``view`` when
    read-only); writable views put their changes in ``scratch/upper``."""
    lower = [str(p) for p in lowers]
    # Overlayfs wants one lower dir with an upper dir, two without: pad with empty ones.
    n = 0
    while len(lower) < (1 if writable else 2):
        empty = scratch / f"empty{n}"
        empty.mkdir(exist_ok=True)
        lower.append(str(empty))
        n += 1
    for p in lower:
        if any(c in p for c in ",:"):
            raise BuildError(f"cannot mount a layer whose path has ',' or ':': {p}")
    target = scratch / ("merged" if writable else "view")
    target.mkdir(exist_ok=True)
    upper = work = None
    if writable:
        upper, work = scratch / "upper", scratch / "work"
        upper.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        os.chmod(upper, 0o755)
    _mount_overlay(target, lower, upper, work)
    try:
        yield target
    finally:
        unmount(target)


# ------------------------------------------------------------------ paths in a root


def resolve_in(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """``path`` inside the tree ``root`` as a host path, symlinks resolved as if
    ``root`` were ``/`` (``..`` and absolute links stay inside). Missing components
    are kept as they are."""
    try:
        return join_in_root(root, path, follow_final=follow_last)
    except LaminaError:
        raise BuildError(f"too many levels of symbolic links in {path}") from None


# ------------------------------------------------------------------ users and groups


def _db_lookup(path: Path, name: str, field_count: int) -> list[str] | None:
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= field_count and fields[0] == name:
            return fields
    return None


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def resolve_owner(root: Path, spec: str, where: str) -> Owner:
    """``user[:group]`` (names or numbers) against the image's /etc/passwd and
    /etc/group, as COPY --chown does: a user alone also gives its primary group
    when named, the same number when numeric."""
    user, _, group = spec.partition(":")
    passwd = resolve_in(root, "/etc/passwd")
    groups = resolve_in(root, "/etc/group")
    if user.isdigit():
        uid = int(user)
        gid = uid
    else:
        entry = _db_lookup(passwd, user, 4)
        if entry is None:
            raise BuildError(
                f"{where}: unable to find user {user}: no matching entries in passwd file"
            )
        uid, gid = int(entry[2]), int(entry[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gentry = _db_lookup(groups, group, 3)
            if gentry is None:
                raise BuildError(
                    f"{where}: unable to find group {group}: no matching entries in group file"
                )
            gid = int(gentry[2])
    return Owner(uid, gid)


def user_owner(root: Path, user: str) -> Owner:
    """The owner WORKDIR gives a new directory under ``USER user`` (root if unknown)."""
    if not user:
        return Owner(0, 0)
    try:
        return resolve_owner(root, user, "USER")
    except BuildError:
        return Owner(0, 0)


_CHMOD_SYMBOLIC = re.compile(r"([ugoa]*)([-+=])([rwxXst]*)")


def parse_chmod(spec: str, where: str) -> str:
    """Validate --chmod: octal, or symbolic (u+x,go-w) as newer BuildKit allows."""
    if re.fullmatch(r"[0-7]{1,4}", spec):
        return spec
    if all(_CHMOD_SYMBOLIC.fullmatch(p) for p in spec.split(",")):
        return spec
    raise BuildError(f"{where}: invalid --chmod={spec}: want an octal mode such as 0755")


def apply_chmod(spec: str, mode: int, is_dir: bool) -> int:
    if spec.isdigit():
        return int(spec, 8)
    for part in spec.split(","):
        m = _CHMOD_SYMBOLIC.fullmatch(part)
        assert m is not None
        who, op, perms = m.groups()
        mask = 0
        for w in who or "a":
            mask |= {"u": 0o4700, "g": 0o2070, "o": 0o0007, "a": 0o6777}[w]
        bits = 0
        for p in perms:
            if p == "r":
                bits |= 0o444
            elif p == "w":
                bits |= 0o222
            elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                bits |= 0o111
            elif p == "s":
                bits |= 0o6000
            elif p == "t":
                bits |= 0o1000
        bits &= mask | (0o1000 if "t" in perms else 0)
        if op == "+":
            mode |= bits
        elif op == "-":
            mode &= ~bits
        else:
            mode = (mode & ~mask) | bits
    return mode & 0o7777


# ------------------------------------------------------------------ copying


@dataclass
class CopyOptions:
    owner: Owner | None  # None: keep the source's owner
    chmod: str | None
    keep_xattrs: bool = False


def make_parents(path: Path, root: Path, owner: Owner | None) -> None:
    """mkdir -p the directories above ``path`` (inside ``root``), new ones 0755
    owned by ``owner`` (root when None)."""
    missing: list[Path] = []
    p = path.parent
    while p != root and not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    if os.path.lexists(p) and not os.path.isdir(p):
        raise BuildError(
            f"cannot copy to {path.relative_to(root)}: {p.relative_to(root)} is not a directory"
        )
    for d in reversed(missing):
        os.mkdir(d, 0o755)
        os.chmod(d, 0o755)
        o = owner or Owner(0, 0)
        os.lchown(d, o.uid, o.gid)


def _clear(dst: str, *, for_dir: bool) -> None:
    """Make room for a new entry at ``dst``: a directory stays when a directory comes."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if for_dir:
            return
        shutil.rmtree(dst)
    else:
        os.unlink(dst)


def _copy_xattrs(src: str, dst: str) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(("trusted.overlay.", "user.overlay.")) or name == "security.selinux":
            continue
        with contextlib.suppress(OSError):
            os.setxattr(
                dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False
            )


def _mode_for(st: os.stat_result, opts: CopyOptions, is_dir: bool) -> int:
    mode = stat.S_IMODE(st.st_mode)
    return apply_chmod(opts.chmod, mode, is_dir) if opts.chmod else mode


def _owner_for(st: os.stat_result, opts: CopyOptions) -> tuple[int, int]:
    return (opts.owner.uid, opts.owner.gid) if opts.owner else (st.st_uid, st.st_gid)


def copy_file(src: str, dst: str, st: os.stat_result, opts: CopyOptions) -> None:
    _clear(dst, for_dir=False)
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fout = os.open(
            dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            remaining = st.st_size
            while remaining > 0:
                n = os.sendfile(fout, fin, None, min(remaining, 1 << 30))
                if n == 0:
                    break
                remaining -= n
            uid, gid = _owner_for(st, opts)
            os.fchown(fout, uid, gid)
            os.fchmod(fout, _mode_for(st, opts, False))
            if opts.keep_xattrs:
                _copy_xattrs(src, dst)
            os.utime(fout, ns=(st.st_mtime_ns, st.st_mtime_ns))
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def write_file(dst: str, data: bytes, mode: int, owner: Owner, mtime_ns: int | None) -> None:
    _clear(dst, for_dir=False)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, mode)
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def copy_entry(src: str, dst: str, st: os.stat_result, opts: CopyOptions) -> None:
    """Copy one non-directory entry (file, symlink, device, fifo)."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        copy_file(src, dst, st, opts)
        return
    _clear(dst, for_dir=False)
    uid, gid = _owner_for(st, opts)
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
        os.lchown(dst, uid, gid)
        os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
        return
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        os.lchown(dst, uid, gid)
        os.chmod(dst, _mode_for(st, opts, False))
        os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
    # sockets are not copied, as tar and BuildKit skip them


def make_dir(dst: str, st: os.stat_result, opts: CopyOptions) -> None:
    _clear(dst, for_dir=True)
    if not os.path.isdir(dst):
        os.mkdir(dst, 0o700)
    uid, gid = _owner_for(st, opts)
    os.lchown(dst, uid, gid)
    os.chmod(dst, _mode_for(st, opts, True))


def finish_dir(dst: str, st: os.stat_result) -> None:
    """Directory times last, once its contents are written."""
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_entries(
    entries: Iterable[tuple[str, str, os.stat_result]], dst_root: str, opts: CopyOptions
) -> None:
    """Copy (name relative to ``dst_root``, source path, lstat) entries, each directory
    before what it holds, into the existing directory ``dst_root``; directory times are
    set last, once nothing more is written into them."""
    dirs: list[tuple[str, os.stat_result]] = []
    for rel, path, st in entries:
        target = os.path.join(dst_root, rel)
        if stat.S_ISDIR(st.st_mode):
            make_dir(target, st, opts)
            dirs.append((target, st))
        else:
            copy_entry(path, target, st, opts)
    for d, st in reversed(dirs):
        finish_dir(d, st)


def copy_tree(src_root: str, dst_root: str, opts: CopyOptions) -> None:
    """Copy the contents of the directory ``src_root`` into ``dst_root`` (an existing
    directory), recursively, keeping types, modes, times (and owners unless
    ``opts.owner``)."""
    stack: list[tuple[str, str, os.stat_result | None]] = [(src_root, dst_root, None)]
    dirs: list[tuple[str, os.stat_result]] = []
    while stack:
        s, d, st = stack.pop()
        if st is not None:
            make_dir(d, st, opts)
            if opts.keep_xattrs:
                _copy_xattrs(s, d)
            dirs.append((d, st))
        with os.scandir(s) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            est = e.stat(follow_symlinks=False)
            target = os.path.join(d, e.name)
            if stat.S_ISDIR(est.st_mode):
                stack.append((e.path, target, est))
            else:
                copy_entry(e.path, target, est, opts)
    for d, st in reversed(dirs):
        finish_dir(d, st)
