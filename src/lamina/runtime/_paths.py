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
from pathlib import Path

from lamina._paths import join_in_root


def secure_join(root: Path, path: str, *, follow_final: bool = True) -> Path:
    """The host path of container path ``path`` under ``root`` (itself resolved on the
    host), with every symlink met resolved inside ``root``, never outside it.

    The final component is followed only when ``follow_final`` (or when ``path``
    ends in ``/``). Components that do not exist are kept as written. Raises
    LaminaError on a symlink loop.
    """
    return join_in_root(os.path.realpath(root), path, follow_final=follow_final)
