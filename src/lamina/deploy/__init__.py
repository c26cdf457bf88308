"""lamina.deploy: deployments (ZLayer v1 specs and Compose files) kept converged by
the daemon.

Public API (modules are private; every name is imported on first use, PEP 562, as in
``lamina.engine``)::

    Deployments(root, oci_runtime="runc", say=print)   # the controller the daemon runs
        .start() / .close()                  # the converge thread
        .plan(spec) -> Plan / .apply(spec) -> Plan
        .wait(name, timeout) -> DeploymentStatus
        .down(name, volumes=False) -> list[str]
        .list() -> list[DeploymentStatus] / .status(name) -> DeploymentStatus
        .inspect(name) -> dict
        .scale(name, service, replicas) / .restart(name, service)
        .replicas(name, service) -> list[ReplicaStatus]
        .run_job(name, service) / .jobs(name, service=None)
    DeploymentStatus, ServiceStatus, ReplicaStatus (``to_json()``), Plan, PlanChange
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.deploy._controller import DeploymentFailed, Deployments, Plan, PlanChange
    from lamina.deploy._status import DeploymentStatus, ReplicaStatus, ServiceStatus

_LAZY = {
    "Deployments": "lamina.deploy._controller",
    "DeploymentFailed": "lamina.deploy._controller",
    "Plan": "lamina.deploy._controller",
    "PlanChange": "lamina.deploy._controller",
    "DeploymentStatus": "lamina.deploy._status",
    "ReplicaStatus": "lamina.deploy._status",
    "ServiceStatus": "lamina.deploy._status",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina.deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DeploymentFailed",
    "DeploymentStatus",
    "Deployments",
    "Plan",
    "PlanChange",
    "ReplicaStatus",
    "ServiceStatus",
]
