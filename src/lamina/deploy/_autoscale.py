"""Adaptive scaling: how busy a service's replicas are, and how many it should have.

``Sampler``/``sample`` read the engine's cgroup statistics of the replicas twice (a
second or more apart) and
turn the CPU time used in between into percent of each replica's CPU limit (``--cpus``;
one core without one), and memory in use into percent of its memory limit (the host's
memory without one), averaged over the replicas. ``decide`` is pure: from the current
count, the bounds, the targets and a usage, the count to have, with a tolerance band
around the target (no flapping on noise) and nothing done inside the cooldown after
the last change (the bounds always apply: a count outside them is brought back at
once). ``Autoscaler`` is what the converge loop keeps: per adaptive service, its
sampler and the time of its last change.
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lamina.deploy._model import AdaptiveScale
    from lamina.engine import Engine, Stats

# Above target by more than this fraction: scale up. Scaling down leaves as much
# headroom below the target, so a count chosen one way is not undone the next tick.
TOLERANCE = 0.1
# CPU use over less time than this is noise (a throttled replica's quota comes in
# 100 ms periods): a read that soon after the last one leaves the window open.
MIN_WINDOW = 1.0


class Targets(Protocol):
    """Percent targets (the model's ``ScaleTargets``); None: not a criterion."""

    @property
    def cpu(self) -> int | float | None: ...

    @property
    def memory(self) -> int | float | None: ...


@dataclass(frozen=True)
class Usage:
    """Average over ``replicas`` of percent of each one's limits."""

    cpu_percent: float
    memory_percent: float
    # How many were measured: running and read before (CPU use is a difference), so a
    # replica that is new or gone is left out; 0: nothing to go by.
    replicas: int


@dataclass(frozen=True)
class _Sample:
    cpu_ns: int
    at_ns: int  # monotonic
    memory: int
    cpu_limit: float  # cores
    memory_limit: int  # bytes


class Sampler:
    """Keeps each replica's last reading: ``read`` returns the usage since the one
    before (the converge loop calls it each round; no waiting)."""

    def __init__(self) -> None:
        self._last: dict[str, _Sample] = {}

    def read(self, engine: Engine, container_ids: Iterable[str]) -> Usage:
        """Usage since the previous ``read`` of the same containers, for those read at
        least ``MIN_WINDOW`` seconds before (a replica read for the first time, or too
        recently, is not counted: ``replicas`` says how many were)."""
        cpu: list[float] = []
        memory: list[float] = []
        seen: dict[str, _Sample] = {}
        for cid in container_ids:
            now = _read_one(engine, cid)
            if now is None:
                continue
            before = self._last.get(cid)
            if before is not None and now.at_ns - before.at_ns < MIN_WINDOW * 1e9:
                seen[cid] = before  # too short a window to say: it goes on growing
                continue
            seen[cid] = now
            if before is not None:
                used = max(0, now.cpu_ns - before.cpu_ns)
                cpu.append(100.0 * used / ((now.at_ns - before.at_ns) * now.cpu_limit))
                memory.append(100.0 * now.memory / now.memory_limit if now.memory_limit else 0.0)
        self._last = seen
        return Usage(
            cpu_percent=sum(cpu) / len(cpu) if cpu else 0.0,
            memory_percent=sum(memory) / len(memory) if memory else 0.0,
            replicas=len(cpu),
        )


def sample(engine: Engine, container_ids: Iterable[str], window: float = 1.0) -> Usage:
    """The replicas' usage over the next ``window`` seconds."""
    ids = list(container_ids)
    sampler = Sampler()
    sampler.read(engine, ids)
    time.sleep(builtins.max(window, MIN_WINDOW))  # the measurement window itself
    return sampler.read(engine, ids)


def _read_one(engine: Engine, cid: str) -> _Sample | None:
    from lamina.errors import LaminaError

    try:
        container = engine.get(cid)
        if container.state.status != "running":
            return None
        stats: Stats = engine.stats(cid)
    except LaminaError:  # removed meanwhile
        return None
    resources = container.config.resources
    return _Sample(
        cpu_ns=stats.cpu_usage_ns,
        at_ns=time.monotonic_ns(),
        memory=stats.memory_used,
        cpu_limit=resources.cpus or 1.0,
        memory_limit=resources.memory or _host_memory(),
    )


def _host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def decide(
    current: int,
    min: int,
    max: int,
    targets: Targets,
    usage: Usage,
    last_change: float | None,
    now: float,
    cooldown: float,
) -> int:
    """How many replicas to have (``min``/``max`` shadow the builtins, named as the
    spec's fields are). Up when any target is exceeded by more than the
    tolerance (to as many as bring the busiest metric back to its target, one more at
    least); down when every target has room to spare (to as few as keep them all
    below target with the tolerance as headroom); never outside ``min``..``max``;
    no change within ``cooldown`` seconds of ``last_change``."""
    bounded = _clamp(current, min, max)
    if bounded != current:
        return bounded
    if last_change is not None and now - last_change < cooldown:
        return current
    measured = ((usage.cpu_percent, targets.cpu), (usage.memory_percent, targets.memory))
    ratios = [used / target for used, target in measured if target]
    if not ratios or current == 0 or usage.replicas == 0:
        return current  # nothing to go by (no replica to measure)
    busiest = builtins.max(ratios)
    if busiest > 1 + TOLERANCE:
        return _clamp(builtins.max(current + 1, math.ceil(current * busiest)), min, max)
    wanted = math.ceil(current * busiest / (1 - TOLERANCE))
    if wanted < current:
        return _clamp(wanted, min, max)
    return current


def _clamp(n: int, low: int, high: int) -> int:
    return low if n < low else high if n > high else n


class Autoscaler:
    """What the converge loop keeps for its adaptive services: a sampler each, and
    when each count last changed. A service seen for the first time counts as just
    changed (a restarted daemon waits a cooldown before it acts)."""

    def __init__(self) -> None:
        self._samplers: dict[tuple[str, str], Sampler] = {}
        self._changed: dict[tuple[str, str], float] = {}

    def replicas(
        self,
        engine: Engine,
        deployment: str,
        service: str,
        scale: AdaptiveScale,
        container_ids: Iterable[str],
        current: int,
        now: float | None = None,
    ) -> int:
        """How many replicas ``service`` should have, from its running replicas'
        usage since the previous call."""
        key = (deployment, service)
        now = time.monotonic() if now is None else now
        usage = self._samplers.setdefault(key, Sampler()).read(engine, container_ids)
        last = self._changed.setdefault(key, now)
        wanted = decide(current, scale.min, scale.max, scale.targets, usage, last, now,
                        scale.cooldown)  # fmt: skip
        if wanted != current:
            self._changed[key] = now
        return wanted

    def forget(self, deployment: str, service: str | None = None) -> None:
        """Drop what is kept of a deployment (or one service) that is gone or no
        longer adaptive."""
        for key in [k for k in self._samplers.keys() | self._changed.keys()
                    if k[0] == deployment and service in (None, k[1])]:  # fmt: skip
            self._samplers.pop(key, None)
            self._changed.pop(key, None)
