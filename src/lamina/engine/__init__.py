"""lamina.engine: the one library every front end uses (the CLI today; the daemon, the
Docker API and deployments later). Containers of both isolations, images and volumes
of one lamina root, by reference (ID, unique ID prefix or name).

Public API (modules are private; every name is imported on first use, PEP 562, so
that ``lamina ps`` does not pay for housekeeping and ``lamina events``, which reads
only the journal (``_events``), pays for nothing else)::

    open_engine(root, oci_runtime="runc", report=print) -> Engine   # a context manager
    Engine.resolve_image(image, pull=, platform=) / Engine.settle(config, image, ...)
    Engine.create(config) / start / stop / restart / kill / pause / unpause / remove /
        rename / get / list / wait / logs / stats / top / ports / inspect / exec /
        attach / resize / stat_path / copy_out / copy_in / diff / commit /
        update(ref, resources, restart=RestartPolicy(...))
    RestartState.of(record): what a container's restart policy has done (RestartCount,
        stopped_by_user: what starts it after a host reboot reads)
    Selector, prune_containers(engine), prune_system(engine, ...), disk_usage(engine)
    version_info(), system_info(root, oci_runtime): what ``version``/``info`` report

and the plain data containers are described and reported with (``ContainerConfig``,
``Container``, ``WaitOutcome``, ...), shared with the runtime layer below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.engine._engine import Engine, WaitTimeout, open_engine
    from lamina.engine._filters import InvalidFilter
    from lamina.engine._info import system_info, version_info
    from lamina.engine._restart import RestartState
    from lamina.engine._run_image import InvalidConfig
    from lamina.engine._system import (
        ContainerPrune,
        DiskUsage,
        Selector,
        SystemPrune,
        disk_usage,
        prune_containers,
        prune_system,
    )
    from lamina.runtime._types import (
        ChangeEntry,
        Container,
        ContainerConfig,
        ContainerState,
        ExecResult,
        ExitReason,
        LogEntry,
        Mount,
        PathStat,
        PortMapping,
        Resources,
        RestartPolicy,
        Security,
        Stats,
        Status,
        Ulimit,
        WaitCondition,
        WaitOutcome,
    )

_LAZY = {
    "Engine": "lamina.engine._engine",
    "WaitTimeout": "lamina.engine._engine",
    "open_engine": "lamina.engine._engine",
    "InvalidConfig": "lamina.engine._run_image",
    "InvalidFilter": "lamina.engine._filters",
    "RestartState": "lamina.engine._restart",
    "system_info": "lamina.engine._info",
    "version_info": "lamina.engine._info",
    "ContainerPrune": "lamina.engine._system",
    "DiskUsage": "lamina.engine._system",
    "Selector": "lamina.engine._system",
    "SystemPrune": "lamina.engine._system",
    "disk_usage": "lamina.engine._system",
    "prune_containers": "lamina.engine._system",
    "prune_system": "lamina.engine._system",
    "ChangeEntry": "lamina.runtime._types",
    "Container": "lamina.runtime._types",
    "ContainerConfig": "lamina.runtime._types",
    "ContainerState": "lamina.runtime._types",
    "ExecResult": "lamina.runtime._types",
    "ExitReason": "lamina.runtime._types",
    "LogEntry": "lamina.runtime._types",
    "Mount": "lamina.runtime._types",
    "PathStat": "lamina.runtime._types",
    "PortMapping": "lamina.runtime._types",
    "Resources": "lamina.runtime._types",
    "RestartPolicy": "lamina.runtime._types",
    "Security": "lamina.runtime._types",
    "Stats": "lamina.runtime._types",
    "Status": "lamina.runtime._types",
    "Ulimit": "lamina.runtime._types",
    "WaitCondition": "lamina.runtime._types",
    "WaitOutcome": "lamina.runtime._types",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ChangeEntry",
    "Container",
    "ContainerConfig",
    "ContainerPrune",
    "ContainerState",
    "DiskUsage",
    "Engine",
    "ExecResult",
    "ExitReason",
    "InvalidConfig",
    "InvalidFilter",
    "LogEntry",
    "Mount",
    "PathStat",
    "PortMapping",
    "Resources",
    "RestartPolicy",
    "RestartState",
    "Security",
    "Selector",
    "Stats",
    "Status",
    "SystemPrune",
    "Ulimit",
    "WaitCondition",
    "WaitOutcome",
    "WaitTimeout",
    "disk_usage",
    "open_engine",
    "prune_containers",
    "prune_system",
    "system_info",
    "version_info",
]
