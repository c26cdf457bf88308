"""Where lamina keeps its state.

All state lives under one root directory: ``--root DIR``, else ``$LAMINA_ROOT``,
else ``/var/lib/lamina`` for root and ``~/.local/share/lamina`` for other users.
Tests always pass their own root.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_root() -> Path:
    env = os.environ.get("LAMINA_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/lamina")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "lamina"
