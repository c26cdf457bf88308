"""lamina.daemon: one long-running process per root serving the engine over HTTP
(docs/DAEMON.md). The CLI's ``lamina daemon`` calls ``serve``; this module imports
nothing else until then, so a client that only needs ``default_host`` pays for
nothing.

Public API::

    DaemonOptions(root, hosts=[...], tlscert=, tlskey=, tlscacert=, token_file=, group=, ...)
    serve(options, ready=callback)      # until SIGTERM/SIGINT
    default_host(root, system_root=)    # unix:///run/lamina/lamina.sock or unix://ROOT/lamina.sock
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.daemon._daemon import DaemonOptions, default_host, serve

_LAZY = {
    "DaemonOptions": "lamina.daemon._daemon",
    "default_host": "lamina.daemon._daemon",
    "serve": "lamina.daemon._daemon",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina.daemon' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["DaemonOptions", "default_host", "serve"]
