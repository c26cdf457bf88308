"""Network benchmark (issue 11), lamina against podman (both on netavark), in one run:

1. ``run --rm IMAGE true`` on each one's default bridge, alternating (goal: lamina/
   podman <= 0.7);
2. TCP throughput with iperf3 (Debian's, copied into the image with the libraries it
   links), container -> container on one bridge and host -> a published port
   (goal: >= 0.95: the same kernel path, nothing of lamina's in the data path);
3. 50 containers joined to one network started in parallel: all addresses unique,
   wall time against podman doing the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report, timed  # noqa: E402

from lamina._mount import unmount_under  # noqa: E402

LAMINA = [str(Path(sys.executable).with_name("lamina"))]
IMAGE = "bench/iperf:latest"
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
"""


def iperf_rootfs(dest: Path) -> Path:
    """busybox plus the host's iperf3 and every library it loads."""
    from lamina.testing import make_busybox_rootfs

    make_busybox_rootfs(dest)
    binary = shutil.which("iperf3")
    if binary is None:
        raise SystemExit("bench: iperf3 is not installed (apt-get install iperf3)")
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    files = [binary] + [p for line in out.splitlines() for p in line.split() if p.startswith("/")]
    for f in files:
        real = os.path.realpath(f)
        target = dest / f.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, target)
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def out(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {proc.stderr[-1500:]}")
    return proc.stdout


def gbits(iperf_json: str) -> float:
    return float(json.loads(iperf_json)["end"]["sum_received"]["bits_per_second"]) / 1e9


def throughput(
    tool: list[str], env: dict[str, str] | None, net: str, seconds: int
) -> dict[str, float]:
    """Container -> container on ``net`` and host -> published port, in Gbit/s."""
    port = free_port()
    name = f"iperf-srv-{os.getpid()}"
    out([*tool, "run", "-d", "--name", name, "--network", net, "-p", f"{port}:5201", IMAGE,
         "iperf3", "-s"], env)  # fmt: skip
    try:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        ip = out([*tool, "inspect", "--format", fmt, name], env).strip()
        time.sleep(0.5)  # iperf3 -s binds after the container starts
        c2c = gbits(out([*tool, "run", "--rm", "--network", net, IMAGE, "iperf3", "-c", ip,
                         "-t", str(seconds), "-J"], env))  # fmt: skip
        h2c = gbits(out(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]))
    finally:
        subprocess.run([*tool, "rm", "-f", name], env=env, capture_output=True)
    return {"container_to_container": c2c, "host_to_published_port": h2c}


def parallel(tool: list[str], env: dict[str, str] | None, net: str, n: int) -> tuple[float, int]:
    """Start ``n`` containers on ``net`` at once: (wall seconds, distinct addresses)."""

    def one(i: int) -> str:
        return out([*tool, "run", "-d", "--name", f"par{i}", "--network", net, IMAGE,
                    "sleep", "600"], env).strip()  # fmt: skip

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        ids = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    addrs = {out([*tool, "inspect", "--format", fmt, cid], env).strip() for cid in ids}
    subprocess.run([*tool, "rm", "-f", *ids], env=env, capture_output=True)
    return wall, len(addrs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "network")
    args = parser.parse_args()
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lam = [*LAMINA, "--root", str(work / "lamina")]
    conf = work / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    penv = dict(os.environ, CONTAINERS_CONF=str(conf))
    podman = ["podman", "--root", str(work / "p"), "--runroot", str(work / "pr"),
              "--storage-driver", "overlay", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
              "--events-backend", "none"]  # fmt: skip
    try:
        rootfs = iperf_rootfs(work / "rootfs")
        subprocess.run([*lam, "import", str(rootfs), IMAGE], check=True, stdout=subprocess.DEVNULL)
        archive = work / "image.tar"
        subprocess.run([*lam, "save", "-o", str(archive), IMAGE], check=True)
        subprocess.run([*podman, "load", "-q", "-i", str(archive)], check=True, env=penv,
                       stdout=subprocess.DEVNULL)  # fmt: skip

        timed([*lam, "run", "--rm", IMAGE, "true"])
        timed([*podman, "run", "--rm", IMAGE, "true"], penv)
        runs: dict[str, list[float]] = {"lamina": [], "podman": []}
        for _ in range(args.rounds):
            runs["lamina"].append(timed([*lam, "run", "--rm", IMAGE, "true"]))
            runs["podman"].append(timed([*podman, "run", "--rm", IMAGE, "true"], penv))
        med = {k: statistics.median(v) for k, v in runs.items()}

        out([*lam, "network", "create", "benchnet"])
        out([*podman, "network", "create", "benchnet"], penv)
        tput = {
            "lamina": throughput(lam, None, "benchnet", args.seconds),
            "podman": throughput(podman, penv, "benchnet", args.seconds),
        }
        par = {
            "podman": parallel(podman, penv, "benchnet", args.parallel),
            "lamina": parallel(lam, None, "benchnet", args.parallel),
        }
        summary = {
            "run_rm_true_median_ms": {k: v * 1000 for k, v in med.items()},
            "run lamina/podman": med["lamina"] / med["podman"],
            "throughput_gbit_s": tput,
            "throughput lamina/podman": {
                k: tput["lamina"][k] / tput["podman"][k] for k in tput["lamina"]
            },
            f"parallel_{args.parallel}": {
                k: {"wall_s": w, "unique_addresses": n} for k, (w, n) in par.items()
            },
            "parallel lamina/podman": par["lamina"][0] / par["podman"][0],
            "rounds": args.rounds,
        }
        ratios = summary["throughput lamina/podman"]
        report(
            "network",
            summary,
            f"network: run lamina/podman = {summary['run lamina/podman']:.2f} (goal <= 0.7); "
            f"throughput c2c {ratios['container_to_container']:.2f}, host->port "
            f"{ratios['host_to_published_port']:.2f} (goal >= 0.95); "
            f"{args.parallel} parallel lamina/podman = {summary['parallel lamina/podman']:.2f}",
        )
    finally:
        subprocess.run([*lam, "rm", "-f", *[f"par{i}" for i in range(args.parallel)]],
                       capture_output=True)  # fmt: skip
        subprocess.run([*lam, "network", "prune", "-f"], capture_output=True)
        subprocess.run([*podman, "rm", "-f", "-a", "-t", "0"], env=penv, capture_output=True)
        subprocess.run([*podman, "network", "rm", "-f", "benchnet"], env=penv, capture_output=True)
        subprocess.run([*podman, "system", "reset", "-f"], env=penv, capture_output=True)
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
