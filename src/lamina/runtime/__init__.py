"""The runtime layer: the task interface every isolation backend implements, the
process backend (runc + conmon), and the plain data the engine and the backends
speak. Containers are the engine's (``lamina.engine``); this layer runs their
workloads."""

from lamina.runtime._interface import Attachment, TaskBackend
from lamina.runtime._types import (
    ChangeEntry,
    Container,
    ContainerConfig,
    ContainerState,
    ExecResult,
    ExitReason,
    ExitStatus,
    LogEntry,
    Mount,
    PathStat,
    PortMapping,
    ProcessSpec,
    Record,
    Resources,
    Security,
    Signalled,
    Started,
    Stats,
    Status,
    Ulimit,
    WaitCondition,
    WaitOutcome,
)

__all__ = [
    "Attachment",
    "ChangeEntry",
    "Container",
    "ContainerConfig",
    "ContainerState",
    "ExecResult",
    "ExitReason",
    "ExitStatus",
    "LogEntry",
    "Mount",
    "PathStat",
    "PortMapping",
    "ProcessSpec",
    "Record",
    "Resources",
    "Security",
    "Signalled",
    "Started",
    "Stats",
    "Status",
    "TaskBackend",
    "Ulimit",
    "WaitCondition",
    "WaitOutcome",
]
