"""conmon's exit command: ``python -m lamina.runtime.cleanup ROOT ID``.

conmon runs it (detached, output discarded) once a container's workload has exited
and the exit file is written, unless a lamina process waiting for that container
does the same work itself. It records the exit (code, OOM kill, time), unmounts the
root filesystem, removes runc state and cgroups, and removes ``--rm`` containers.
Idempotent: running it twice, or after another process cleaned up, does nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m lamina.runtime.cleanup ROOT CONTAINER_ID", file=sys.stderr)
        return 2
    from lamina.errors import LaminaError
    from lamina.runtime._oci import OciRuntime

    # No default runtime to look up: the container's row names the one it runs on.
    runtime = OciRuntime(Path(argv[0]), oci_runtime=None)
    try:
        runtime.cleanup(argv[1])
    except LaminaError as e:
        print(f"lamina cleanup {argv[1][:12]}: {e}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
