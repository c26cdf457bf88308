"""Container start benchmark (issue 3): ``lamina run --rm --network none IMAGE true``
against ``podman run --rm --network none IMAGE true`` and bare ``runc run`` on a prepared
bundle, alternating, in one run; then the memory held per running container
(monitor RSS) with 50 idle containers, for lamina (conmon) and podman (conmon).

Goals: lamina/podman <= 0.7, lamina/runc <= 2.0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report, timed  # noqa: E402

from lamina._mount import unmount_under  # noqa: E402

# The console script, as a user runs it (python -m would add runpy to start-up).
LAMINA = [str(Path(sys.executable).with_name("lamina"))]
IMAGE = "bench/busybox:latest"
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
"""


def rss_kib(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out.append(int(line.split()[1]))
        except FileNotFoundError:
            continue
    return out


def conmon_pids(marker: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"conmon") and marker.encode() in b" ".join(cmdline):
            pids.append(int(d))
    return pids


@dataclass
class Peers:
    """A work dir with the image in a lamina root and in podman's, and a bare runc
    bundle that runs ``true``: the commands to compare, and podman's environment."""

    lamina: list[str]
    podman: list[str]
    podman_env: dict[str, str]
    runc: list[str]  # add a container name
    lamina_root: Path


@contextlib.contextmanager
def prepared_peers(work: Path) -> Iterator[Peers]:
    """The peers set up in ``work`` (made anew); everything removed at the end."""
    from lamina.testing import make_busybox_rootfs

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lroot = work / "lamina"
    lam = [*LAMINA, "--root", str(lroot)]
    conf = work / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    penv = dict(os.environ, CONTAINERS_CONF=str(conf))
    podman = [
        "podman",
        "--root",
        str(work / "p"),
        "--runroot",
        str(work / "pr"),
        "--storage-driver",
        "overlay",
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "none",
    ]
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        subprocess.run([*lam, "import", str(rootfs), IMAGE], check=True, stdout=subprocess.DEVNULL)
        archive = work / "image.tar"
        subprocess.run([*lam, "save", "-o", str(archive), IMAGE], check=True)
        subprocess.run(
            [*podman, "load", "-q", "-i", str(archive)],
            check=True,
            env=penv,
            stdout=subprocess.DEVNULL,
        )
        # bare runc: a prepared bundle, as cheap as a container start can be
        bundle = work / "bundle"
        shutil.copytree(rootfs, bundle / "rootfs", symlinks=True)
        subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["true"]
        (bundle / "config.json").write_text(json.dumps(spec))
        runc = ["runc", "--root", str(work / "runc"), "run", "--bundle", str(bundle)]
        yield Peers(lam, podman, penv, runc, lroot)
    finally:
        subprocess.run(
            [*podman, "rm", "-f", "-a", "-t", "0"],
            env=penv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        subprocess.run(
            [*podman, "system", "reset", "-f"],
            env=penv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--idle", type=int, default=50)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "run")
    args = parser.parse_args()
    work: Path = args.work
    with prepared_peers(work) as peers:
        lam, podman, penv, runc = peers.lamina, peers.podman, peers.podman_env, peers.runc
        lroot = peers.lamina_root
        try:
            _compare(args, work, lam, podman, penv, runc, lroot)
        finally:
            subprocess.run(
                [*lam, "rm", "-f", *[f"idle{i}" for i in range(args.idle)]],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )


def _compare(
    args: argparse.Namespace,
    work: Path,
    lam: list[str],
    podman: list[str],
    penv: dict[str, str],
    runc: list[str],
    lroot: Path,
) -> None:
    # warm caches (image unpack, page cache) once for each
    timed([*lam, "run", "--rm", "--network", "none", IMAGE, "true"])
    timed([*podman, "run", "--rm", "--network", "none", IMAGE, "true"], penv)
    timed([*runc, "warm"])

    results: dict[str, list[float]] = {"lamina": [], "podman": [], "runc": []}
    for i in range(args.rounds):
        results["lamina"].append(timed([*lam, "run", "--rm", "--network", "none", IMAGE, "true"]))
        results["podman"].append(
            timed([*podman, "run", "--rm", "--network", "none", IMAGE, "true"], penv)
        )
        results["runc"].append(timed([*runc, f"b{i}"]))
    py = [timed([sys.executable, "-c", "pass"]) for _ in range(5)]
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"{k:7s} median {v * 1000:.1f} ms")
    print(f"python  median {statistics.median(py) * 1000:.1f} ms (interpreter floor)")

    # memory per idle container: conmon RSS
    ids = []
    for i in range(args.idle):
        out = subprocess.run(
            [*lam, "run", "-d", "--name", f"idle{i}", IMAGE, "sleep", "600"],
            check=True,
            capture_output=True,
            text=True,
        )
        ids.append(out.stdout.strip())
    lamina_rss = rss_kib(conmon_pids(str(lroot)))
    for i in range(args.idle):
        subprocess.run(
            [
                *podman,
                "run",
                "-d",
                "--network",
                "none",
                "--name",
                f"idle{i}",
                IMAGE,
                "sleep",
                "600",
            ],
            check=True,
            env=penv,
            stdout=subprocess.DEVNULL,
        )
    podman_rss = rss_kib(conmon_pids(str(work / "pr")))
    summary = {
        "median_ms": {k: v * 1000 for k, v in med.items()},
        "python_floor_ms": statistics.median(py) * 1000,
        "lamina/podman": med["lamina"] / med["podman"],
        "lamina/runc": med["lamina"] / med["runc"],
        "idle_containers": args.idle,
        "monitor_rss_kib_mean": {
            "lamina": statistics.mean(lamina_rss) if lamina_rss else None,
            "podman": statistics.mean(podman_rss) if podman_rss else None,
        },
        "monitors_found": {"lamina": len(lamina_rss), "podman": len(podman_rss)},
        "rounds": args.rounds,
    }
    report(
        "run",
        summary,
        f"run: lamina/podman = {summary['lamina/podman']:.2f} (goal <= 0.7); "
        f"lamina/runc = {summary['lamina/runc']:.2f} (goal <= 2.0)",
    )


if __name__ == "__main__":
    main()
