"""The exit command of process containers started before the engine:
``python -m lamina.runtime.cleanup ROOT ID``.

Their conmon still names this module; the work is the engine's exit command's
(``lamina.engine.exit``), which it becomes (exec: the runtime layer imports nothing
above it).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "lamina.engine.exit", *sys.argv[1:]])
