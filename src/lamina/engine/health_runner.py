"""The health runner: ``python -m lamina.engine.health_runner ROOT``.

One per root: it holds ``<root>/health/runner.lock`` (``_leases.try_lock``: the kernel
drops it however the runner ends), and a second one started meanwhile exits at once.
Started in the background (``_health.ensure_runner``) by the start of a container with
a health check, and by any command's reconcile that finds such a container running
and no runner (one killed), so checks run whether or not a daemon serves the root.

A scheduler follows the store, woken by the events journal (start, die, pause,
unpause, destroy) and every second besides: a thread per running container with a
check (``Monitor``) runs it as Docker's monitor does, each check an exec in the
container through the engine (both isolations), its timeout killing the exec's
process, and writes each result into the record (``_health.record``). A paused
container's checks wait until it runs again. When no running container has a check
for a second, the runner lets its lock go, looks once more (a start that saw the
lock held meanwhile is served: the two-step hand-over), and exits.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lamina import _leases
from lamina.engine import _health

if TYPE_CHECKING:
    from lamina.engine._engine import Engine
    from lamina.runtime._types import Record

_RESCAN = 1.0  # seconds between looks at the store with no event
_LINGER = 1.0  # seconds with nothing to check before the runner exits
_WAKE = ("start", "die", "pause", "unpause", "destroy")


class Monitor(threading.Thread):
    """The checks of one run of one container, until it stops running it."""

    def __init__(self, root: Path, cid: str, run: float) -> None:
        super().__init__(name=f"health-{cid[:12]}", daemon=True)
        self.root, self.cid, self.run_at = root, cid, run
        self.stop = threading.Event()

    def run(self) -> None:
        from lamina.engine._engine import Engine

        engine = Engine(self.root, oci_runtime=None)
        try:
            self._checks(engine)
        except Exception as e:  # a runner must not die of one container's trouble
            print(f"lamina health {self.cid[:12]}: {e}", file=sys.stderr, flush=True)
        finally:
            engine.close()

    def _checks(self, engine: Engine) -> None:
        while not self.stop.is_set():
            rec = engine.store.get(self.cid)
            if not _health.needs_checks(rec) or rec is None or rec.started_at != self.run_at:
                return
            check = rec.config.healthcheck or {}
            probe = _health.probe_of(check)
            if probe is None:
                return
            t = _health.timing(check)
            state = _health.state_of(rec) or {}
            # Docker's timer restarts at the end of each check (the first: at the start).
            ends = [e["End"] / _health.SECOND for e in state.get("Log") or []
                    if e["Start"] / _health.SECOND >= self.run_at]  # fmt: skip
            base = max([self.run_at, *ends])
            due = base + _health.next_delay(t, base - self.run_at, str(state.get("Status")))
            if self.stop.wait(max(due - time.time(), 0.0)):
                return
            if isinstance(probe, _health.ExecProbe):
                result = _probe(engine, self.cid, probe.argv, t)
            else:
                result = _network_probe(engine, rec, probe, t)
            _health.record(engine, self.cid, self.run_at, result, t)


def _network_probe(
    engine: Engine, rec: Record, probe: _health.TcpProbe | _health.HttpProbe, t: _health.Timing
) -> _health.Result:
    """One TCP or HTTP check, from inside the container's network namespace (a VM
    container's from here, to its address): exit code 0 or 1, one line of output."""
    import ipaddress

    from lamina.network import _probe as net

    start = time.time_ns()
    netns, host, why = _probe_site(engine, rec)
    if why:
        return _health.Result(start, time.time_ns(), 1, why)
    if isinstance(probe, _health.TcpProbe):
        ok, output = net.probe_tcp(netns, host or "127.0.0.1", probe.port, t.timeout)
    else:
        if host and not ipaddress.ip_address(net.parse_http_url(probe.url).host).is_loopback:
            host = ""  # a VM's check of another address: that address, from here
        ok, output = net.probe_http(netns, probe.url, probe.expect_status, t.timeout, host=host)
    output = _health.output_text(output.encode(), False)
    return _health.Result(start, time.time_ns(), 0 if ok else 1, output)


def _probe_site(engine: Engine, rec: Record) -> tuple[str | None, str, str]:
    """Where a network probe of ``rec`` is made: (namespace path or None for this
    one, the address to connect to or "" for the test's own, why it cannot be made
    or ""). A process container's namespace is its run's (bridge networks) or its
    workload's; a VM's workload has its own kernel, reached at its first bridge
    address from the host (a VM on ``nat`` or ``none`` has none)."""
    from lamina.engine._networks import bridge_mode, netns_path

    if rec.isolation == "vm":
        address = next((e.ipv4 or e.ipv6 for e in rec.endpoints if e.ipv4 or e.ipv6), "")
        if not (bridge_mode(rec.config) and address):
            why = "a VM container's TCP and HTTP checks need a bridge network, not --network"
            return None, "", f"{why} {rec.config.network}"
        return None, address, ""
    if bridge_mode(rec.config):
        return str(netns_path(engine.root, rec.id)), "", ""
    if rec.pid <= 0:
        return None, "", "the container has no running process"
    return f"/proc/{rec.pid}/ns/net", "", ""


def _probe(engine: Engine, cid: str, argv: list[str], t: _health.Timing) -> _health.Result:
    """One check, as an exec in the container: its exit code and output; -1 with why
    when it timed out or could not run."""
    from lamina.errors import LaminaError

    start = time.time_ns()
    try:
        res = engine.exec(cid, argv, timeout=t.timeout, output_limit=_health.MAX_OUTPUT)
    except LaminaError as e:
        return _health.Result(start, time.time_ns(), -1, str(e))
    output = _health.output_text(res.stdout, res.truncated)
    if res.timed_out:
        output = _health.timeout_output(t.timeout_ns, output)
        return _health.Result(start, time.time_ns(), -1, output)
    return _health.Result(start, time.time_ns(), res.exit_code, output)


def serve(root: Path) -> None:
    """Run the checks of ``root``'s containers until none has any (under the lock)."""
    from lamina.engine._engine import Engine
    from lamina.engine._events import EventFilter, Follower

    engine = Engine(root, oci_runtime=None)
    follower = Follower(
        root, from_start=False, filters=EventFilter({"type": ["container"], "event": list(_WAKE)})
    )
    monitors: dict[tuple[str, float], Monitor] = {}
    stopping: list[Monitor] = []
    idle_since: float | None = None
    try:
        while True:
            wanted = set()
            for cid in engine.store.health_checked():
                rec = engine.store.get(cid)
                if _health.needs_checks(rec) and rec is not None and rec.started_at is not None:
                    wanted.add((cid, rec.started_at))
            for key in [k for k in monitors if k not in wanted or not monitors[k].is_alive()]:
                monitors[key].stop.set()  # it ends after its check in flight, if any
                stopping.append(monitors.pop(key))
            stopping = [m for m in stopping if m.is_alive()]
            for key in wanted - monitors.keys():
                monitors[key] = Monitor(root, *key)
                monitors[key].start()
            now = time.monotonic()
            if monitors:
                idle_since = None
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= _LINGER:
                return
            follower.wait(_RESCAN if idle_since is None else _LINGER / 4)
            for _event in follower.events():
                pass
    finally:
        for m in monitors.values():
            m.stop.set()
        for m in [*monitors.values(), *stopping]:
            m.join(5)  # a check in flight ends (or is killed by its timeout)
        follower.close()
        engine.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m lamina.engine.health_runner ROOT", file=sys.stderr)
        return 2
    root = Path(argv[0])
    lock = _health.runner_dir(root) / _health.RUNNER_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with _leases.try_lock(lock) as mine:
            if not mine:
                return 0  # another runner serves the root
            serve(root)
        # The lock is free now: a start that found it held before is seen here.
        from lamina.engine._engine import Engine

        engine = Engine(root, oci_runtime=None)
        try:
            if not engine.store.health_checked():
                return 0
        finally:
            engine.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
