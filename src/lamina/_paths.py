"""Resolving a path inside a directory tree as if the tree were ``/``.

``join_in_root`` is the one walk the runtime (``secure_join``, for container root
filesystems) and the builder (``resolve_in``, for stage trees) both use: every
symlink met is resolved inside the root, ``..`` stops at it. Pure path computation:
nothing is opened, and the result may not exist.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lamina.errors import LaminaError

MAX_SYMLINKS = 40  # the kernel's bound on a path walk (ELOOP)


def join_in_root(root: str | Path, path: str, *, follow_final: bool = True) -> Path:
    """``Path(root, ...)`` for ``path`` with every symlink on the way resolved as if
    ``root`` were ``/`` (absolute targets and ``..`` stay inside ``root``).

    The final component is followed only when ``follow_final`` (or when ``path``
    ends in ``/``). Components that do not exist are kept as written. Raises
    LaminaError on a symlink loop.
    """
    base = str(root)
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
        if links > MAX_SYMLINKS:
            raise LaminaError(f"too many levels of symbolic links resolving {path} in {root}")
        target = os.readlink(host)
        cur.pop()
        if target.startswith("/"):
            cur.clear()
        todo.extend(target.split("/")[::-1])
    return Path(base, *cur)
