"""The remote CLI's container start (issue 12): in one run, alternating,
``lamina --host unix://... run --rm IMAGE true`` (a daemon serving the root) against
``podman run --rm IMAGE true`` (each on its default network: the issue's comparison)
and bare ``runc run``; the same two with ``--network none`` (like for like without
network setup); and the client's start-up alone (``lamina --host ... version`` is
answered without the engine) with its import time.
Goals: lamina remote/podman <= 0.4, lamina remote/runc <= 2.0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report, timed  # noqa: E402
from run_container import IMAGE, prepared_peers  # noqa: E402


def import_ms(module: str) -> float:
    """The median wall time of importing ``module`` in a fresh interpreter, less the
    interpreter's own start."""

    def once(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    bare = statistics.median(once("pass") for _ in range(7))
    full = statistics.median(once(f"import {module}") for _ in range(7))
    return (full - bare) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "remote")
    args = parser.parse_args()
    with prepared_peers(args.work) as peers:
        sock = args.work / "lamina.sock"
        daemon = subprocess.Popen(
            [*peers.lamina, "daemon", "--host", f"unix://{sock}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            remote = [*peers.lamina, "--host", f"unix://{sock}"]
            run = [*remote, "run", "--rm", "--network", "none", IMAGE, "true"]
            bridge = [*remote, "run", "--rm", IMAGE, "true"]
            podman = [*peers.podman, "run", "--rm", "--network", "none", IMAGE, "true"]
            podman_bridge = [*peers.podman, "run", "--rm", IMAGE, "true"]
            timed(run), timed(bridge), timed(podman, peers.podman_env), timed([*peers.runc, "w"])
            timed(podman_bridge, peers.podman_env)
            results: dict[str, list[float]] = {
                "lamina_remote": [], "podman": [], "runc": [], "lamina_remote_bridge": [],
                "podman_bridge": [], "client_version": [],
            }  # fmt: skip
            for i in range(args.rounds):
                results["lamina_remote"].append(timed(run))
                results["podman"].append(timed(podman, peers.podman_env))
                results["runc"].append(timed([*peers.runc, f"b{i}"]))
                results["lamina_remote_bridge"].append(timed(bridge))
                results["podman_bridge"].append(timed(podman_bridge, peers.podman_env))
                results["client_version"].append(timed([*remote, "version"]))
        finally:
            daemon.terminate()
            daemon.wait(30)
    med = {k: statistics.median(v) * 1000 for k, v in results.items()}
    for k, v in med.items():
        print(f"{k:22s} median {v:.1f} ms")
    imports = {m: import_ms(m) for m in ("lamina.cli.main", "lamina.client", "http.client")}
    summary = {
        "median_ms": med,
        "lamina_remote/podman": med["lamina_remote"] / med["podman"],
        "lamina_remote/runc": med["lamina_remote"] / med["runc"],
        "default_network_lamina_remote/podman": med["lamina_remote_bridge"]
        / med["podman_bridge"],
        "import_ms": imports,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
    }
    report(
        "remote",
        summary,
        "remote: lamina --host run/podman run (default networks) = "
        f"{summary['default_network_lamina_remote/podman']:.2f}, with --network none "
        f"{summary['lamina_remote/podman']:.2f} (goal <= 0.4); /runc = "
        f"{summary['lamina_remote/runc']:.2f} (goal <= 2.0)",
    )


if __name__ == "__main__":
    main()
