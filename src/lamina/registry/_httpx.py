"""httpx, imported without its command-line tool.

httpx's ``__init__`` imports ``httpx._main`` (its ``httpx`` console command) whenever
click and rich are installed, as they are for lamina's CLI: about 40 ms of rich at the
start of every pull and push, for code lamina never calls. Marking the module absent
before the first import makes httpx fall back to its stub ``main``. Every registry
module imports httpx from here.
"""

import sys

if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx

__all__ = ["httpx"]
