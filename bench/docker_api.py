"""Docker's Engine API on lamina's daemon (issue 13): in one run, alternating, the
installed docker CLI against ``lamina daemon --docker-host`` and against podman.

1. ``docker run --rm IMAGE true`` against lamina's Docker socket vs ``podman run --rm
   IMAGE true`` (each on its default network; also both with ``--network none``).
2. ``docker ps -a`` with 100 containers against lamina's socket vs against ``podman
   system service`` (podman's Docker-compatible API) holding 100 containers too.

Goals: lamina/podman <= 0.5 for both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report, timed  # noqa: E402
from run_container import IMAGE, Peers, prepared_peers  # noqa: E402


@contextlib.contextmanager
def serving(argv: list[str], sock: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    """A server process started with ``argv``, until its socket exists; then stopped."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{argv[0]} did not serve {sock}")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(30)


FAILED: list[str] = []  # docker runs that failed (and were timed again): reported


def timed_run(argv: list[str], env: dict[str, str]) -> float:
    """``timed``, but a failed ``docker run`` is noted and run once more (a --rm race
    of the daemon shows as 'no such container'; the summary counts them)."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode == 0:
        return time.perf_counter() - t0
    FAILED.append(proc.stderr.decode(errors="replace").strip().splitlines()[0])
    return timed(argv, env)


def docker(sock: Path, config: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=str(config))
    return ["docker"], env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "docker_api")
    args = parser.parse_args()
    work: Path = args.work
    with prepared_peers(work) as peers:
        lsock, psock = work / "docker.sock", work / "podman.sock"
        (work / "docker-config").mkdir()
        lam = [*peers.lamina, "daemon", "--docker-host", f"unix://{lsock}"]
        pod = [*peers.podman, "system", "service", "--time", "0", f"unix://{psock}"]
        with serving(lam, lsock), serving(pod, psock, peers.podman_env):
            results = _compare(args, peers, *docker(lsock, work / "docker-config"),
                               docker(psock, work / "docker-config")[1])  # fmt: skip
    med = {k: statistics.median(v) * 1000 for k, v in results.items()}
    for k, v in med.items():
        print(f"{k:28s} median {v:.1f} ms")
    summary = {
        "median_ms": med,
        "run/podman": med["docker_run_lamina"] / med["podman_run"],
        "run_none/podman_none": med["docker_run_none_lamina"] / med["podman_run_none"],
        "ps/podman_service": med["docker_ps_lamina"] / med["docker_ps_podman"],
        "docker_run_failures": FAILED,
        "containers": args.containers,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
    }
    report(
        "docker_api",
        summary,
        f"docker_api: docker run (lamina)/podman run = {summary['run/podman']:.2f} "
        f"(goal <= 0.5); docker ps -a lamina/podman service = "
        f"{summary['ps/podman_service']:.2f} (goal <= 0.5)",
    )


def _compare(
    args: argparse.Namespace,
    peers: Peers,
    dock: list[str],
    lenv: dict[str, str],
    penv_docker: dict[str, str],
) -> dict[str, list[float]]:
    podman, penv = peers.podman, peers.podman_env
    run = [*dock, "run", "--rm", IMAGE, "true"]
    run_none = [*dock, "run", "--rm", "--network", "none", IMAGE, "true"]
    prun = [*podman, "run", "--rm", IMAGE, "true"]
    prun_none = [*podman, "run", "--rm", "--network", "none", IMAGE, "true"]
    for argv, env in ((run, lenv), (run_none, lenv), (prun, penv), (prun_none, penv)):
        timed_run(argv, env)  # warm caches once each
    results: dict[str, list[float]] = {
        "docker_run_lamina": [], "podman_run": [], "docker_run_none_lamina": [],
        "podman_run_none": [], "docker_ps_lamina": [], "docker_ps_podman": [],
    }  # fmt: skip
    for _ in range(args.rounds):
        results["docker_run_lamina"].append(timed_run(run, lenv))
        results["podman_run"].append(timed(prun, penv))
        results["docker_run_none_lamina"].append(timed_run(run_none, lenv))
        results["podman_run_none"].append(timed(prun_none, penv))
    for i in range(args.containers):
        subprocess.run([*peers.lamina, "create", "--name", f"c{i}", IMAGE, "true"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run([*podman, "create", "--name", f"c{i}", IMAGE, "true"],
                       check=True, env=penv, stdout=subprocess.DEVNULL)  # fmt: skip
    ps = [*dock, "ps", "-a"]
    for env in (lenv, penv_docker):
        rows = subprocess.run(ps, env=env, capture_output=True, text=True, check=True)
        assert len(rows.stdout.splitlines()) == args.containers + 1, rows.stdout[-500:]
    for _ in range(args.rounds):
        results["docker_ps_lamina"].append(timed(ps, lenv))
        results["docker_ps_podman"].append(timed(ps, penv_docker))
    return results


if __name__ == "__main__":
    main()
