"""The restarter: ``python -m lamina.engine.restarter ROOT ID LEASE FD``.

Started (``_restart.spawn``) by whichever process finished a run that its restart
policy starts again, usually the exit command with no other lamina process alive. It
adopts the lease it was handed (its lock inherited as descriptor FD), waits until the
restart is due, and starts the container through the engine
(``Engine.restart_when_due``) unless a ``stop``/``kill``/``rm``/``update`` came first.
Its lease names it in the record: once it is gone, however it ended, the next
command's reconcile tells.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 4 or not argv[3].isdigit():
        usage = "usage: python -m lamina.engine.restarter ROOT CONTAINER_ID LEASE FD"
        print(usage, file=sys.stderr)
        return 2
    from lamina import _leases
    from lamina._hooks import stop_point
    from lamina.engine._engine import Engine
    from lamina.errors import LaminaError

    root, cid, lease_id = Path(argv[0]), argv[1], argv[2]
    lease = _leases.Lease.adopt(root, lease_id, int(argv[3]))
    try:
        stop_point("restart:waiting")
        # No default runtime to look up: the container's record names the one it runs on.
        engine = Engine(root, oci_runtime=None)
        try:
            engine.restart_when_due(cid, lease_id)
        except LaminaError as e:
            print(f"lamina restart {cid[:12]}: {e}", file=sys.stderr)
            return 1
        finally:
            engine.close()
    finally:
        lease.release()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
