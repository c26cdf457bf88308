"""Resolve a container's ``--user`` against the image's own /etc/passwd and /etc/group.

Semantics are runc's ``user.GetExecUser``, which Docker uses: ``user``,
``user:group``, each part a name or a number. A name must exist in the rootfs'
files; a number need not (it then gets gid 0 and HOME ``/``). Supplementary
groups come from /etc/group membership, and only when no group is given.

The rootfs belongs to an image, so it is untrusted: its files are opened through
``secure_join``, which resolves symlinks as if ``rootfs`` were ``/`` and can never
leave it (an ``/etc/passwd -> /host/etc/shadow`` link reads inside the rootfs).
Pure reads; nothing is cached because the rootfs changes between containers.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from lamina.errors import LaminaError
from lamina.runtime._paths import secure_join

_MAX_ID = 2**31 - 1
_MAX_FILE = 16 * 1024 * 1024  # a passwd file this big is an attack, not a user list


@dataclass(frozen=True)
class ExecUser:
    """Who the container process runs as."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = field(default_factory=tuple)
    home: str = "/"
    name: str = ""  # the passwd entry matched, "" if none


def _read_lines(rootfs: Path, path: str) -> list[list[str]] | None:
    """The colon-separated records of a file in the rootfs; None when it is absent."""
    try:
        # O_NONBLOCK: a FIFO planted at /etc/passwd must not hang us.
        fd = os.open(
            secure_join(rootfs, path),
            os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
        )
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LaminaError(f"{path} in the image is not a regular file")
            if st.st_size > _MAX_FILE:
                raise LaminaError(f"{path} in the image is larger than {_MAX_FILE} bytes")
            data = f.read()
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            return None
        raise LaminaError(f"cannot read {path} in the image: {e.strerror}") from e
    records = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "+", "-")):
            continue
        records.append(line.split(":"))
    return records


def _int(s: str) -> int | None:
    return int(s) if s.isdigit() else None


def _check_range(n: int, what: str) -> int:
    if n > _MAX_ID:
        raise LaminaError(f"{what} {n} is out of range (0-{_MAX_ID})")
    return n


def resolve_user(rootfs: Path, spec: str | None) -> ExecUser:
    """Resolve ``spec`` (``uid``, ``name``, ``uid:gid``, ``name:group``...; None or ""
    for root) against ``rootfs``. Unknown names raise LaminaError, e.g.
    ``unable to find user app: no matching entries in passwd file``."""
    spec = spec or ""
    user_arg, _, group_arg = spec.partition(":")
    uid_arg = _int(user_arg)
    gid_arg = _int(group_arg)
    result_uid, result_gid, home, name = 0, 0, "/", ""
    additional: tuple[int, ...] = ()

    passwd = _read_lines(rootfs, "/etc/passwd")
    match: list[str] | None = None
    for rec in passwd or ():
        if len(rec) < 4 or _int(rec[2]) is None or _int(rec[3]) is None:
            continue
        if (user_arg == "" and rec[2] == "0") or (uid_arg is not None and _int(rec[2]) == uid_arg):
            match = rec
            break
        if uid_arg is None and user_arg and rec[0] == user_arg:
            match = rec
            break
    if match is not None:
        name = match[0]
        result_uid, result_gid = int(match[2]), int(match[3])
        if len(match) > 5 and match[5]:
            home = match[5]
    elif user_arg:
        if uid_arg is None:
            raise LaminaError(f"unable to find user {user_arg}: no matching entries in passwd file")
        result_uid = _check_range(uid_arg, "uid")

    if group_arg or name:
        groups = _read_lines(rootfs, "/etc/group") or []
        if group_arg:
            found: int | None = None
            for rec in groups:
                if len(rec) < 3 or _int(rec[2]) is None:
                    continue
                if (gid_arg is not None and int(rec[2]) == gid_arg) or (
                    gid_arg is None and rec[0] == group_arg
                ):
                    found = int(rec[2])
                    break
            if found is None:
                if gid_arg is None:
                    raise LaminaError(
                        f"unable to find group {group_arg}: no matching entries in group file"
                    )
                found = _check_range(gid_arg, "gid")
            result_gid = found
        else:
            # Supplementary groups only in the implicit form, as runc does.
            gids: list[int] = []
            for rec in groups:
                if len(rec) < 4 or _int(rec[2]) is None:
                    continue
                if name in rec[3].split(","):
                    gid = int(rec[2])
                    if gid not in gids:
                        gids.append(gid)
            additional = tuple(gids)
    return ExecUser(result_uid, result_gid, additional, home, name)
