"""The Runtime interface: what every isolation backend implements.

Everything above this layer (CLI, builder, deployments) talks to a ``Runtime``
and never learns whether a container is a runc process tree or a micro-VM.
Containers outlive the process that created them: a backend keeps its state
under the lamina root and finds containers again in any later process; every
public call first reconciles containers whose monitor died.

Container lifecycle: ``create`` (status created) -> ``start`` (running) ->
``pause``/``unpause`` -> the workload exits, or ``stop``/``kill`` (exited, with a
``WaitOutcome``) -> ``start`` again or ``remove``. A container that could not be
started is ``failed`` with a reason. IDs are 64 hex characters; any unique
prefix, or the name, selects a container.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from lamina.runtime._types import (
    ChangeEntry,
    Container,
    ContainerConfig,
    ExecResult,
    LogEntry,
    PathStat,
    Resources,
    Stats,
    WaitCondition,
    WaitOutcome,
)


class Runtime(abc.ABC):
    """One isolation backend over one lamina root."""

    name: str = ""

    def close(self) -> None:  # noqa: B027 - optional: not every backend holds anything
        """Release what this object holds open (database connections); containers
        are not affected."""

    # -- images
    @abc.abstractmethod
    def pull(self, reference: str, *, policy: str = "if-not-present") -> str:
        """Make the image available locally; returns its image ID."""

    # -- lifecycle
    @abc.abstractmethod
    def create(self, config: ContainerConfig) -> Container: ...

    @abc.abstractmethod
    def start(self, ref: str) -> None: ...

    @abc.abstractmethod
    def stop(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        """Send the stop signal, wait ``timeout`` seconds, then SIGKILL."""

    @abc.abstractmethod
    def restart(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        """``stop`` (when running or paused), then ``start``. A ``--rm`` container is kept
        across it, as Docker keeps it: only its own exit, ``stop`` or ``kill`` remove it."""

    @abc.abstractmethod
    def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        """``signal``: a name with or without SIG, or a number; invalid ones are refused.
        A paused container is thawed for SIGKILL and its stop signal (Docker's rule);
        other signals stay pending until it is unpaused."""

    @abc.abstractmethod
    def pause(self, ref: str) -> None: ...

    @abc.abstractmethod
    def unpause(self, ref: str) -> None: ...

    @abc.abstractmethod
    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None: ...

    @abc.abstractmethod
    def rename(self, ref: str, new_name: str) -> None: ...

    # -- observing
    @abc.abstractmethod
    def get(self, ref: str) -> Container:
        """Resolve an ID, unique ID prefix or name; NotFound otherwise."""

    @abc.abstractmethod
    def list(self, *, all: bool = False) -> list[Container]: ...

    @abc.abstractmethod
    def wait(
        self,
        ref: str,
        condition: WaitCondition = WaitCondition.NOT_RUNNING,
        timeout: float | None = None,
    ) -> WaitOutcome: ...

    @abc.abstractmethod
    def logs(
        self,
        ref: str,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
        until: float | None = None,
        stdout: bool = True,
        stderr: bool = True,
    ) -> Iterator[LogEntry]: ...

    @abc.abstractmethod
    def stats(self, ref: str) -> Stats: ...

    @abc.abstractmethod
    def top(self, ref: str) -> tuple[builtins.list[str], builtins.list[builtins.list[str]]]:
        """Processes in the container: (headers, rows), as ``ps`` shows them."""

    @abc.abstractmethod
    def inspect(self, ref: str) -> dict[str, object]: ...

    @abc.abstractmethod
    def pid(self, ref: str) -> int: ...

    @abc.abstractmethod
    def ip_address(self, ref: str) -> str: ...

    # -- exec
    @abc.abstractmethod
    def exec(
        self,
        ref: str,
        argv: builtins.list[str],
        *,
        env: builtins.list[str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        tty: bool = False,
        stdin: BinaryIO | None = None,
        detach: bool = False,
        stream: bool = False,
    ) -> ExecResult:
        """Run a process in a running container. ``stream=True`` passes the caller's
        stdio through (exit code returned, outputs empty); ``tty=True`` allocates a
        pseudo-terminal and follows the caller's window size."""

    @abc.abstractmethod
    def attach(
        self,
        ref: str,
        *,
        stdin: BinaryIO | None,
        stdout: BinaryIO,
        stderr: BinaryIO,
        tty: bool = False,
        start: bool = False,
    ) -> None:
        """Pump the container's stdio to the caller's until its output closes.
        With ``tty`` the caller's terminal size is followed (SIGWINCH -> resize).
        ``start=True`` connects first and then starts the container, so that no
        early output is lost (``run`` without ``-d``)."""

    @abc.abstractmethod
    def resize(self, ref: str, height: int, width: int) -> None: ...

    # -- filesystem
    # ``cp`` (Docker's archive API): every path is the container's, resolved as the
    # container sees it (volumes and binds included, running or not), never on the host.
    @abc.abstractmethod
    def stat_path(self, ref: str, path: str) -> PathStat:
        """What is at ``path`` (a final symlink not followed: ``link_target`` says
        where it leads). NotFound if nothing."""

    @abc.abstractmethod
    def copy_out(self, ref: str, path: str, *, follow_link: bool = False) -> Iterator[bytes]:
        """A tar stream of ``path``, its top entry named after ``path``'s last
        component; a symlink there is archived as a link unless ``follow_link``, then
        what it leads to (under the link's name). Errors are raised before the
        first chunk."""

    @abc.abstractmethod
    def copy_in(self, ref: str, path: str, tar_stream: BinaryIO) -> None:
        """Extract a tar stream (plain, gzip or zstd) into directory ``path``,
        owners and modes as the archive says."""

    @abc.abstractmethod
    def diff(self, ref: str) -> builtins.list[ChangeEntry]: ...

    @abc.abstractmethod
    def commit(
        self,
        ref: str,
        reference: str | None = None,
        *,
        changes: builtins.list[str] | None = None,
        message: str | None = None,
        author: str | None = None,
        pause: bool = True,
    ) -> str:
        """Make an image of the container's filesystem changes; returns the image ID."""

    @abc.abstractmethod
    def update(self, ref: str, resources: Resources) -> None: ...

    def rootfs(self, ref: str) -> Path:  # pragma: no cover - optional
        raise NotImplementedError

    # -- housekeeping
    def sweep(self, *, foreign: Callable[[str], bool] | None = None) -> builtins.list[str]:
        """Free what interrupted commands left (half-made or half-removed containers,
        orphaned mounts, monitors and image holds), the thorough way; ``container
        prune`` and ``system prune`` run it. ``foreign(id)``: whether another backend
        on the same root keeps container ``id`` (its image hold is not stale).
        Returns one line per thing found."""
        return []

    def keeps(self, cid: str) -> bool:
        """Whether full ID ``cid`` is a container of this backend, or one being made
        or removed (cheap, no reconciling)."""
        return False

    def disk_usage(self, ref: str) -> int:
        """Bytes on disk the container holds besides its image (its writable layer,
        logs and configuration): what removing it frees."""
        return 0
