"""The task interface: what differs between isolations, beneath the engine.

The engine (``lamina.engine``) keeps every container's record, name, image hold,
volumes, logs settings and process, reconciles records with what is real and
serialises changes with a per-container lock; a ``TaskBackend`` runs the workload
of one isolation (containerd's tasks beneath its containers store): it prepares
the workload's filesystem and bundle, starts it under a monitor that outlives every
lamina command, signals it, tells how it exited (its exit file), tears a run down,
reaches its filesystem, execs in it and attaches to it.

A backend never writes the store: what it makes is returned to the engine (a
``task`` part of the record, a ``Started``), and every method is given the
``Record`` it acts on. Each container has a directory of the backend's under
``task_root``, named by its ID; the engine keeps its ``lock`` there and the
``waiter`` of the exit command's fast path. Backends are imported only when a
container of their isolation is touched.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina.runtime._types import (
    ChangeEntry,
    ContainerConfig,
    Endpoint,
    ExecResult,
    ExecSink,
    ExitStatus,
    NetworkRun,
    PathStat,
    PortMapping,
    ProcessSpec,
    Record,
    Resources,
    Signalled,
    Started,
    Stats,
)

if TYPE_CHECKING:
    from lamina.image import ImageRecord, LocalImages
    from lamina.runtime._volumes import Volume


class Attachment(abc.ABC):
    """A connection to a workload's stdio, made before it is let run (so that no
    early output is lost) and pumped afterwards."""

    @abc.abstractmethod
    def pump(
        self,
        *,
        stdin: BinaryIO | None,
        stdout: BinaryIO,
        stderr: BinaryIO,
        tty: bool,
        running: Callable[[], bool],
        detach_keys: bytes | None = None,
    ) -> bool:
        """Copy the workload's output to ``stdout``/``stderr`` (and ``stdin`` to it)
        until its output ends; ``running()`` says whether the container still runs.
        With ``tty`` the caller's terminal size is followed, and ``detach_keys`` (None:
        Docker's ctrl-p ctrl-q) in ``stdin`` end the pump early: then True."""

    def close(self) -> None:  # noqa: B027 - optional
        """Drop the connection (when it is never pumped)."""


class TaskBackend(abc.ABC):
    """One isolation's workloads on one lamina root."""

    isolation: str = ""  # "process" | "vm"
    name: str = ""  # inspect's Backend: "oci" | "vm"

    def __init__(
        self,
        root: Path,
        task_root: Path,
        *,
        images: Callable[[], LocalImages],
        report: Callable[[str, str], None],
    ) -> None:
        """``task_root``: where the containers' directories are; ``images``: the
        engine's image store; ``report(cid, text)``: a finding, said in one line."""
        self.root = root
        self.task_root = task_root
        self._images = images
        self._report = report

    @property
    def images(self) -> LocalImages:
        return self._images()

    def close(self) -> None:  # noqa: B027 - optional: not every backend holds anything
        """Release what this object holds open; workloads are not affected."""

    def task_dir(self, cid: str) -> Path:
        return self.task_root / cid

    # -- making and unmaking ------------------------------------------------------
    @abc.abstractmethod
    def prepare(
        self,
        cid: str,
        config: ContainerConfig,
        process: ProcessSpec,
        image: ImageRecord,
        volumes: dict[str, Volume],
    ) -> dict[str, Any]:
        """Make the workload's filesystem and bundle in ``task_dir(cid)`` (made and
        locked by the engine): ``volumes`` has the volume of each volume mount (made
        and filled by the engine), by target. Returns the ``task`` part of the record;
        a failure leaves what it made for ``discard``."""

    @abc.abstractmethod
    def discard(self, cid: str) -> None:
        """Undo a ``prepare`` that failed, or free what one left whose container has
        no record: everything of it but its directory (which the engine removes)."""

    def rebuild(self, rec: Record) -> None:  # noqa: B027 - optional
        """Its directory was deleted by hand under a live record: make again what
        the record says is in it."""

    @abc.abstractmethod
    def delete(self, rec: Record) -> None:
        """Free what a stopped container's task holds besides its directory (its root
        filesystem), as its removal does."""

    @abc.abstractmethod
    def orphan(self, cid: str) -> builtins.list[str]:
        """Free what a killed command left of container ``cid``, which has no record
        (its lock is held by the engine): monitor, runtime state, processes, root
        filesystem, not its directory. Returns what there was ("monitor", ...)."""

    def strays(self, known: set[str], *, thorough: bool) -> builtins.list[str]:
        """IDs this backend has traces of but no directory (and no record): the
        engine makes each a directory and frees it as an ``orphan``. Traces that
        need no lock are freed here and said through ``report``."""
        return []

    def counts_agree(self, rows: int) -> bool:
        """Whether this backend's directories are as many as its records (cheap): when
        not, the engine looks for orphans."""
        return True

    # -- running --------------------------------------------------------------------
    @abc.abstractmethod
    def start(
        self,
        rec: Record,
        *,
        exit_command: builtins.list[str],
        console_size: Any = None,
        network: NetworkRun | None = None,
    ) -> Started:
        """Launch the workload under its monitor, not yet let run (``release``).
        ``exit_command``: what the monitor runs once the workload's exit is written
        down. ``console_size``: (rows, columns) of the terminal a ``-t`` workload
        starts with, when known. ``network``: what the engine's network layer made
        for this run (the namespace to join, the endpoints, the published ports and
        the sockets holding them, for the monitor to keep). StartFailed when it
        cannot start."""

    def release(self, rec: Record) -> None:  # noqa: B027 - optional
        """Let a launched workload run (runc's exec FIFO; a VM's boot awaited)."""

    def launched(self, cid: str) -> bool:
        """Whether the workload was launched and waits to be let run (a starter that
        died in between leaves it so). Checked for every running container of every
        command: a file test or two."""
        return False

    @abc.abstractmethod
    def exit_file(self, cid: str) -> str:
        """The path of the exit file its monitor writes (a string: checked for every
        running container of every command)."""

    @abc.abstractmethod
    def exit_status(self, rec: Record) -> ExitStatus | None:
        """How the run ended, from its exit file; None while it is not written."""

    def oom_kills(self, rec: Record) -> int:
        """OOM kills of the run (read before ``teardown``)."""
        return 0

    @abc.abstractmethod
    def has_run(self, cid: str) -> bool:
        """Whether a stopped container still has what a run leaves (a monitor, runtime
        state): a start, stop or finish was killed halfway. Checked for every stopped
        container of every command: a file test or two."""

    @abc.abstractmethod
    def teardown(
        self, rec: Record, *, force: bool, unmount: bool = True, files: bool = True
    ) -> None:
        """Undo one run: runtime state, cgroups, the root filesystem's mount
        (``unmount``), the monitor's files (``files``). Idempotent; ``force`` kills
        what is left of the workload and its monitor."""

    @abc.abstractmethod
    def signal(self, rec: Record, sig: int) -> Signalled:
        """Send ``sig`` to the workload's main process."""

    def force_stop(self, rec: Record) -> Signalled:
        """End the workload at once (``stop`` after its grace period, ``rm -f``)."""
        import signal

        return self.signal(rec, signal.SIGKILL)

    def force_delete(self, rec: Record) -> None:  # noqa: B027 - optional
        """Last resort when a workload did not end after ``force_stop``: its runtime
        told to delete it, its monitor killed."""

    @abc.abstractmethod
    def pause(self, rec: Record) -> None: ...

    @abc.abstractmethod
    def resume(self, rec: Record) -> None:
        """Unpause; also when the runtime cannot (its state is gone)."""

    # -- observing ------------------------------------------------------------------
    @abc.abstractmethod
    def log_path(self, rec: Record) -> Path:
        """Where the monitor writes the workload's output (k8s-file format)."""

    @abc.abstractmethod
    def stats(self, rec: Record) -> Stats: ...

    @abc.abstractmethod
    def top(self, rec: Record) -> builtins.list[builtins.list[str]]:
        """``ps -ef`` rows of the workload's processes."""

    @abc.abstractmethod
    def inspect(self, rec: Record) -> dict[str, Any]:
        """This backend's part of ``inspect`` (merged over the engine's)."""

    def ports(self, rec: Record) -> builtins.list[PortMapping]:
        """The ports the current run publishes, resolved."""
        return []

    def update_network(self, rec: Record, endpoints: builtins.list[Endpoint]) -> None:  # noqa: B027
        """A bridge network was connected or disconnected (``endpoints``: all of them
        now): the workload's view of names and resolvers follows (hosts, resolv.conf)."""

    @abc.abstractmethod
    def disk_usage(self, rec: Record) -> int:
        """Bytes on disk the container holds besides its image and volumes."""

    # -- exec and attach ------------------------------------------------------------
    @abc.abstractmethod
    def exec(
        self,
        rec: Record,
        argv: builtins.list[str],
        *,
        env: builtins.list[str] | None,
        user: str | None,
        workdir: str | None,
        tty: bool,
        stdin: BinaryIO | None,
        detach: bool,
        stream: bool,
        timeout: float | None = None,
        output_limit: int | None = None,
        sink: ExecSink | None = None,
        detach_keys: bytes | None = None,
    ) -> ExecResult:
        """``stream``: the caller's stdio passed through (``stdin`` or ours); with a
        ``sink``, through it instead (see ``ExecSink``). With a terminal,
        ``detach_keys`` (None: Docker's ctrl-p ctrl-q) in its stdin leave the exec
        running (``ExecResult.detached``)."""

    @abc.abstractmethod
    def attach(self, rec: Record) -> Attachment:
        """Connect to the workload's stdio (before ``release`` when starting)."""

    @abc.abstractmethod
    def resize(self, rec: Record, height: int, width: int) -> None: ...

    # -- its filesystem -------------------------------------------------------------
    # Paths are the container's, resolved as it sees them (volumes and binds included),
    # never the host's. A stopped container is given under its lock.
    @abc.abstractmethod
    def stat_path(self, rec: Record, path: str) -> PathStat: ...

    @abc.abstractmethod
    def copy_out(self, rec: Record, path: str, *, follow_link: bool) -> Iterator[bytes]:
        """A tar stream of ``path``; errors are raised before the first chunk."""

    @abc.abstractmethod
    def copy_in(self, rec: Record, path: str, tar_stream: BinaryIO) -> None: ...

    @abc.abstractmethod
    def diff(self, rec: Record) -> builtins.list[ChangeEntry]: ...

    @abc.abstractmethod
    def commit(
        self,
        rec: Record,
        reference: str | None,
        *,
        changes: builtins.list[str],
        message: str | None,
        author: str | None,
        pause: bool,
    ) -> str:
        """An image of the container's filesystem changes, the workload held still
        meanwhile when ``pause``; returns the image ID."""

    @abc.abstractmethod
    def update(self, rec: Record, resources: Resources) -> None:
        """Apply changed limits (``rec.config.resources`` holds the new whole set;
        ``resources`` what changed) to the running workload and its bundle."""
