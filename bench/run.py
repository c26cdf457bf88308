"""``make bench``: every benchmark, each printing its ratios against its peers.

Run one with ``python bench/run.py pull``; figures go in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "pull", "run_container", "network", "build", "vm", "daemon_http", "daemon", "remote",
    "docker_api", "deploy", "ingress",
]  # fmt: skip


def main() -> None:
    names = sys.argv[1:] or BENCHES
    failed = []
    for name in names:
        print(f"\n== bench: {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{name}.py")]).returncode != 0:
            failed.append(name)
    if failed:
        sys.exit(f"bench: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
