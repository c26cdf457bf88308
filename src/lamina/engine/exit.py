"""The exit command: ``python -m lamina.engine.exit ROOT ID``.

A container's monitor (conmon; a VM's supervisor) runs it, detached, once the
workload has exited and the exit file is written, unless a lamina process waiting
for that container does the same work itself (``waiter``: the fast path of ``run``
and ``wait``). It is the engine's finish step with no other lamina process alive:
the exit recorded (code, OOM kill, time), the run torn down, ``--rm`` containers
removed. Idempotent: running it twice, or after another process finished the
container, does nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Skip the Python finish when a lamina process is already waiting for this container
# (it finishes it itself, sooner); otherwise run it, from "/" (the container's
# directory, the monitor's working directory, goes when a --rm container is removed).
# $1 root, $2 id, $3 python, $4 the directory with the waiter file.
_SCRIPT = (
    'p=$(cat "$4/waiter" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && exit 0; '
    'cd / && exec "$3" -m lamina.engine.exit "$1" "$2"'
)


def command(root: Path, cid: str, waiter_dir: Path) -> list[str]:
    """The argv a monitor runs for container ``cid`` once its workload has exited."""
    return ["/bin/sh", "-c", _SCRIPT, "lamina-exit", str(root), cid, sys.executable,
            str(waiter_dir)]  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m lamina.engine.exit ROOT CONTAINER_ID", file=sys.stderr)
        return 2
    from lamina.engine._engine import Engine
    from lamina.errors import LaminaError

    # No default runtime to look up: the container's record names the one it runs on.
    engine = Engine(Path(argv[0]), oci_runtime=None)
    try:
        engine.finish(argv[1])
    except LaminaError as e:
        print(f"lamina exit {argv[1][:12]}: {e}", file=sys.stderr)
        return 1
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
