"""Deployments (issue 14), in one run:

1. up: a generated deployment of 3 services x 10 replicas of busybox httpd with an
   HTTP health check, ``lamina deploy --wait`` (the root's daemon already running) up
   to every replica healthy, alternating with ``podman-compose up -d`` of the
   equivalent Compose file plus the time until every container's health check
   passes (goal: lamina/podman-compose <= 0.5). Podman runs no health check without
   systemd timers (none here), so the bench runs ``podman healthcheck run`` on each
   container not yet healthy, in a loop: what a timer would do, at once.
2. replacement: a replica's process killed (SIGKILL from the host), the time until
   its service has all its replicas ready again with a new one.
3. rolling update under load: a 6-replica service whose spec changes (an env value),
   deployed again with ``--wait``, while client threads on the host send HTTP requests
   to the service's name as the deployment network's DNS (aardvark-dns on the
   bridge's gateway) answers it, resolving before each request as a DNS client does;
   failed requests are counted (goal 0); the resolver retries a lost query after 1 s.
   ``wrk`` and ``ab`` are not used: they resolve a name once and would hammer one
   replica, not the service.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report  # noqa: E402
from run_container import CONTAINERS_CONF, LAMINA  # noqa: E402

from lamina._mount import unmount_under  # noqa: E402

IMAGE = "localhost/bench/busybox:latest"
SERVICES = ("alpha", "beta", "gamma")
# A replica's shell ends on SIGTERM (busybox httpd as PID 1 would ignore it).
HTTPD = ("mkdir -p /www && echo ok > /www/index.html; trap 'exit 0' TERM; "
         "httpd -f -p 8080 -h /www & wait")  # fmt: skip


def zlayer_spec(name: str, replicas: int, services: tuple[str, ...], version: str = "1") -> str:
    out = f"version: v1\ndeployment: {name}\nservices:\n"
    for svc in services:
        out += (f"  {svc}:\n    image: {{name: {IMAGE}}}\n"
                f"    command: {{args: [sh, -c, {json.dumps(HTTPD)}]}}\n"
                f"    env: {{VERSION: '{version}'}}\n"
                f"    scale: {{mode: fixed, replicas: {replicas}}}\n"
                "    health:\n      start_grace: 0s\n      interval: 1s\n      timeout: 2s\n"
                "      retries: 3\n"
                "      check: {type: http, url: 'http://localhost:8080/', expect_status: 200}\n")
    return out


def compose_file(replicas: int) -> str:
    out = "services:\n"
    for svc in SERVICES:
        out += (f"  {svc}:\n    image: {IMAGE}\n"
                f"    command: [sh, -c, {json.dumps(HTTPD)}]\n"
                "    healthcheck:\n"
                # the string form (CMD-SHELL): podman-compose 1.0.3 pops the list's
                # first item in place, so its second replica fails on the list form
                "      test: 'wget -q -O /dev/null http://localhost:8080/'\n"
                "      interval: 1s\n      timeout: 2s\n      retries: 3\n"
                f"    deploy:\n      replicas: {replicas}\n")
    return out


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.root = work / "lamina"
        self.lam = [*LAMINA, "--root", str(self.root)]
        conf = work / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.penv = dict(os.environ, CONTAINERS_CONF=str(conf))
        self.podman = ["podman", "--root", str(work / "p"), "--runroot", str(work / "pr"),
                       "--storage-driver", "overlay", "--runtime", "runc",
                       "--cgroup-manager", "cgroupfs", "--events-backend", "none"]  # fmt: skip
        # podman-compose runs "podman": a wrapper gives it the bench's storage.
        self.podman_path = work / "podman"
        self.podman_path.write_text("#!/bin/sh\nexec " + " ".join(self.podman) + ' "$@"\n')
        self.podman_path.chmod(0o755)

    def lamina(self, *args: str, check: bool = True) -> str:
        env = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
        r = subprocess.run([*self.lam, *args], capture_output=True, text=True, env=env)
        if check and r.returncode != 0:
            raise SystemExit(f"bench: lamina {' '.join(args)} failed: {r.stderr[-1500:]}")
        return r.stdout

    def status(self, name: str) -> dict[str, Any]:
        return json.loads(self.lamina("deployment", "status", name, "--format", "json"))  # type: ignore[no-any-return]

    def prepare(self) -> None:
        from lamina.testing import make_busybox_rootfs

        rootfs = make_busybox_rootfs(self.work / "rootfs")
        subprocess.run([*self.lam, "import", str(rootfs), IMAGE], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        archive = self.work / "image.tar"
        subprocess.run([*self.lam, "save", "-o", str(archive), IMAGE], check=True)
        subprocess.run([*self.podman, "load", "-q", "-i", str(archive)], check=True,
                       env=self.penv, stdout=subprocess.DEVNULL)  # fmt: skip
        self.lamina("deployment", "ls")  # the root's daemon, started once

    # -- 1. up to all healthy

    def lamina_up(self, spec: Path, name: str) -> float:
        t0 = time.perf_counter()
        self.lamina("deploy", "--wait", "--timeout", "600", str(spec))
        elapsed = time.perf_counter() - t0
        ready = sum(s["ready"] for s in self.status(name)["services"])
        assert ready == 30, f"{ready} replicas ready"
        self.lamina("down", name)
        return elapsed

    def podman_up(self, project: Path) -> float:
        compose = ["podman-compose", "--podman-path", str(self.podman_path),
                   "-f", str(project / "compose.yaml"), "-p", "benchp"]  # fmt: skip
        t0 = time.perf_counter()
        up = subprocess.run([*compose, "up", "-d"], env=self.penv, capture_output=True,
                            text=True)  # fmt: skip
        if up.returncode != 0:
            raise SystemExit(f"bench: podman-compose up failed: {(up.stdout + up.stderr)[-3000:]}")
        names = subprocess.run([*self.podman, "ps", "--format", "{{.Names}}"], env=self.penv,
                               capture_output=True, text=True, check=True).stdout.split()
        pending = set(names)
        assert len(pending) == 30, names
        while pending:
            for name in sorted(pending):
                r = subprocess.run([*self.podman, "healthcheck", "run", name], env=self.penv,
                                   capture_output=True)  # fmt: skip
                if r.returncode == 0:
                    pending.discard(name)
        elapsed = time.perf_counter() - t0
        subprocess.run([*self.podman, "rm", "-f", "-t", "0", *names], env=self.penv,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        subprocess.run([*self.podman, "network", "rm", "-f", "benchp_default"], env=self.penv,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        return elapsed

    # -- 2. a replica's death to its healthy replacement

    def replacement(self, name: str, service: str) -> float:
        st = self.status(name)
        svc = next(s for s in st["services"] if s["name"] == service)
        victim = random.choice([r["name"] for r in svc["replicas"] if r["ready"]])
        old_ids = set(self.lamina("ps", "-q", "--no-trunc").split())
        pid = int(self.lamina("inspect", "-f", "{{.State.Pid}}", victim).strip())
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while True:
            svc = next(s for s in self.status(name)["services"] if s["name"] == service)
            ids = set(self.lamina("ps", "-q", "--no-trunc").split())
            if svc["ready"] == svc["desired"] and ids - old_ids:
                return time.perf_counter() - t0
            time.sleep(0.05)

    # -- 3. a rolling update under load

    def rolling_update(self, spec: Path, name: str, service: str, threads: int) -> dict[str, Any]:
        import dns.resolver

        net = json.loads(self.lamina("network", "inspect", name))[0]
        gateway = net["IPAM"]["Config"][0]["Gateway"]
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [gateway]
        # A resolver that retries as a libc one does (resolv.conf ``options timeout:1
        # attempts:4``): aardvark-dns 1.4 drops the queries it holds when it reloads,
        # which netavark and alias changes make it do (a query lost costs 1 s, not a
        # request).
        resolver.timeout, resolver.lifetime = 1.0, 4.0
        counts = {"ok": 0, "failed": 0}
        errors: dict[str, int] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                try:
                    answer = resolver.resolve(service, "A")
                    address = random.choice([r.address for r in answer])
                    with urllib.request.urlopen(f"http://{address}:8080/", timeout=5) as r:
                        good = r.status == 200 and r.read() == b"ok\n"
                    why = "" if good else "bad answer"
                except Exception as e:  # every failure counts, whatever it is
                    reason = getattr(e, "reason", None)
                    good, why = False, type(reason or e).__name__
                with lock:
                    counts["ok" if good else "failed"] += 1
                    if why:
                        errors[why] = errors.get(why, 0) + 1

        workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
        for w in workers:
            w.start()
        time.sleep(2)  # steady load first
        before = dict(counts)
        t0 = time.perf_counter()
        spec.write_text(zlayer_spec(name, 6, (service,), version="2"))
        self.lamina("deploy", "--wait", "--timeout", "600", str(spec))
        duration = time.perf_counter() - t0
        time.sleep(1)
        stop.set()
        for w in workers:
            w.join(10)
        during = {k: counts[k] - before[k] for k in counts}
        return {"requests": during["ok"] + during["failed"], "failed": during["failed"],
                "errors": errors, "rollout_s": round(duration, 2),
                "requests_per_s": round((during["ok"] + during["failed"]) / duration)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "deploy")
    args = parser.parse_args()
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bench = Bench(work)
    try:
        bench.prepare()
        spec = work / "bench.yaml"
        spec.write_text(zlayer_spec("bench", 10, SERVICES))
        project = work / "podman-project"
        project.mkdir()
        (project / "compose.yaml").write_text(compose_file(10))
        results: dict[str, list[float]] = {"lamina": [], "podman_compose": []}
        for _ in range(args.rounds):
            results["lamina"].append(bench.lamina_up(spec, "bench"))
            results["podman_compose"].append(bench.podman_up(project))
        med = {k: statistics.median(v) for k, v in results.items()}

        bench.lamina("deploy", "--wait", str(spec))
        kills = [bench.replacement("bench", SERVICES[i % 3]) for i in range(args.kills)]
        bench.lamina("down", "bench")

        rolling = work / "rolling.yaml"
        rolling.write_text(zlayer_spec("rolling", 6, ("web",)))
        bench.lamina("deploy", "--wait", str(rolling))
        update = bench.rolling_update(rolling, "rolling", "web", args.threads)
        bench.lamina("down", "rolling")

        summary = {
            "up_30_replicas_s": {k: [round(x, 2) for x in v] for k, v in results.items()},
            "up_median_s": {k: round(v, 2) for k, v in med.items()},
            "lamina/podman_compose": round(med["lamina"] / med["podman_compose"], 3),
            "replacement_s": {"median": round(statistics.median(kills), 2),
                              "max": round(max(kills), 2), "all": [round(k, 2) for k in kills]},
            "rolling_update_6": update,
            "rounds": args.rounds,
        }
        report("deploy", summary,
               f"deploy: 3x10 replicas up to healthy lamina/podman-compose = "
               f"{summary['lamina/podman_compose']:.2f} (goal <= 0.5); replacement median "
               f"{summary['replacement_s']['median']} s; rolling update of 6 under load: "
               f"{update['failed']} failed of {update['requests']} (goal 0)")  # fmt: skip
    finally:
        for name in ("bench", "rolling"):
            bench.lamina("down", name, check=False)
        pid_file = bench.root / "daemon.json"
        if pid_file.exists():
            pid = json.loads(pid_file.read_text())["pid"]
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                if not pid_file.exists():
                    break
                time.sleep(0.1)
        ids = bench.lamina("ps", "-aq", check=False).split()
        if ids:
            bench.lamina("rm", "-f", *ids, check=False)
        bench.lamina("network", "prune", "-f", check=False)
        subprocess.run([*bench.podman, "rm", "-f", "-a", "-t", "0"], env=bench.penv,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        subprocess.run([*bench.podman, "system", "reset", "-f"], env=bench.penv,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        _wait_gone(str(bench.root))  # the health runner and exit commands end on their own
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def _wait_gone(mark: str, timeout: float = 30.0) -> None:
    """Until no process names ``mark`` in its command line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for pid in os.listdir("/proc"):
            if pid.isdigit() and pid != str(os.getpid()):
                try:
                    alive = mark.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if alive:
                    break
        if not alive:
            return
        time.sleep(0.1)


if __name__ == "__main__":
    main()
