"""Resolving a container path inside a root filesystem on the host, safely.

A container's root filesystem belongs to an image, so it is untrusted: a symlink in
it (``evil -> /``, ``up -> ../../..``) must never lead lamina to a host file when it
reads ``/etc/passwd`` for ``--user``, fills a volume from the image, or copies
files in and out. ``secure_join`` resolves every symlink on the way as if the root
were ``/`` (as filepath-securejoin does for runc); ``..`` stops at the root.
Pure path computation: nothing is opened, and the result may not exist.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lamina.errors import LaminaError

_MAX_SYMLINKS = 40  # the kernel's bound on a path walk (ELOOP)


def secure_join(root: Path, path: str, *, follow_final: bool = True) -> Path:
    """The host path of container path ``path`` under ``root`` (itself resolved on the
    host), with every symlink met resolved inside ``root``, never outside it.

    The final component is followed only when ``follow_final`` (or when ``path``
    ends in ``/``). Components that do not exist are kept as written. Raises
    LaminaError on a symlink loop.
    """
    base = os.path.realpath(root)
    todo = path.split("/")[::-1]  # a stack: the next component at the end
    cur: list[str] = []
    links = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if cur:
                cur.pop()
            continue
        cur.append(comp)
        if not todo and not follow_final:
            break
        host = base + "/" + "/".join(cur)
        try:
            st = os.lstat(host)
        except OSError:
            continue  # missing (or unreadable): nothing more to resolve past it
        if not stat.S_ISLNK(st.st_mode):
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise LaminaError(f"too many levels of symbolic links resolving {path} in {root}")
        target = os.readlink(host)
        cur.pop()
        if target.startswith("/"):
            cur.clear()
        todo.extend(target.split("/")[::-1])
    return Path(base, *cur)
