"""Opening a runtime backend by name on a lamina root.

``open_runtime(root)`` is how the CLI, the builder and deployments get a
``Runtime``; backends are imported only when asked for, so a command pays only for
the one it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lamina.errors import LaminaError
from lamina.runtime._interface import Runtime

BACKENDS = ("oci",)


def open_runtime(root: Path, backend: str = "oci", **options: Any) -> Runtime:
    """The ``backend`` runtime ("oci": runc + conmon) over ``root``. ``options`` go to
    the backend: ``oci_runtime=`` ("runc", "crun" or a path: the OCI runtime new
    containers are created with; missing or unusable here -> LaminaError, before
    anything is done), ``registry_config=`` for pulls."""
    if backend in ("oci", "process", "runc"):
        from lamina.runtime._oci import OciRuntime

        return OciRuntime(Path(root), **options)
    raise LaminaError(f"unknown runtime backend {backend!r} (known: {', '.join(BACKENDS)})")
