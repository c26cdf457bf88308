"""Ingress benchmark (issue 15), in one run on loopback:

1. requests/s and p99 latency with ``wrk`` through lamina's ingress against a
   hand-written ``haproxy.cfg`` for the same backends, alternating (goal: lamina's
   >= 0.95 of the hand-written one: lamina adds nothing to the data path);
2. failed requests while the backend's servers are replaced one by one under load
   (a rolling update through the runtime API; goal 0);
3. failed requests when one replica is killed with SIGKILL under load (goal 0).

The upstream replicas are small HAProxy processes answering 200 themselves, so that
the upstream is not what is measured.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report  # noqa: E402

from lamina.ingress import Backend, Ingress, Route, Server  # noqa: E402

HAPROXY = "/usr/sbin/haproxy"
_DEFAULTS = """defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replica(work: Path, name: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = work / f"{name}.cfg"
    cfg.write_text(
        f"global\n    nbthread 1\n{_DEFAULTS}frontend f\n    bind 127.0.0.1:{port}\n"
        f'    http-request return status 200 content-type text/plain string "{name}"\n'
    )
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stderr=subprocess.DEVNULL)
    _wait_port(port)
    return proc, port


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"bench: nothing listens on {port}")


# What the ingress promises that costs: a GET in flight on a replica that dies is
# retried on another (L7 retries keep a copy of each request: ~15% of requests/s here).
_RETRIES = (
    "    retries 3\n    option redispatch 1\n"
    "    retry-on conn-failure empty-response response-timeout\n"
)


def hand_written(
    work: Path, port: int, upstreams: list[int], retries: bool
) -> subprocess.Popen[bytes]:
    """What a user would write for the same job: the host's route, X-Forwarded-For,
    health checks, and with ``retries`` the same failover guarantee as the ingress's."""
    servers = "".join(f"    server r{i} 127.0.0.1:{p} check\n" for i, p in enumerate(upstreams))
    cfg = work / f"hand-{port}.cfg"
    cfg.write_text(
        f"{_DEFAULTS}frontend f\n    bind 127.0.0.1:{port}\n    option forwardfor\n"
        "    use_backend b if { hdr(host) -i app.test }\n"
        f"backend b\n    balance roundrobin\n{_RETRIES if retries else ''}{servers}"
    )
    # Its own session, as the ingress's HAProxy has: with the scheduler's autogroups
    # (one per session) on, a server sharing wrk's session competes with it
    # differently, which on a loaded machine changes requests/s by half.
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(cfg)], stderr=subprocess.DEVNULL, start_new_session=True
    )
    _wait_port(port)
    return proc


def wrk(port: int, seconds: int, connections: int = 50) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", "Host: app.test", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = (sum(int(g) for g in errors.groups()) if errors else 0) + (
        int(non2xx.group(1)) if non2xx else 0
    )
    return {
        "rps": rps,
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
        "requests": requests,
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lamina-bench-ingress-") as tmp:
        work = Path(tmp)
        replicas = [replica(work, f"r{i}") for i in range(4)]
        procs = [p for p, _ in replicas]
        ports = [port for _, port in replicas]
        ingress = Ingress(work / "root", address="127.0.0.1")
        lamina_port, hand_port, bare_port = free_port(), free_port(), free_port()
        route = [Route(lamina_port, "http", "app", host="app.test")]

        def backend(indices: list[int]) -> list[Backend]:
            return [Backend("app", [Server(f"r{i}", "127.0.0.1", ports[i]) for i in indices])]

        try:
            ingress.apply(route, backend([0, 1]))
            procs.append(hand_written(work, hand_port, ports[:2], retries=True))
            procs.append(hand_written(work, bare_port, ports[:2], retries=False))
            lamina_runs, hand_runs, bare_runs = [], [], []
            for i in range(args.rounds):  # rotating which goes first
                order = [(lamina_port, lamina_runs), (hand_port, hand_runs), (bare_port, bare_runs)]
                for port, runs in order[i % 3 :] + order[: i % 3]:
                    runs.append(wrk(port, args.seconds))

            # A rolling update: r0, r1 replaced by r2, r3, one at a time, under load.
            def roll() -> None:
                time.sleep(1)
                for step in ([0, 1, 2], [1, 2], [1, 2, 3], [2, 3]):
                    ingress.apply(route, backend(step))
                    time.sleep(0.5)

            roller = threading.Thread(target=roll)
            roller.start()
            rolling = wrk(lamina_port, 5)
            roller.join()

            # One replica killed with SIGKILL under load.
            def kill() -> None:
                time.sleep(1)
                procs[2].send_signal(signal.SIGKILL)

            killer = threading.Thread(target=kill)
            killer.start()
            killed = wrk(lamina_port, 5)
            killer.join()
        finally:
            ingress.close()
            for p in procs:
                p.kill()
                p.wait()

    def median(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    # Each round's two runs are adjacent in time (they share what else loads the
    # machine): the median of the per-round ratios is the comparison.
    def ratio_to(runs: list[dict[str, float]]) -> float:
        pairs = zip(lamina_runs, runs, strict=True)
        return statistics.median(lam["rps"] / other["rps"] for lam, other in pairs)

    ratio = ratio_to(hand_runs)
    bare_ratio = ratio_to(bare_runs)
    summary = {
        "lamina_rps": median(lamina_runs, "rps"),
        "hand_written_rps": median(hand_runs, "rps"),
        "rps_ratio": round(ratio, 3),
        "hand_written_without_retries_rps": median(bare_runs, "rps"),
        "rps_ratio_to_without_retries": round(bare_ratio, 3),
        "load_average": os.getloadavg()[0],
        "lamina_p99_ms": median(lamina_runs, "p99_ms"),
        "hand_written_p99_ms": median(hand_runs, "p99_ms"),
        "rolling_update": {"requests": rolling["requests"], "failed": rolling["failed"]},
        "replica_sigkill": {"requests": killed["requests"], "failed": killed["failed"]},
        "runs": {"lamina": lamina_runs, "hand_written": hand_runs, "without_retries": bare_runs},
    }
    verdict = "ok" if ratio >= 0.95 and not rolling["failed"] and not killed["failed"] else "MISSED"
    report(
        "ingress",
        summary,
        f"ingress: {ratio:.3f} of hand-written HAProxy's requests/s (goal >= 0.95; "
        f"{bare_ratio:.3f} of one without L7 retries), "
        f"{rolling['failed']} failed in a rolling update, {killed['failed']} after a SIGKILL "
        f"(goal 0): {verdict}",
    )


if __name__ == "__main__":
    main()
