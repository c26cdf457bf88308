"""Ingress benchmark (issue 15), in one run on loopback:

1. requests/s and p99 latency with ``wrk`` through lamina's ingress against a
   hand-written ``haproxy.cfg`` for the same backends, routes and failover guarantee,
   alternating (goal: lamina's >= 0.95 of the hand-written one: lamina adds nothing
   to the data path), and the proxy's own CPU time per request (the measure the load
   of other programs moves least: requests/s on a shared 2-core machine swing by 10%
   from one run to the next, the work HAProxy does for one request does not);
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report  # noqa: E402

from lamina.ingress import Backend, Ingress, Route, Server  # noqa: E402
from lamina.ingress._config import worker_threads  # noqa: E402

HAPROXY = "/usr/sbin/haproxy"
# lamina's choice of threads (the cores but one), given to the hand-written configs
# too: what the ratio is to show is the cost of lamina's configuration, not of its
# thread count (``--variants`` measures that against HAProxy's default).
_GLOBAL = f"global\n    nbthread {worker_threads()}\n"
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


# What the ingress promises that costs: a GET or HEAD in flight on a replica that dies
# is retried on another. For that HAProxy 2.6 copies the whole request buffer
# (tune.bufsize, 16 KiB) before it sends each request: 5-15% of its CPU per request.
_RETRIES = (
    "    retries 3\n    option redispatch 1\n"
    "    retry-on conn-failure empty-response response-timeout\n"
    "    http-request disable-l7-retry if !METH_GET !METH_HEAD\n"
)


def hand_written(
    work: Path, port: int, upstreams: list[int], retries: bool
) -> subprocess.Popen[bytes]:
    """What a user would write for the same job: the host's route, X-Forwarded-For and
    -Proto, health checks, and with ``retries`` the same failover guarantee as the
    ingress's. Not in it: what only lamina needs (the ACME challenge rule, the runtime
    API's socket), which is what the comparison is to show costs nothing."""
    servers = "".join(f"    server r{i} 127.0.0.1:{p} check\n" for i, p in enumerate(upstreams))
    cfg = work / f"hand-{port}.cfg"
    cfg.write_text(
        f"{_GLOBAL}{_DEFAULTS}frontend f\n    bind 127.0.0.1:{port}\n    option forwardfor\n"
        "    http-request set-header X-Forwarded-Proto http\n"
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


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system time of ``pid`` and its children (HAProxy's master and its
    workers), read from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:  # gone (a worker replaced by a reload)
        return 0.0
    own = (int(stat[11]) + int(stat[12])) / _CLOCK_TICKS
    return own + sum(cpu_seconds(int(child)) for child in children)


def wrk(port: int, seconds: int, connections: int = 50, proxy: int = 0) -> dict[str, float]:
    """One wrk run; with ``proxy`` (a pid) also that proxy's CPU time per request."""
    cpu_before = cpu_seconds(proxy) if proxy else 0.0
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", "Host: app.test", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = cpu_seconds(proxy) - cpu_before if proxy else float("nan")
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
        "cpu_us_per_request": round(cpu / max(requests, 1) * 1e6, 2),
    }


# ``--variants``: lamina's generated configuration as it is and with one change each
# (the ideas tested for its cost), each run as a plain ``haproxy -db`` against the same
# two replicas, so that only the configuration differs.
_VARIANTS: dict[str, Callable[[str], str]] = {
    "as generated": lambda cfg: cfg,
    "without the ACME rule": lambda cfg: _without(cfg, "acme-challenge"),
    "without L7 retries": lambda cfg: _without(cfg, "retry-on", "disable-l7-retry"),
    "tune.bufsize 8192": lambda cfg: cfg.replace("global\n", "global\n    tune.bufsize 8192\n"),
    "HAProxy's default threads": lambda cfg: _without(cfg, "nbthread"),
    "http-reuse always": lambda cfg: cfg.replace("defaults\n", "defaults\n    http-reuse always\n"),
}


def _without(cfg: str, *needles: str) -> str:
    return "".join(ln for ln in cfg.splitlines(True) if not any(n in ln for n in needles))


def variants(work: Path, ingress: Ingress, seconds: int, rounds: int) -> None:
    generated = ingress.paths.cfg.read_text()
    bound = re.search(r"bind 127\.0\.0\.1:(\d+)", generated)
    assert bound is not None
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for i, (name, edit) in enumerate(_VARIANTS.items()):
            port = free_port()
            text = edit(generated).replace(bound.group(0), f"bind 127.0.0.1:{port}")
            text = text.replace(str(ingress.paths.admin_sock), str(work / f"variant-{i}.sock"))
            cfg = work / f"variant-{i}.cfg"
            cfg.write_text(text)
            proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(cfg)], stderr=subprocess.DEVNULL, start_new_session=True
            )
            procs[name] = (proc, port)
            _wait_port(port)
        # Each variant's run adjacent to one of the generated config's, either first
        # in turn: a pair shares what else loads the machine.
        pairs: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {}
        others = [name for name in procs if name != "as generated"]
        for r in range(rounds):
            for name in others[r % len(others) :] + others[: r % len(others)]:
                order = [name, "as generated"] if r % 2 else ["as generated", name]
                runs = {n: wrk(procs[n][1], seconds, proxy=procs[n][0].pid) for n in order}
                pairs.setdefault(name, []).append((runs[name], runs["as generated"]))
    finally:
        for proc, _ in procs.values():
            proc.kill()
            proc.wait()
    summary: dict[str, Any] = {}
    for name, these in pairs.items():
        summary[name] = {
            key: round(statistics.median(a[key] / b[key] for a, b in these), 3)
            for key in ("rps", "p99_ms", "cpu_us_per_request")
        }
    lines = [f"  {name}: {v['cpu_us_per_request']:.3f} of its CPU per request, "
             f"{v['rps']:.3f} of its requests/s" for name, v in summary.items()]  # fmt: skip
    report(
        "ingress-variants",
        {"ratios_to_as_generated": summary, "load_average": os.getloadavg()[0], "pairs": pairs},
        "ingress variants against lamina's configuration as generated:\n" + "\n".join(lines),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument(
        "--variants", action="store_true", help="lamina's configuration with one change each"
    )
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
            if args.variants:
                variants(work, ingress, args.seconds, args.rounds)
                return
            procs.append(hand_written(work, hand_port, ports[:2], retries=True))
            procs.append(hand_written(work, bare_port, ports[:2], retries=False))
            pids = {"lamina": ingress.running() or 0, "hand": procs[-2].pid, "bare": procs[-1].pid}
            port_of = {"lamina": lamina_port, "hand": hand_port, "bare": bare_port}
            runs: dict[str, list[dict[str, float]]] = {"lamina": [], "hand": [], "bare": []}
            # lamina's and the hand-written one's runs always adjacent (what else
            # loads the machine changes slower than that), each first every other
            # round; the one without retries before or after them.
            orders = [("lamina", "hand", "bare"), ("hand", "lamina", "bare"),
                      ("bare", "lamina", "hand"), ("bare", "hand", "lamina")]  # fmt: skip
            for i in range(args.rounds):
                for name in orders[i % 4]:
                    runs[name].append(wrk(port_of[name], args.seconds, proxy=pids[name]))
            lamina_runs, hand_runs, bare_runs = runs["lamina"], runs["hand"], runs["bare"]

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

    # Each round's runs are adjacent in time (they share what else loads the
    # machine): the median of the per-round ratios is the comparison, the quartiles
    # its spread.
    def ratios(runs: list[dict[str, float]], key: str) -> list[float]:
        pairs = zip(lamina_runs, runs, strict=True)
        return sorted(lam[key] / other[key] for lam, other in pairs)

    def spread(values: list[float]) -> dict[str, float]:
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
        return {"median": round(quartiles[1], 3), "q1": round(quartiles[0], 3),
                "q3": round(quartiles[2], 3)}  # fmt: skip

    ratio = statistics.median(ratios(hand_runs, "rps"))
    bare_ratio = statistics.median(ratios(bare_runs, "rps"))
    cpu_ratio = statistics.median(ratios(hand_runs, "cpu_us_per_request"))
    summary = {
        "lamina_rps": median(lamina_runs, "rps"),
        "hand_written_rps": median(hand_runs, "rps"),
        "rps_ratio": round(ratio, 3),
        "rps_ratio_spread": spread(ratios(hand_runs, "rps")),
        "p99_ratio": spread(ratios(hand_runs, "p99_ms")),
        "cpu_per_request_ratio": spread(ratios(hand_runs, "cpu_us_per_request")),
        "lamina_cpu_us_per_request": median(lamina_runs, "cpu_us_per_request"),
        "hand_written_cpu_us_per_request": median(hand_runs, "cpu_us_per_request"),
        "hand_written_without_retries_rps": median(bare_runs, "rps"),
        "rps_ratio_to_without_retries": round(bare_ratio, 3),
        "cpu_per_request_ratio_to_without_retries": spread(ratios(bare_runs, "cpu_us_per_request")),
        "without_retries_cpu_us_per_request": median(bare_runs, "cpu_us_per_request"),
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
        f"{bare_ratio:.3f} of one without L7 retries), {cpu_ratio:.3f} of its CPU per "
        f"request, "
        f"{rolling['failed']} failed in a rolling update, {killed['failed']} after a SIGKILL "
        f"(goal 0): {verdict}",
    )


if __name__ == "__main__":
    main()
