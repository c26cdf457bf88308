"""What ``deployment status``/``inspect`` report: plain dataclasses, each with
``to_json()`` (the daemon's answer and ``--format json``).

Shape of ``DeploymentStatus.to_json()``::

    {"name": "shop", "state": "running|progressing|halted|failed|removing",
     "message": "one line or empty", "network": "shop", "generation": 3,
     "services": [{"name": "web", "rtype": "service", "desired": 3, "running": 3,
                   "ready": 3, "completed": 0,
                   "health": "healthy|unhealthy|starting|none",
                   "rollout": "complete|progressing 1/3|halted: ...",
                   "last_error": "", "notes": [],
                   "replicas": [{"name": "shop-web-1", "n": 1, "state": "running",
                                 "health": "healthy", "ready": true,
                                 "address": "10.89.0.2", "spec_hash": "...",
                                 "current": true}]}]}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

COMPLETE = "complete"
HALTED = "halted"


@dataclass
class ReplicaStatus:
    name: str
    n: int
    state: str  # the container's status: created, running, exited, ...
    health: str  # starting, healthy, unhealthy; "none" without a check
    ready: bool  # running, healthy (or up for start_grace) and in the service's DNS name
    address: str
    spec_hash: str
    current: bool  # made from the service's current spec (not an old one a rollout replaces)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ServiceStatus:
    name: str
    rtype: str
    desired: int
    running: int
    ready: int
    health: str
    rollout: str  # complete | progressing n/m | halted: <one line>
    last_error: str = ""
    completed: int = 0  # replicas that ran to completion and stay so (restart_policy)
    notes: list[str] = field(default_factory=list)
    replicas: list[ReplicaStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class DeploymentStatus:
    name: str
    state: str  # running | progressing | halted | failed | removing
    message: str = ""
    network: str = ""
    generation: int = 0
    services: list[ServiceStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def service(self, name: str) -> ServiceStatus | None:
        return next((s for s in self.services if s.name == name), None)


def service_health(replicas: list[ReplicaStatus], has_check: bool) -> str:
    """One word for a service: the worst of its running replicas'."""
    if not has_check:
        return "none"
    states = [r.health for r in replicas if r.state == "running"]
    for word in ("unhealthy", "starting"):
        if word in states:
            return word
    return "healthy" if states else "starting"


def rollout_word(current_ready: int, desired: int, old: int, halted: str) -> str:
    if halted:
        return f"{HALTED}: {halted}"
    if old == 0 and current_ready >= desired:
        return COMPLETE
    return f"progressing {current_ready}/{desired}"
