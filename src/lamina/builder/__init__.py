"""lamina.builder: Dockerfile builds on lamina's own image plane and runtime.

Public API::

    build(root, BuildOptions(context=..., tags=[...], ...), progress=None) -> BuildResult
    prune(root) -> (steps forgotten, removed IDs)   # ``lamina builder prune``
    BuildError                                       # Dockerfile:LINE: what is wrong
    Progress / PlainProgress / RichProgress          # what the build shows
    parse(text, name) -> Dockerfile                  # the parsed model

Word expansion is ``lamina.builder.shell``; .dockerignore handling is private
(``_dockerignore``). Names are imported on first use, so that importing the
package costs nothing until a build runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.builder._dockerfile import BuildError, Dockerfile, Instruction, Stage, parse
    from lamina.builder._executor import BuildResult, build, prune
    from lamina.builder._options import BuildOptions
    from lamina.builder._progress import PlainProgress, Progress, RichProgress

_LAZY: dict[str, str] = {
    "BuildError": "lamina.builder._dockerfile",
    "BuildOptions": "lamina.builder._options",
    "BuildResult": "lamina.builder._executor",
    "Dockerfile": "lamina.builder._dockerfile",
    "Instruction": "lamina.builder._dockerfile",
    "PlainProgress": "lamina.builder._progress",
    "Progress": "lamina.builder._progress",
    "RichProgress": "lamina.builder._progress",
    "Stage": "lamina.builder._dockerfile",
    "build": "lamina.builder._executor",
    "parse": "lamina.builder._dockerfile",
    "prune": "lamina.builder._executor",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina.builder' has no attribute {name!r}")
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
