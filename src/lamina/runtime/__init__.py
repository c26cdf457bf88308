"""Runtimes: the Runtime interface and its isolation backends."""

from lamina.runtime._factory import open_runtime
from lamina.runtime._interface import Runtime
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
    Security,
    Stats,
    Status,
    Ulimit,
    WaitCondition,
    WaitOutcome,
)

__all__ = [
    "ChangeEntry",
    "Container",
    "ContainerConfig",
    "ContainerState",
    "ExecResult",
    "ExitReason",
    "LogEntry",
    "Mount",
    "PathStat",
    "PortMapping",
    "Resources",
    "Runtime",
    "Security",
    "Stats",
    "Status",
    "Ulimit",
    "WaitCondition",
    "WaitOutcome",
    "open_runtime",
]
