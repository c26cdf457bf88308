"""lamina.build: Dockerfile builds on lamina's own image plane and runtime.

Public API::

    build(root, BuildOptions(context=..., tags=[...], ...), progress=None) -> BuildResult
    prune(root) -> (steps forgotten, removed IDs)   # ``lamina builder prune``
    BuildError                                       # Dockerfile:LINE: what is wrong
    Progress / PlainProgress / RichProgress          # what the build shows
    parse(text, name) -> Dockerfile                  # the parsed model

Word expansion is ``lamina.build.shell``; .dockerignore handling is private
(``_dockerignore``). Names are imported on first use, so that importing the
package costs nothing until a build runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.build._dockerfile import BuildError, Dockerfile, Instruction, Stage, parse
    from lamina.build._executor import BuildOptions, BuildResult, build, prune
    from lamina.build._progress import PlainProgress, Progress, RichProgress

_LAZY: dict[str, str] = {
    "BuildError": "lamina.build._dockerfile",
    "BuildOptions": "lamina.build._executor",
    "BuildResult": "lamina.build._executor",
    "Dockerfile": "lamina.build._dockerfile",
    "Instruction": "lamina.build._dockerfile",
    "PlainProgress": "lamina.build._progress",
    "Progress": "lamina.build._progress",
    "RichProgress": "lamina.build._progress",
    "Stage": "lamina.build._dockerfile",
    "build": "lamina.build._executor",
    "parse": "lamina.build._dockerfile",
    "prune": "lamina.build._executor",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina.build' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BuildError",
    "BuildOptions",
    "BuildResult",
    "Dockerfile",
    "Instruction",
    "PlainProgress",
    "Progress",
    "RichProgress",
    "Stage",
    "build",
    "parse",
    "prune",
]
