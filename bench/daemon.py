"""The daemon (issue 12), through its API over the unix socket, in one run:

- create+start+wait+rm of a container through the API (keep-alive httpx client),
  alternating with ``podman run --rm --network none IMAGE true`` (the issue's goal
  <= 0.4 is for the remote CLI, which adds its own start-up; this is the API alone);
- ``GET /v1/containers?all=1`` with 100 running containers: p50 and p99;
- the daemon's RSS idle and with 100 containers;
- the delay from a container's exit (its FinishedAt, written by the monitor) to its
  ``die`` event read from the events stream.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report, timed  # noqa: E402
from run_container import CONTAINERS_CONF, LAMINA  # noqa: E402

from lamina._mount import unmount_under  # noqa: E402

IMAGE = "bench/busybox:latest"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _seconds(stamp: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as Unix seconds."""
    from datetime import datetime

    whole, _, frac = stamp.rstrip("Z").partition(".")
    base = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=None)
    from calendar import timegm

    return timegm(base.timetuple()) + float("0." + (frac or "0"))


def api_run(api: httpx.Client) -> float:
    t0 = time.perf_counter()
    cid = api.post("/v1/containers", json={"image": IMAGE, "command": ["true"]}).json()["Id"]
    assert api.post(f"/v1/containers/{cid}/start").status_code == 204
    assert api.post(f"/v1/containers/{cid}/wait").json()["StatusCode"] == 0
    assert api.delete(f"/v1/containers/{cid}").status_code == 204
    return time.perf_counter() - t0


def die_delays(api: httpx.Client, client: httpx.Client, rounds: int) -> list[float]:
    delays = []
    for _ in range(rounds):
        body = {"image": IMAGE, "command": ["sleep", "0.3"]}
        cid = api.post("/v1/containers", json=body).json()["Id"]
        got: list[float] = []
        ready = threading.Event()

        def follow(cid: str = cid, got: list[float] = got, ready: threading.Event = ready) -> None:
            params = {"filters": json.dumps({"container": [cid], "event": ["die"]})}
            with client.stream("GET", "/v1/events", params=params) as r:
                ready.set()
                for _line in r.iter_lines():
                    got.append(time.time())
                    return

        t = threading.Thread(target=follow)
        t.start()
        ready.wait(10)
        time.sleep(0.1)
        api.post(f"/v1/containers/{cid}/start")
        t.join(30)
        finished = _seconds(api.get(f"/v1/containers/{cid}").json()["State"]["FinishedAt"])
        delays.append(got[0] - finished)
        api.delete(f"/v1/containers/{cid}")
    return delays


def main() -> None:
    from lamina.testing import make_busybox_rootfs

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "daemon")
    args = parser.parse_args()
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lroot = work / "lamina"
    lam = [*LAMINA, "--root", str(lroot)]
    conf = work / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    penv = dict(os.environ, CONTAINERS_CONF=str(conf))
    podman = ["podman", "--root", str(work / "p"), "--runroot", str(work / "pr"),
              "--storage-driver", "overlay", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
              "--events-backend", "none"]  # fmt: skip
    daemon = None
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        subprocess.run([*lam, "import", str(rootfs), IMAGE], check=True, stdout=subprocess.DEVNULL)
        archive = work / "image.tar"
        subprocess.run([*lam, "save", "-o", str(archive), IMAGE], check=True)
        subprocess.run([*podman, "load", "-q", "-i", str(archive)], check=True, env=penv,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        log = open(work / "daemon.log", "wb")  # noqa: SIM115 - open while the daemon runs
        daemon = subprocess.Popen([*lam, "daemon"], stdout=log, stderr=log)
        sock = lroot / "lamina.sock"
        deadline = time.monotonic() + 30
        while b"serving" not in (work / "daemon.log").read_bytes():
            if time.monotonic() > deadline or daemon.poll() is not None:
                text = (work / "daemon.log").read_text()
                raise SystemExit(f"bench: the daemon did not start: {text}")
            time.sleep(0.02)
        transport = httpx.HTTPTransport(uds=str(sock))
        api = httpx.Client(transport=transport, base_url="http://lamina", timeout=60)
        streams = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                               base_url="http://lamina", timeout=60)  # fmt: skip

        # warm caches once for each
        api_run(api)
        timed([*podman, "run", "--rm", "--network", "none", IMAGE, "true"], penv)
        results: dict[str, list[float]] = {"api": [], "podman": []}
        for _ in range(args.rounds):
            results["api"].append(api_run(api))
            podman_run = [*podman, "run", "--rm", "--network", "none", IMAGE, "true"]
            results["podman"].append(timed(podman_run, penv))
        med = {k: statistics.median(v) for k, v in results.items()}

        delays = die_delays(api, streams, 10)
        rss_idle = rss_kib(daemon.pid)
        for i in range(args.containers):
            cid = api.post("/v1/containers", json={"image": IMAGE, "command": ["sleep", "600"],
                                                   "name": f"c{i}"}).json()["Id"]  # fmt: skip
            api.post(f"/v1/containers/{cid}/start")
        latencies = []
        for _ in range(300):
            t0 = time.perf_counter()
            r = api.get("/v1/containers", params={"all": "1"})
            latencies.append(time.perf_counter() - t0)
            assert len(r.json()) == args.containers
        rss_busy = rss_kib(daemon.pid)
        q = statistics.quantiles(latencies, n=100)
        summary = {
            "median_ms": {k: round(v * 1000, 1) for k, v in med.items()},
            "api/podman": round(med["api"] / med["podman"], 3),
            "list_100_ms": {
                "p50": round(statistics.median(latencies) * 1000, 2),
                "p99": round(q[98] * 1000, 2),
            },
            "daemon_rss_kib": {"idle": rss_idle, f"with_{args.containers}": rss_busy},
            "exit_to_die_event_ms": {
                "median": round(statistics.median(delays) * 1000, 1),
                "max": round(max(delays) * 1000, 1),
            },
            "rounds": args.rounds,
        }
        report(
            "daemon",
            summary,
            f"daemon: create+start+wait+rm via the API / podman run --rm = "
            f"{summary['api/podman']:.2f}; GET of {args.containers} containers p50 "
            f"{summary['list_100_ms']['p50']} ms p99 {summary['list_100_ms']['p99']} ms",
        )
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        ids = subprocess.run([*lam, "ps", "-aq"], capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run([*lam, "rm", "-f", *ids], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
        subprocess.run([*podman, "rm", "-f", "-a", "-t", "0"], env=penv,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        subprocess.run([*podman, "system", "reset", "-f"], env=penv,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
