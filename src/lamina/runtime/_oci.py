"""The process-isolation backend: runc containers monitored by conmon, no daemon.

State of one container, all under the lamina root:

- a row in ``containers.db`` (``_state``): config, status, last exit;
- ``containers/<id>/``: the OCI bundle (``config.json``), ``userdata/`` (hostname,
  hosts, resolv.conf), conmon's files (``ctr.log``, ``exit/<id>``, ``conmon.pid``,
  ``attach``, ``ctl``), ``lock`` (flock: one transition at a time);
- ``overlay/<id>/{upper,work,merged}``: the root filesystem, an overlay of the
  image's snapshots (never copied) mounted at create and at start, unmounted when
  the container stops;
- ``runc/<id>``: runc's own state (``runc --root <root>/runc``); another OCI runtime
  (crun, ``--runtime PATH``) keeps its state in ``runtimes/<name>/<id>``. The row
  records the runtime binary a container was created with, and every later
  operation on that container uses it (rows without one are runc's).

Lifecycle: ``create`` (mount, bundle, row) -> ``start`` (conmon runs ``<runtime>
create`` and reports the PID on its sync pipe, then the container is released: for
runc by reading its exec FIFO, as ``runc start`` would; otherwise by ``<runtime>
start``) -> the workload exits -> conmon writes the exit file and
runs the exit command (``python -m lamina.runtime.cleanup``) unless a lamina
process waiting for the container does that cleanup itself -> ``finish``: the OOM
counter is read before the cgroup goes, the exit is recorded, the overlay
unmounted, runc state and cgroups removed, and ``--rm`` containers removed.

Every public call first reconciles each row with what is real, so no container is
lost, shown running after it died, or left half made or half removed, even if every
lamina process was killed at any point:

- a running container whose conmon is gone, or whose exit file has appeared, is
  finished right there; one whose starter died before letting it run is let run;
- a stopped one with what a run leaves (conmon, runtime state) is torn down;
- a ``removing`` one whose remover died is removed;
- one whose ``ContainerConfig.owner`` lease is not alive (a killed build's step) is
  removed, killed first if it runs;
- a ``containers/<id>`` or ``overlay/<id>`` directory without a row is what a killed
  ``create`` left (or a killed removal): it is cleaned up once its lock is free.
  (Scanned only when the directory counts differ from the row count.)

The ``lock`` of a container is held by whoever changes it (creator, starter,
remover), from before its directory has any content until its row says what it
is: a free lock and a row that disagrees with the files means its owner died.
When the runtime cannot act on a container (its state was deleted), stop, kill and
``rm -f`` act on the processes in its cgroup, and say so in one line (``report``).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from signal import SIGKILL
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina import _leases
from lamina._fsutil import atomic_write, naming
from lamina._hooks import stop_point
from lamina._mount import MNT_DETACH, last_errno, libc, mount_overlay, unmount_under
from lamina.errors import InUse, LaminaError, NotFound
from lamina.runtime import _conmon, _logs
from lamina.runtime._cgroups import (
    cgroup_procs,
    kill_cgroup,
    read_oom_kills,
    read_stats,
    remove_cgroup,
    thaw,
)
from lamina.runtime._conmon import Bundle, OciBinary, StartFailed
from lamina.runtime._interface import Runtime
from lamina.runtime._signals import (
    parse_signal,
    signal_from_exit_code,
    signal_name,
    stop_signal,
)
from lamina.runtime._spec import build_spec, cgroup_path
from lamina.runtime._state import (
    Record,
    StateStore,
    Summary,
    new_id,
    random_name,
    validate_name,
)
from lamina.runtime._types import (
    ChangeEntry,
    Container,
    ContainerConfig,
    ExecResult,
    ExitReason,
    LogEntry,
    Mount,
    PathStat,
    Resources,
    Stats,
    Status,
    WaitCondition,
    WaitOutcome,
)

if TYPE_CHECKING:
    import socket

    from lamina.image import ImageRecord, LocalImages
    from lamina.runtime import _copier
    from lamina.runtime._volumes import VolumeStore

_ACTIVE = (Status.RUNNING, Status.PAUSED)
_ACTIVE_VALUES = (Status.RUNNING.value, Status.PAUSED.value)
_STOP_KILL_WAIT = 10.0  # after SIGKILL, how long a container may take to be gone
# Record.extra key: the lease of a ``restart`` that keeps a --rm container across its stop.
_RESTARTING = "restarting"
_HOLDER = "container:"  # image hold of a container: "container:<id>"
_ID_LEN = 64


class WaitTimeout(LaminaError, TimeoutError):
    """``wait(timeout=...)`` ran out of time; the container is still running."""


class OciRuntime(Runtime):
    """runc + conmon containers on one lamina root."""

    name = "oci"

    def __init__(
        self,
        root: Path,
        *,
        oci_runtime: str | None = "runc",
        registry_config: Any = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        """``oci_runtime``: the runtime new containers are created with, "runc",
        "crun" (looked up in PATH) or a path; a missing one, or crun on a host it
        cannot run on, fails here. None: only existing containers are managed.
        ``report``: told, one line each, what reconciling found and did (a container
        whose runtime state was gone, the leftovers of a killed command); the lines
        also collect in ``notices``."""
        self.notices: list[str] = []
        self._report = report
        self.root = Path(root).absolute()  # conmon's exit command runs elsewhere
        self.oci_runtime: OciBinary | None = None
        if oci_runtime is not None:
            self.oci_runtime = OciBinary.at(_conmon.find_oci_runtime(oci_runtime), self.root)
        self.containers_dir = self.root / "containers"
        self.overlay_dir = self.root / "overlay"
        self._root_s, self._containers_s = str(self.root), str(self.containers_dir)
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        self.state = StateStore(self.root / "containers.db")
        self._registry_config = registry_config
        self._local: LocalImages | None = None
        self._volumes: VolumeStore | None = None

    def close(self) -> None:
        self.state.close()
        if self._local is not None:
            self._local.close()
            self._local = None

    # -- helpers: stores -----------------------------------------------------------
    @property
    def images(self) -> LocalImages:
        if self._local is None:
            from lamina.image._local import LocalImages

            self._local = LocalImages.open(self.root)
        return self._local

    @property
    def volumes(self) -> VolumeStore:
        if self._volumes is None:
            from lamina.runtime._volumes import VolumeStore

            self._volumes = VolumeStore(self.root / "volumes")
        return self._volumes

    def _bundle(self, cid: str) -> Bundle:
        return Bundle(self.containers_dir / cid, cid)

    def _ovl(self, cid: str) -> Path:
        return self.overlay_dir / cid

    def _merged(self, cid: str) -> Path:
        return self.overlay_dir / cid / "merged"

    def _container(self, rec: Record) -> Container:
        return Container(
            id=rec.id,
            name=rec.name,
            config=rec.config,
            state=rec.state,
            created=rec.created,
            backend=self.name,
            ip_address="",
        )

    def _notice(self, cid: str, text: str) -> None:
        self._say(f"container {cid[:12]}: {text}")

    def _say(self, line: str) -> None:
        self.notices.append(line)
        if self._report is not None:
            self._report(line)

    def _open_lock(self, cid: str) -> int:
        """An open descriptor of the container's ``lock`` file. NotFound when the
        container is gone or being removed. A directory deleted by hand under a live
        row is made again: the row, the processes and the runtime's state are what is
        real, and they need a lock to be acted on."""
        path = self.containers_dir / cid / "lock"
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            pass
        rec = self.state.get(cid)
        if rec is None or rec.status == Status.REMOVING:  # a remover deletes the dir
            raise NotFound(f"no such container: {cid}")
        with contextlib.suppress(FileExistsError):
            path.parent.mkdir(parents=True)
            # conmon writes the exit status into exit/ (and persist/): with these
            # back, the exit of a running container is still recorded.
            for sub in ("userdata", "exit", "persist"):
                (path.parent / sub).mkdir(exist_ok=True)
            with contextlib.suppress(LaminaError, OSError):  # exec and start need them
                self._write_userdata(rec)
                self._write_spec(rec)
            self._notice(cid, f"its directory {path.parent} was gone; made it again")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such container: {cid}") from None

    def _still_there(self, fd: int, cid: str) -> bool:
        """Whether the lock ``fd`` is still the container's (not removed while this
        process waited for it)."""
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.containers_dir / cid / "lock"))
        except (FileNotFoundError, NotADirectoryError):
            return False

    @contextlib.contextmanager
    def _locked(self, cid: str) -> Iterator[None]:
        """Serialise transitions of one container across processes. NotFound once the
        container is removed, also when that happened while this waited for the lock."""
        fd = self._open_lock(cid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not self._still_there(fd, cid):  # the bundle went away (``_drop``)
                raise NotFound(f"no such container: {cid}")
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked_if_free(self, cid: str) -> Iterator[bool]:
        """The container's lock if nobody holds it: True inside when taken (whoever
        was changing the container, if anyone, is gone); False when it is held or the
        container is gone."""
        try:
            os.close(self._open_lock(cid))  # made again if deleted by hand
        except NotFound:
            yield False
            return
        from lamina._leases import try_lock  # only when recovering: not on the common path

        with try_lock(self.containers_dir / cid / "lock") as free:
            yield free

    def _resolve(self, ref: str) -> Record:
        self._reconcile()
        return self.state.resolve(ref)

    def _fresh(self, cid: str) -> Record:
        rec = self.state.get(cid)
        if rec is None:
            raise NotFound(f"no such container: {cid}")
        return rec

    def _binary(self, rec: Record) -> OciBinary:
        """The OCI runtime ``rec`` was created with (runc for rows that name none)."""
        return OciBinary.at(str(rec.extra.get("oci_runtime") or _conmon.RUNC), self.root)

    def _oci(
        self, rec: Record, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``<runtime> --root <state> ARGS`` for the container ``rec``."""
        binary = self._binary(rec)
        proc = subprocess.run(
            [binary.path, "--root", str(binary.state_root), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        if check and proc.returncode != 0:
            text = _conmon.runc_error_text((proc.stderr or proc.stdout).decode(errors="replace"))
            raise LaminaError(
                f"{binary.name} {args[0]} failed: {text or 'exit ' + str(proc.returncode)}"
            )
        return proc

    def _require_running(self, rec: Record, action: str) -> None:
        if rec.status == Status.PAUSED:
            raise LaminaError(
                f"cannot {action} container {rec.id[:12]}: it is paused; unpause it first"
            )
        if rec.status != Status.RUNNING:
            raise LaminaError(f"cannot {action} container {rec.id[:12]}: it is not running")

    # -- reconcile -----------------------------------------------------------------
    def _reconcile(self, *, sweep: bool = False) -> None:
        """Bring every row in line with what is real (see the module docstring).
        Cheap on the common path: a few stats per row, and a scan of the container
        directories only when their count differs from the row count (or ``sweep``)."""
        rows = self.state.summaries()
        for row in rows:
            try:
                if row.status in _ACTIVE_VALUES:
                    self._check_active(row)
                else:
                    with self._recovering(row.id):
                        if row.status == Status.REMOVING.value:
                            self._resume_removal(row.id)
                        else:
                            self._check_stopped(row.id)
                if row.owner and not _owner_alive(self.root, row.owner):
                    with self._recovering(row.id):
                        self._dispose(row.id, row.owner)
            except NotFound:
                continue
        if sweep or self._dirs_disagree(len(rows)):
            self._collect_orphans({row.id for row in rows})
        self._remove_abandoned_restarts()
        # What killed commands registered on their leases (a cp's scratch directory, a
        # save's temp file...) goes with the next container command, not only the
        # next one that writes images.
        for info in _leases.reap(self.root):
            if info.paths or info.mounts:
                n = len(info.paths) + len(info.mounts)
                self._say(
                    f"{info.kind or 'a command'} (process {info.pid}) was interrupted: "
                    f"removed {n} leftover{'s' if n != 1 else ''} of it"
                )

    @contextlib.contextmanager
    def _recovering(self, cid: str) -> Iterator[None]:
        """Cleaning up after a dead command must not fail the living one (``ps``):
        what cannot be done is said, and tried again by the next command."""
        try:
            yield
        except NotFound:
            raise
        except (LaminaError, OSError) as e:
            self._notice(cid, f"could not clean up after an interrupted command: {e}")

    def _check_active(self, row: Summary) -> None:
        # String paths: this runs for every row of every command (pathlib costs more).
        cid = row.id
        if os.path.exists(f"{self._containers_s}/{cid}/exit/{cid}") or not _conmon.alive(
            row.conmon_pid, row.conmon_start
        ):
            self._finish(cid)
        elif os.path.exists(f"{self._root_s}/runc/{cid}/exec.fifo"):
            with self._recovering(cid):
                self._resume_start(cid)
        elif not os.path.exists(f"{self._containers_s}/{cid}/lock"):
            os.close(self._open_lock(cid))  # deleted by hand: made again, and said so

    def _resume_start(self, cid: str) -> None:
        """runc made the container but it waits to be let run: fine while its starter
        holds the lock; a starter that died leaves it waiting forever. Let it run, as
        the start asked (Docker's daemon finishes a start its client gave up on)."""
        with self._locked_if_free(cid) as free:
            rec = self.state.get(cid) if free else None
            if rec is None or rec.status not in _ACTIVE:
                return
            if not (self._binary(rec).state_root / cid / "exec.fifo").exists():
                return
            self._release(rec)
            self._notice(cid, "its start was interrupted before it ran; started it")

    def _check_stopped(self, cid: str) -> None:
        """A stopped container with a conmon or runtime state of a run: a start, stop
        or finish was killed halfway. Tear that run down once nobody is at it."""
        if not (
            os.path.exists(f"{self._containers_s}/{cid}/conmon.pid")
            or os.path.exists(f"{self._root_s}/runc/{cid}")
        ):
            return
        with self._locked_if_free(cid) as free:
            rec = self.state.get(cid) if free else None
            if rec is None or rec.status in (*_ACTIVE, Status.REMOVING):
                return
            self._teardown_run(rec, force=True)
            self._notice(cid, "a start or stop of it was interrupted; cleaned up after it")

    def _resume_removal(self, cid: str) -> None:
        """A row left ``removing`` by a remover that died ("Removal In Progress"
        forever): finish the removal."""
        with self._locked_if_free(cid) as free:
            if free:
                rec = self.state.get(cid)
                if rec is not None and rec.status == Status.REMOVING:
                    self._remove_locked(rec, volumes=bool(rec.extra.get("remove_volumes")))
                    self._notice(cid, "its removal was interrupted; removed it")
                return
        if not self._bundle(cid).dir.exists():  # past its directory: nothing to lock
            rec = self.state.get(cid)
            if rec is not None and rec.status == Status.REMOVING:
                self._drop(rec, volumes=bool(rec.extra.get("remove_volumes")))
                self._notice(cid, "its removal was interrupted; removed it")

    def _dispose(self, cid: str, owner: str) -> None:
        """Remove a container that was disposable work of a process that is gone."""
        rec = self.state.get(cid)
        if rec is None:
            return
        try:
            self._remove(rec, force=True, volumes=True)
        except NotFound:
            return
        self._notice(cid, f"its owner {owner} is gone; removed it")

    def _dirs_disagree(self, rows: int) -> bool:
        return not (_count_entries(self.containers_dir) == _count_entries(self.overlay_dir) == rows)

    def _collect_orphans(self, known: set[str]) -> None:
        """Directories without a row: what a killed create (or removal) left."""
        for name in _list_dir(self.containers_dir):
            if name in known:
                continue
            if name.startswith(".rm-"):  # a removal's trash; a live remover ignores errors
                shutil.rmtree(self.containers_dir / name, ignore_errors=True)
            elif _is_id(name):
                with self._recovering(name):
                    self._remove_orphan(name)
        for name in _list_dir(self.overlay_dir):
            if name in known or not _is_id(name) or (self.containers_dir / name).exists():
                continue  # a directory in containers/ tells whether its owner lives
            with self._recovering(name):
                what = self._remove_overlay(name)[:-1]
                self._notice(name, f"left over by an interrupted command: removed its {_and(what)}")

    def _remove_orphan(self, cid: str) -> None:
        """Free what a container without a row left, once its lock is free."""
        with self._locked_if_free(cid) as free:
            if not free or self.state.get(cid) is not None:
                return  # its creator still works, or finished since the rows were read
            bundle = self._bundle(cid)
            what = []
            if _kill_conmon(bundle):
                what.append("monitor")
            binaries = self._binaries_with_state(cid)
            for binary in binaries:
                subprocess.run(
                    [binary.path, "--root", str(binary.state_root), "delete", "--force", cid],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                )
            if binaries:
                what.append("runtime state")
                if kill_cgroup(cgroup_path(cid)):  # it ran: that cgroup is this root's
                    what.append("processes")
                with contextlib.suppress(InUse, OSError):
                    remove_cgroup(cgroup_path(cid))
            what += self._remove_overlay(cid)
            self.images.images.release(_HOLDER + cid)
            _remove_dir(bundle.dir)
        self._notice(cid, f"left over by an interrupted command: removed its {_and(what)}")

    def _remove_overlay(self, cid: str) -> builtins.list[str]:
        """Unmount and delete ``overlay/<id>``; says what there was."""
        ovl = self._ovl(cid)
        what = ["mount"] if os.path.ismount(ovl / "merged") else []
        unmount_under(ovl)
        if ovl.exists():
            shutil.rmtree(ovl, ignore_errors=True)
            what.append("root filesystem")
        return [*what, "directory"]

    def _binaries_with_state(self, cid: str) -> builtins.list[OciBinary]:
        """The OCI runtimes that keep state of ``cid`` under this root."""
        found = []
        if (self.root / "runc" / cid).exists():
            found.append(OciBinary.at(_conmon.RUNC, self.root))
        for state in (self.root / "runtimes").glob(f"*/{cid}"):
            with contextlib.suppress(LaminaError):
                found.append(OciBinary.at(_conmon.find_oci_runtime(state.parent.name), self.root))
        return found

    def keeps(self, cid: str) -> bool:
        return self._bundle(cid).dir.exists() or self.state.get(cid) is not None

    def sweep(self, *, foreign: Callable[[str], bool] | None = None) -> builtins.list[str]:
        """Free everything interrupted commands left, found the slow way (``container
        prune``, ``system prune``): what reconciling frees, with a full scan of the
        directories, plus runtime state and image holds of containers without a row
        (``foreign``: IDs the VM backend keeps). Returns what was found and done."""
        start = len(self.notices)
        self._reconcile(sweep=True)
        known = {row.id for row in self.state.summaries()}
        for state_root in (self.root / "runc", *(self.root / "runtimes").glob("*")):
            for cid in _list_dir(state_root):
                if _is_id(cid) and cid not in known and not self._bundle(cid).dir.exists():
                    # Runtime state and nothing else: give it a directory to lock.
                    self._bundle(cid).dir.mkdir(parents=True, exist_ok=True)
                    self._remove_orphan(cid)
        self._release_stale_holds(foreign or (lambda cid: False))
        return self.notices[start:]

    def _release_stale_holds(self, foreign: Callable[[str], bool]) -> None:
        """Image holds of containers that neither backend keeps (a creator or remover
        killed at the wrong moment): the image must not stay pinned."""
        images = self.images.images
        for record in images.list():
            for holder in images.holders(record.digest):
                cid = holder.removeprefix(_HOLDER)
                if holder.startswith(_HOLDER) and not self.keeps(cid) and not foreign(cid):
                    images.release(holder)
                    self._notice(cid, f"released its hold on image {record.id[7:19]}")

    def cleanup(self, ref: str) -> None:
        """Conmon's exit command: record the exit and tear the run down."""
        try:
            rec = self.state.resolve(ref)
        except NotFound:
            return
        with contextlib.suppress(NotFound):
            self._finish(rec.id)

    def _finish(self, cid: str) -> Record | None:
        """Record the end of a run and clean it up. Returns the final record (also
        when ``--rm`` removed the container), None if the container is gone."""
        with self._locked(cid):
            rec = self.state.get(cid)
            if rec is None or rec.status not in _ACTIVE:
                return rec
            bundle = self._bundle(cid)
            code = _conmon.read_exit_file(bundle)
            error = ""
            if code is None:
                if _conmon.alive(rec.conmon_pid, rec.conmon_start):
                    return rec  # still running
                code = _conmon.read_exit_file(bundle)  # written just before conmon exited?
            if code is None:
                code, error = 137, "monitor died"
            cg = cgroup_path(cid)
            oom_kills = read_oom_kills(cg)  # before runc delete removes the cgroup
            if error:
                reason = ExitReason.RUNTIME_ERROR
            elif oom_kills and code != 0:
                reason = ExitReason.OOM_KILLED
            elif code > 128:
                reason = ExitReason.SIGNAL
            else:
                reason = ExitReason.EXITED
            values: dict[str, Any] = {
                "status": Status.EXITED,
                "exit_code": code,
                "reason": reason.value,
                "oom_killed": oom_kills > 0,
                "error": error,
                "finished_at": time.time(),
                "exits": rec.exits + 1,
            }
            self.state.update(cid, **values)
            for k, v in values.items():
                setattr(rec, k, v)
            if rec.config.auto_remove and not self._restarting(rec):
                self._remove_locked(rec, volumes=True, force=bool(error))
            else:
                self._teardown_run(rec, force=bool(error))
        return rec

    # -- restart (its marks are read by _finish and _reconcile) ---------------------
    def restart(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        rec = self._resolve(ref)
        if signal is not None:
            parse_signal(signal)  # a bad one is refused before anything stops
        if rec.status not in _ACTIVE:
            self.start(rec.id)
            return
        if not rec.config.auto_remove:
            self.stop(rec.id, timeout=timeout, signal=signal)
            self.start(rec.id)
            return
        # --rm: the stop must not remove it (Docker keeps it across a restart). The
        # mark names this process's lease: if it dies, the container is removed after
        # all (by _finish, or by _reconcile once it has stopped).
        with _leases.take(self.root, "restart") as lease:
            self._mark_restarting(rec.id, lease.id)
            try:
                self.stop(rec.id, timeout=timeout, signal=signal)
                self.start(rec.id)
            finally:
                with contextlib.suppress(NotFound):
                    self._mark_restarting(rec.id, None)
                # Exited again already, or its start failed: --rm removes it now.
                self._remove_if_exited(rec.id)

    def _mark_restarting(self, cid: str, lease_id: str | None) -> None:
        with self._locked(cid):
            rec = self._fresh(cid)
            if lease_id:
                rec.extra[_RESTARTING] = lease_id
            else:
                rec.extra.pop(_RESTARTING, None)
            self.state.update(cid, extra=rec.extra)

    def _restarting(self, rec: Record) -> bool:
        lease_id = rec.extra.get(_RESTARTING)
        return bool(lease_id) and _leases.alive(self.root, str(lease_id))

    def _remove_if_exited(self, cid: str) -> None:
        """Remove a --rm container that is exited and no restart keeps."""
        with contextlib.suppress(NotFound), self._locked(cid):
            rec = self.state.get(cid)
            if (
                rec is not None
                and rec.status == Status.EXITED
                and rec.config.auto_remove
                and not self._restarting(rec)
            ):
                self._remove_locked(rec, volumes=True)

    def _remove_abandoned_restarts(self) -> None:
        """--rm containers a restart stopped and, killed, never started again."""
        for rec in self.state.exited_with(_RESTARTING):
            if not self._restarting(rec):
                self._remove_if_exited(rec.id)

    def _teardown_run(
        self, rec: Record, *, force: bool, unmount: bool = True, files: bool = True
    ) -> None:
        """Undo one run: runtime state, cgroups, the overlay mount (``unmount``),
        conmon's files (``files``). Idempotent; ``force`` kills what is left of the
        container."""
        cid = rec.id
        binary = self._binary(rec)
        if force:
            _kill_conmon(self._bundle(cid))  # a starter killed mid-launch leaves one
        if not (binary.state_root / cid).exists():
            # A crash between runc delete and this, or state deleted by hand: whatever
            # still runs in the cgroup is the container's, with nothing to stop it.
            if force and (left := kill_cgroup(cgroup_path(cid))):
                self._notice(
                    cid,
                    f"its runtime state is gone; killed {_processes(left)} left in its "
                    f"cgroup {cgroup_path(cid)}",
                )
            with contextlib.suppress(InUse, OSError):
                remove_cgroup(cgroup_path(cid))
        elif force or not binary.is_runc or not self._fast_delete(binary, cid):
            self._oci(rec, "delete", "--force", cid, check=False)
            with contextlib.suppress(InUse, OSError):
                remove_cgroup(cgroup_path(cid))
        if unmount:
            self._unmount(cid)
        if files:
            bundle = self._bundle(cid)
            for p in bundle.runtime_files():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            with contextlib.suppress(OSError):
                bundle.persist_dir.rmdir()
            for d in bundle.dir.glob("exec-*"):  # detached execs' conmon dirs
                if d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)

    def _fast_delete(self, runc: OciBinary, cid: str) -> bool:
        """``runc delete`` of a container whose init has exited, without running runc:
        remove the cgroups and runc's state directory (no hooks are ever configured).
        False when something is still running, for ``runc delete --force`` to handle.
        runc's state layout only: other runtimes always get ``delete``."""
        try:
            remove_cgroup(cgroup_path(cid))
        except (InUse, OSError):
            return False
        shutil.rmtree(runc.state_root / cid, ignore_errors=True)
        return True

    # -- overlay -------------------------------------------------------------------
    def _lowerdirs(self, rec: Record) -> list[Path]:
        return [Path(p) for p in rec.extra.get("lowerdirs", [])]

    def _overlay_options(self, rec: Record) -> tuple[list[str], str]:
        """The overlay of ``rec``'s root: its lower dirs (topmost first) and the mount
        options that follow ``lowerdir=``."""
        ovl = self._ovl(rec.id)
        lowers = [str(p) for p in self._lowerdirs(rec)]
        if not lowers:
            empty = ovl / "empty"
            empty.mkdir(exist_ok=True)
            lowers = [str(empty)]
        for p in lowers:
            if any(c in p for c in ",:"):
                raise LaminaError(f"cannot mount a lower directory whose path has ',' or ':': {p}")
        upper, work = ovl / "upper", ovl / "work"
        # --rm containers need no durable upper dir: "volatile" skips overlay's syncs
        # of it (umount would otherwise sync the whole upper filesystem), as podman does.
        extra = ",volatile" if rec.config.auto_remove else ""
        if extra:  # left by an earlier volatile mount (a restart's); the kernel refuses
            # to mount again while it exists, and this upper dir is disposable anyway
            shutil.rmtree(work / "work" / "incompat", ignore_errors=True)
        return lowers, f",upperdir={upper},workdir={work}{extra}"

    def _mount(self, rec: Record) -> None:
        merged = self._merged(rec.id)
        if os.path.ismount(merged):
            return
        lowers, tail = self._overlay_options(rec)
        try:
            err = mount_overlay(merged, lowers, tail)
        except ValueError:
            raise LaminaError(f"image has too many layers to mount ({len(lowers)})") from None
        if err:
            raise LaminaError(
                f"cannot mount the root filesystem of container {rec.id[:12]}: {os.strerror(err)}"
            )

    def _unmount(self, cid: str) -> None:
        merged = self._merged(cid)
        for _ in range(50):
            if not os.path.ismount(merged):
                return
            if libc().umount2(str(merged).encode(), 0) == 0:
                continue
            err = last_errno()
            if err in (errno.EINVAL, errno.ENOENT):
                return
            if err == errno.EBUSY:
                libc().umount2(str(merged).encode(), MNT_DETACH)
                continue
            raise LaminaError(f"cannot unmount {merged}: {os.strerror(err)}")

    @contextlib.contextmanager
    def _copy_view(self, rec: Record) -> Iterator[_copier.View]:
        """Where ``cp``'s copier finds the container's files: a running container's
        own view; else its root and mounts, under its lock (no start meanwhile)."""
        from lamina.runtime import _copier

        if rec.status not in _ACTIVE:
            with self._locked(rec.id):
                rec = self._fresh(rec.id)
                if rec.status not in _ACTIVE:
                    yield self._stopped_root(rec)
                    return
        yield _copier.RunningRoot(rec.pid, rec.conmon_pid, rec.conmon_start)

    def _stopped_root(self, rec: Record) -> _copier.StoppedRoot:
        """The overlay and bind mounts (volumes are binds) of a container that is not
        running, as its bundle has them; binds below its other mounts (/dev, /proc,
        tmpfs) are left out: those exist only while it runs."""
        from lamina.runtime import _copier

        try:
            spec = json.loads(self._bundle(rec.id).config.read_text())
        except (OSError, ValueError):
            spec = {}
        mounts = [m for m in spec.get("mounts") or [] if isinstance(m, dict)]
        others = [str(m.get("destination")) for m in mounts if m.get("type") != "bind"]
        binds = []
        for m in mounts:
            target, opts = str(m.get("destination")), m.get("options") or []
            if m.get("type") != "bind" or any(_is_under(target, o) for o in others):
                continue
            binds.append(_copier.Bind(str(m["source"]), target, "ro" in opts, "rbind" in opts))
        merged = self._merged(rec.id)
        # Mounted on the host (a created container): the copier uses that mount.
        lowers, tail = ([], "") if os.path.ismount(merged) else self._overlay_options(rec)
        read_only = bool((spec.get("root") or {}).get("readonly"))
        return _copier.StoppedRoot(str(merged), lowers, tail, binds, read_only)

    # -- images ----------------------------------------------------------------------
    def pull(self, reference: str, *, policy: str = "if-not-present") -> str:
        from lamina.registry import RegistryConfig
        from lamina.registry import pull as registry_pull

        config = self._registry_config or RegistryConfig.load()
        record = registry_pull(self.images, reference, policy=policy, config=config)
        return str(record.id)

    # -- create ----------------------------------------------------------------------
    def create(self, config: ContainerConfig) -> Container:
        if self.oci_runtime is None:
            raise LaminaError("no OCI runtime was chosen to create containers with")
        if _logs.settings_of(config).keeps_rotated:
            from lamina.runtime import _logrotate

            _logrotate.build(self.root)  # no compiler: refused before anything exists
        self._reconcile()
        if config.name:
            name = validate_name(config.name)
            if self.state.name_taken(name):
                raise _name_conflict(name)
        else:
            name = random_name(self.state.name_taken)
        image = self.images.require(config.image)
        stop_point("create:found")
        cid, lock = self._new_bundle()
        try:
            return self._create_locked(cid, name, config, image)
        finally:
            os.close(lock)

    def _new_bundle(self) -> tuple[str, int]:
        """A new container ID with its directory made and its lock held: the creator
        holds it until the row is in, so a directory without a row and a free lock is
        what a killed create left. (Reconciling may take the directory of a creator
        that has not locked it yet: then try another ID.)"""
        for _ in range(5):
            cid = new_id()
            self._bundle(cid).dir.mkdir(parents=True)
            try:
                fd = self._open_lock(cid)
            except NotFound:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self._still_there(fd, cid):
                return cid, fd
            os.close(fd)
        raise LaminaError("cannot make a container directory: it keeps being removed")

    def _create_locked(
        self, cid: str, name: str, config: ContainerConfig, image: ImageRecord
    ) -> Container:
        """The rest of ``create``, under the new container's lock. The image is held
        first, so that no ``rmi`` can delete it (and its snapshots) between being
        found and being mounted; every failure undoes everything, the hold last."""
        local = self.images
        bundle = self._bundle(cid)
        ovl = self._ovl(cid)
        created_volumes: list[str] = []
        try:
            _hold(local, _HOLDER + cid, image, config.image_ref or config.image)
            stop_point("create:held")
            image_config = local.config(image)
            chains = local.unpack(image)
            lowers = local.snapshots.lowerdirs(chains)
            img_inner = image_config.get("config") or {}
            config = _with_image_volumes(config, img_inner.get("Volumes") or {})
            rec = Record(
                id=cid,
                name=name,
                created=time.time(),
                image_digest=image.digest,
                config=config,
                extra={
                    "lowerdirs": [str(p) for p in lowers],
                    "image_id": image.id,
                    "stop_signal": str(img_inner.get("StopSignal") or ""),
                    "volumes": {},
                    "oci_runtime": self.oci_runtime.path if self.oci_runtime else _conmon.RUNC,
                },
            )
            (bundle.dir / "userdata").mkdir(parents=True, exist_ok=True)
            for sub in ("upper", "work", "merged"):
                (ovl / sub).mkdir(parents=True, exist_ok=True)
            self._mount(rec)
            stop_point("create:mounted")
            volume_paths = self._prepare_volumes(rec, created_volumes)
            with naming(bundle.dir):
                self._write_userdata(rec)
                self._write_spec(rec, image_config, volume_paths)
            self.state.insert(rec)
        except BaseException:
            self._unmount(cid)
            shutil.rmtree(ovl, ignore_errors=True)
            _remove_dir(bundle.dir)
            for vol in created_volumes:
                with contextlib.suppress(LaminaError, OSError):
                    self.volumes.remove(vol, force=True)
            local.images.release(_HOLDER + cid)
            raise
        return self._container(rec)

    def _prepare_volumes(self, rec: Record, created: list[str]) -> dict[str, Path]:
        """Named volumes are created on first use and anonymous ones made; both are
        filled from the image when new (Docker's copy-up)."""
        from lamina.runtime._paths import secure_join

        paths: dict[str, Path] = {}
        names: dict[str, str] = {}
        anonymous: list[str] = []
        for m in rec.config.mounts:
            if m.type != "volume":
                continue
            existed = bool(m.source) and self.volumes.exists(m.source)
            vol = self.volumes.create(m.source or None)
            if not existed:
                created.append(vol.name)
            if not m.source:
                anonymous.append(vol.name)
            if "nocopy" not in m.options:
                self.volumes.populate(vol, secure_join(self._merged(rec.id), m.target))
            paths[m.target] = vol.mountpoint
            names[m.target] = vol.name
        rec.extra["volumes"] = names
        rec.extra["anonymous_volumes"] = anonymous
        return paths

    def _write_userdata(self, rec: Record) -> None:
        ud = self._bundle(rec.id).dir / "userdata"
        cfg = rec.config
        if cfg.network == "host":
            hostname = os.uname().nodename
            hosts = _read_text("/etc/hosts") or _DEFAULT_HOSTS
            resolv = _read_text("/etc/resolv.conf")
        else:
            hostname = cfg.hostname or rec.id[:12]
            hosts = _DEFAULT_HOSTS
            resolv = _container_resolv(_read_text("/etc/resolv.conf"))
        (ud / "hostname").write_text(hostname + "\n")
        (ud / "hosts").write_text(hosts)
        (ud / "resolv.conf").write_text(resolv)

    def _netns_path(self, cfg: ContainerConfig) -> str | None:
        if not cfg.network.startswith("container:"):
            return None
        other = self.state.resolve(cfg.network.partition(":")[2])
        if other.status not in _ACTIVE or not other.pid:
            raise LaminaError(
                f"cannot join the network of container {other.name}: it is not running"
            )
        return f"/proc/{other.pid}/ns/net"

    def _write_spec(
        self,
        rec: Record,
        image_config: dict[str, Any] | None = None,
        volume_paths: dict[str, Path] | None = None,
    ) -> None:
        if image_config is None:
            image_config = self.images.config(self.images.images.get_by_digest(rec.image_digest))
        if volume_paths is None:
            volume_paths = {t: self.volumes.path(n) for t, n in rec.extra["volumes"].items()}
        bundle = self._bundle(rec.id)
        ud = bundle.dir / "userdata"
        spec = build_spec(
            config=rec.config,
            image_config=image_config,
            rootfs=self._merged(rec.id),
            container_id=rec.id,
            hostname_file=ud / "hostname",
            hosts_file=ud / "hosts",
            resolv_file=ud / "resolv.conf",
            volume_paths=volume_paths,
            netns_path=self._netns_path(rec.config),
        )
        # No fsync: the spec is rebuilt from the row (a crash loses no user data).
        atomic_write(bundle.config, json.dumps(spec).encode(), sync=False)

    # -- start -------------------------------------------------------------------------
    def start(self, ref: str) -> None:
        rec = self._resolve(ref)
        with self._starting(rec) as launched:
            if launched:
                stop_point("start:launched")
                self._release(rec)

    @contextlib.contextmanager
    def _starting(self, rec: Record) -> Iterator[bool]:
        """Launch the container (``runc create`` under conmon), holding its lock until
        the caller has let it run (``_release``): True inside when launched, False if
        it was running already. A starter killed in between leaves runc's container
        waiting and the lock free; reconciling then lets it run."""
        with self._locked(rec.id):
            yield self._launch_locked(rec)

    def _launch_locked(self, rec: Record) -> bool:
        rec = self._fresh(rec.id)
        if rec.status == Status.RUNNING:
            return False
        if rec.status == Status.PAUSED:
            raise LaminaError(f"container {rec.id[:12]} is paused; unpause it instead")
        if rec.status == Status.REMOVING:
            raise LaminaError(f"container {rec.id[:12]} is being removed")
        bundle = self._bundle(rec.id)
        if (
            rec.exits
            or rec.status != Status.CREATED
            or bundle.conmon_pidfile.exists()
            or (self._binary(rec).state_root / rec.id).exists()
        ):
            self._teardown_run(rec, force=True, unmount=False)  # an earlier run's
        self._mount(rec)
        if not bundle.config.exists():  # its directory was deleted: the row has it all
            self._write_userdata(rec)
            self._write_spec(rec)
        elif rec.config.network.startswith("container:"):
            self._write_spec(rec)
        cfg = rec.config
        log = _logs.settings_of(cfg)
        rotator = None
        if log.keeps_rotated:
            from lamina.runtime import _logrotate

            rotator = _logrotate.build(self.root)
        try:
            pid = _conmon.launch(
                bundle,
                name=rec.name,
                runtime=self._binary(rec),
                tty=cfg.tty,
                stdin=cfg.stdin_open,
                exit_cmd=_conmon.exit_command(sys.executable, self.root, rec.id, bundle.dir),
                log=log,
                rotator=rotator,
            )
        except StartFailed as e:
            self._record_failure(rec, str(e), e.exit_code)
            raise
        stop_point("start:created")
        conmon_pid = _conmon.read_pidfile(bundle.conmon_pidfile)
        self.state.update(
            rec.id,
            status=Status.RUNNING,
            pid=pid,
            pid_start=_conmon.process_start_time(pid),
            conmon_pid=conmon_pid,
            conmon_start=_conmon.process_start_time(conmon_pid),
            started_at=time.time(),
            finished_at=None,
            exit_code=None,
            reason="",
            error="",
            oom_killed=False,
        )
        rec.status, rec.pid = Status.RUNNING, pid
        return True

    def _record_failure(self, rec: Record, message: str, code: int) -> None:
        self.state.update(
            rec.id,
            status=Status.FAILED,
            pid=0,
            exit_code=code,
            reason=ExitReason.RUNTIME_ERROR.value,
            error=message,
            finished_at=time.time(),
            exits=rec.exits + 1,
        )
        self._teardown_run(rec, force=True)
        if rec.config.auto_remove:
            fresh = self.state.get(rec.id)
            if fresh is not None:
                self._remove_locked(fresh, volumes=True)

    def _release(self, rec: Record) -> None:
        """Let the created container run: ``<runtime> start``; for runc, what that
        does without the cost of running it (read the container's exec FIFO)."""
        binary = self._binary(rec)
        fifo = binary.state_root / rec.id / "exec.fifo"
        fd = -1
        if binary.is_runc:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        if fd >= 0:
            try:
                # runc init has the FIFO open for writing and writes one byte after
                # we open it; wait for that byte (or EOF), then remove the FIFO.
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    r, _, _ = select.select([fd], [], [], 0.5)
                    if r:
                        os.read(fd, 1)
                        break
            finally:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fifo)
            return
        proc = self._oci(rec, "start", rec.id, check=False)
        if proc.returncode != 0:
            text = _conmon.runc_error_text(proc.stderr.decode(errors="replace"))
            with contextlib.suppress(LaminaError):
                self._oci(rec, "kill", rec.id, "KILL", check=False)
            raise LaminaError(f"cannot start container {rec.id[:12]}: {text}")

    # -- stop / kill / pause ---------------------------------------------------------------
    def _stop_signal(self, rec: Record, override: str | None) -> int:
        if override:
            return parse_signal(override)
        return stop_signal(rec.config.stop_signal, rec.extra.get("stop_signal"))

    def stop(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        rec = self._resolve(ref)
        sig = self._stop_signal(rec, signal)
        if rec.status not in _ACTIVE:
            return
        grace = rec.config.stop_timeout if timeout is None else timeout
        if grace < 0:  # Docker: -1 waits forever
            grace = 10**9
        sent: builtins.list[str] = []
        try:
            sent.append(self._signal(rec, sig)[1])
            if rec.status == Status.PAUSED:
                self._resume(rec)
            if self._wait_exit(rec, grace):
                return
            sent.append(self._signal(rec, SIGKILL)[1])
            if not self._wait_exit(rec, _STOP_KILL_WAIT):
                raise LaminaError(f"container {rec.id[:12]} did not stop after SIGKILL")
        finally:
            self._say_direct(rec, [x for x in sent if x])

    def _signal(self, rec: Record, sig: int) -> tuple[subprocess.CompletedProcess[bytes], str]:
        """``<runtime> kill``; when the runtime has no state of the container any more
        (deleted by hand), the signal goes to its real processes instead: its init
        (known by PID and start time), and for SIGKILL everything in its cgroup.
        Returns the runtime's answer (a success when the processes got the signal)
        and, when it went to them directly, what got it (for ``_say_direct``)."""
        proc = self._oci(rec, "kill", rec.id, str(sig), check=False)
        if proc.returncode == 0 or (self._binary(rec).state_root / rec.id).exists():
            return proc, ""
        init_alive = rec.pid > 0 and _conmon.alive(rec.pid, rec.pid_start)
        if init_alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, sig)
        if sig == SIGKILL:
            sent, targets = kill_cgroup(cgroup_path(rec.id), timeout=0) + init_alive, "processes"
        else:
            sent, targets = int(init_alive), f"process {rec.pid}"
        if not sent:
            return proc, ""
        done = subprocess.CompletedProcess(proc.args, 0, b"", b"")
        return done, f"{signal_name(sig)} to its {targets}"

    def _say_direct(self, rec: Record, sent: builtins.list[str]) -> None:
        """One line for the signals that went to the processes, not the runtime."""
        if sent:
            self._notice(
                rec.id,
                f"its runtime state is gone; sent {', then '.join(sent)} in cgroup "
                f"{cgroup_path(rec.id)} directly",
            )

    def _resume(self, rec: Record) -> None:
        """Unpause: through the runtime, or by thawing the cgroup when it cannot."""
        if self._oci(rec, "resume", rec.id, check=False).returncode != 0:
            thaw(cgroup_path(rec.id))
        self.state.update(rec.id, status=Status.RUNNING)

    def _wait_exit(self, rec: Record, timeout: float) -> bool:
        """Wait until the run of ``rec`` has been finished; False on timeout."""
        try:
            self._wait_for(rec, lambda r: r is None or r.status not in _ACTIVE, timeout)
        except WaitTimeout:
            return False
        return True

    def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        sig = parse_signal(signal)
        rec = self._resolve(ref)
        if rec.status not in _ACTIVE:
            raise LaminaError(f"cannot kill container {rec.id[:12]}: it is not running")
        proc, direct = self._signal(rec, sig)
        self._say_direct(rec, [direct] if direct else [])
        if proc.returncode != 0:
            self._reconcile()
            fresh = self.state.get(rec.id)
            if fresh is None or fresh.status not in _ACTIVE:
                raise LaminaError(f"cannot kill container {rec.id[:12]}: it is not running")
            text = _conmon.runc_error_text(proc.stderr.decode(errors="replace"))
            raise LaminaError(f"cannot kill container {rec.id[:12]}: {text}")
        if rec.status == Status.PAUSED and sig in (
            parse_signal("KILL"),
            self._stop_signal(rec, None),
        ):
            # As Docker: a paused container is thawed for SIGKILL or its stop signal,
            # which then end it; any other signal stays pending until it is unpaused.
            with contextlib.suppress(NotFound), self._locked(rec.id):
                if self._fresh(rec.id).status == Status.PAUSED:
                    self._resume(rec)

    def pause(self, ref: str) -> None:
        rec = self._resolve(ref)
        with self._locked(rec.id):
            rec = self._fresh(rec.id)
            self._require_running(rec, "pause")
            self._oci(rec, "pause", rec.id)
            self.state.update(rec.id, status=Status.PAUSED)

    def unpause(self, ref: str) -> None:
        rec = self._resolve(ref)
        with self._locked(rec.id):
            rec = self._fresh(rec.id)
            if rec.status != Status.PAUSED:
                raise LaminaError(f"container {rec.id[:12]} is not paused")
            self._oci(rec, "resume", rec.id)
            self.state.update(rec.id, status=Status.RUNNING)

    # -- remove / rename ----------------------------------------------------------------
    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        self._remove(self._resolve(ref), force=force, volumes=volumes)

    def _remove(self, rec: Record, *, force: bool, volumes: bool) -> None:
        if rec.status in _ACTIVE:
            if not force:
                raise InUse(
                    f"cannot remove container {rec.name}: container is {rec.status.value}: "
                    f"stop the container before removing or force remove"
                )
            if rec.status == Status.PAUSED:
                self._resume(rec)
            direct = self._signal(rec, SIGKILL)[1]
            self._say_direct(rec, [direct] if direct else [])
            if not self._wait_exit(rec, _STOP_KILL_WAIT):
                self._finish_forced(rec)
        try:
            with self._locked(rec.id):
                fresh = self.state.get(rec.id)
                if fresh is None:
                    return
                if fresh.status in _ACTIVE:
                    raise InUse(f"cannot remove container {rec.name}: it is still running")
                self._remove_locked(fresh, volumes=volumes)
        except NotFound:
            # The directory is gone already: a removal was interrupted. Drop the row.
            self._drop(rec, volumes=volumes)

    def _finish_forced(self, rec: Record) -> None:
        """Last resort when SIGKILL did not end a container: runc delete --force."""
        self._oci(rec, "delete", "--force", rec.id, check=False)
        with contextlib.suppress(NotFound):
            self._finish(rec.id)

    def _remove_locked(self, rec: Record, *, volumes: bool, force: bool = True) -> None:
        # ``remove_volumes``: what a removal resumed after its remover died must do.
        self.state.update(
            rec.id, status=Status.REMOVING, extra={**rec.extra, "remove_volumes": volumes}
        )
        stop_point("remove:removing")
        self._teardown_run(rec, force=force, files=False)
        self._drop(rec, volumes=volumes)

    def _drop(self, rec: Record, *, volumes: bool) -> None:
        self._unmount(rec.id)
        shutil.rmtree(self._ovl(rec.id), ignore_errors=True)
        _remove_dir(self._bundle(rec.id).dir)
        stop_point("remove:dropping")
        self.images.images.release(_HOLDER + rec.id)
        if volumes:
            for vol in rec.extra.get("anonymous_volumes", []):
                with contextlib.suppress(LaminaError, OSError):
                    self.volumes.remove(
                        vol,
                        force=True,
                        users=lambda v: [u for u in self._volume_users(v) if u != rec.id],
                    )
        self.state.delete(rec.id)

    def _volume_users(self, volume: str) -> list[str]:
        return [
            r.id for r in self.state.list() if volume in (r.extra.get("volumes") or {}).values()
        ]

    def volume_users(self, volume: str) -> list[str]:
        """IDs of the containers using ``volume`` (for ``VolumeStore.remove``)."""
        self._reconcile()
        return self._volume_users(volume)

    def rename(self, ref: str, new_name: str) -> None:
        rec = self._resolve(ref)
        name = validate_name(new_name)
        if name == rec.name:
            return
        if self.state.name_taken(name):
            raise _name_conflict(name)
        self.state.rename(rec.id, name)

    # -- observing -------------------------------------------------------------------------
    def disk_usage(self, ref: str) -> int:
        from lamina.runtime._volumes import disk_usage

        rec = self._resolve(ref)
        return disk_usage(self._ovl(rec.id) / "upper") + disk_usage(self._bundle(rec.id).dir)

    def get(self, ref: str) -> Container:
        return self._container(self._resolve(ref))

    def list(self, *, all: bool = False) -> builtins.list[Container]:
        self._reconcile()
        return [self._container(r) for r in self.state.list() if all or r.status in _ACTIVE]

    def wait(
        self,
        ref: str,
        condition: WaitCondition = WaitCondition.NOT_RUNNING,
        timeout: float | None = None,
    ) -> WaitOutcome:
        condition = WaitCondition(condition)
        try:
            # The row as it was before reconciling: an exit that happened before this
            # call but was not recorded yet still counts as the "next" one.
            before = self.state.resolve(ref)
            rec = self._resolve(before.id)
        except NotFound:
            # A --rm container that ended before the caller waited: its tombstone.
            gone = self.state.tombstone(ref.strip())
            if gone is None:
                raise
            return _outcome(gone)
        if condition == WaitCondition.NOT_RUNNING:
            if rec.status not in _ACTIVE:
                return _outcome(rec)

            def done(r: Record | None) -> bool:
                return r is None or r.status not in _ACTIVE

        elif condition == WaitCondition.NEXT_EXIT:
            exits = before.exits

            def done(r: Record | None) -> bool:
                return r is None or r.exits > exits

        else:

            def done(r: Record | None) -> bool:
                return r is None

        final = self._wait_for(rec, done, timeout)
        return _outcome(final or rec)

    def _wait_for(self, rec: Record, done: Any, timeout: float | None) -> Record | None:
        """Poll until ``done(record or None)``; returns the last record seen (the one
        the final cleanup produced when the container was removed). While waiting, the
        waiter file tells conmon's exit command that this process will clean up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cid = rec.id
        bundle = self._bundle(cid)
        last: Record | None = rec
        pidfd = -1
        waiter_written = False
        delay = 0.001
        try:
            while True:
                current = self.state.get(cid)
                if (
                    current is not None
                    and current.status in _ACTIVE
                    and (
                        bundle.exit_file.exists()
                        or not _conmon.alive(current.conmon_pid, current.conmon_start)
                    )
                ):
                    with contextlib.suppress(NotFound):
                        current = self._finish(cid) or current
                    if current is not None and self.state.get(cid) is None:
                        last = current
                        current = None
                if current is not None:
                    last = current
                if done(current):
                    return last if current is None else current
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise WaitTimeout(f"timed out waiting for container {cid[:12]}")
                if current is not None and current.status in _ACTIVE:
                    if not waiter_written:
                        waiter_written = _write_waiter(bundle)
                    if pidfd == -1 and current.pid:
                        pidfd = _pidfd_open(current.pid)  # -2 when it is gone already
                    if pidfd >= 0:
                        # Block until the init process exits, then poll the exit file.
                        wait_s = 0.1 if deadline is None else min(0.1, deadline - now)
                        r, _, _ = select.select([pidfd], [], [], max(wait_s, 0))
                        if not r:
                            continue
                        os.close(pidfd)
                        pidfd = -2  # exited: poll quickly from now on
                        delay = 0.001
                        continue
                sleep = delay if deadline is None else min(delay, max(deadline - now, 0))
                time.sleep(sleep)
                delay = min(delay * 2, 0.02)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            if waiter_written:
                _remove_waiter(bundle)

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
    ) -> Iterator[LogEntry]:
        rec = self._resolve(ref)
        if rec.config.log_driver == "none":
            raise LaminaError(
                f"container {rec.name} has --log-driver none: configured logging driver "
                "does not support reading"
            )
        streams = frozenset(s for s, on in (("stdout", stdout), ("stderr", stderr)) if on)
        cid = rec.id

        def running() -> bool:
            self._reconcile()
            r = self.state.get(cid)
            return r is not None and r.status in _ACTIVE

        return _logs.read_logs(
            self._bundle(cid).log,
            follow=follow,
            running=running,
            tail=tail,
            since=since,
            until=until,
            streams=streams,
        )

    def stats(self, ref: str) -> Stats:
        rec = self._resolve(ref)
        if rec.status not in _ACTIVE:
            return Stats(timestamp=time.time())
        return read_stats(cgroup_path(rec.id), pid=rec.pid)

    def top(self, ref: str) -> tuple[builtins.list[str], builtins.list[builtins.list[str]]]:
        rec = self._resolve(ref)
        if rec.status not in _ACTIVE:
            raise LaminaError(f"container {rec.id[:12]} is not running")
        from lamina.runtime._ps import TITLES

        rows = [row for pid in cgroup_procs(cgroup_path(rec.id)) if (row := _ps_row(pid))]
        return list(TITLES), rows

    def pid(self, ref: str) -> int:
        rec = self._resolve(ref)
        return rec.pid if rec.status in _ACTIVE else 0

    def ip_address(self, ref: str) -> str:
        self._resolve(ref)
        return ""  # network none or host: no address of its own (bridges come later)

    def inspect(self, ref: str) -> dict[str, object]:
        rec = self._resolve(ref)
        cfg = rec.config
        st = rec.state
        try:
            spec: dict[str, Any] = json.loads(self._bundle(rec.id).config.read_text())
        except (OSError, ValueError):
            spec = {}
        proc = spec.get("process") or {}
        ovl = self._ovl(rec.id)
        mounts: builtins.list[dict[str, object]] = []
        for m in cfg.mounts:
            entry: dict[str, object] = {
                "Type": m.type,
                "Destination": m.target,
                "RW": not m.read_only,
                "Mode": ",".join(m.options),
            }
            if m.type == "volume":
                vname = rec.extra.get("volumes", {}).get(m.target, m.source)
                entry["Name"] = vname
                entry["Driver"] = "local"
                entry["Source"] = str(self.root / "volumes" / vname / "_data")
            else:
                entry["Source"] = m.source
            mounts.append(entry)
        for path, opts in cfg.tmpfs.items():
            mounts.append({"Type": "tmpfs", "Destination": path, "Source": "", "RW": True,
                           "Mode": opts})  # fmt: skip
        return {
            "Id": rec.id,
            "Name": "/" + rec.name,
            "Created": _iso(rec.created),
            "Path": (proc.get("args") or [""])[0],
            "Args": (proc.get("args") or [])[1:],
            "State": {
                "Status": rec.status.value,
                "Running": rec.status in _ACTIVE,
                "Paused": rec.status == Status.PAUSED,
                "Restarting": False,
                "OOMKilled": st.oom_killed,
                "Dead": False,
                "Pid": st.pid,
                "ExitCode": st.exit_code or 0,
                "Error": st.error,
                "StartedAt": _iso(st.started_at),
                "FinishedAt": _iso(st.finished_at),
            },
            "Image": rec.extra.get("image_id", ""),
            "ImageDigest": rec.image_digest,
            "ResolvConfPath": str(self._bundle(rec.id).dir / "userdata" / "resolv.conf"),
            "HostnamePath": str(self._bundle(rec.id).dir / "userdata" / "hostname"),
            "HostsPath": str(self._bundle(rec.id).dir / "userdata" / "hosts"),
            "LogPath": str(self._bundle(rec.id).log) if cfg.log_driver != "none" else "",
            "Driver": "overlay",
            "Platform": "linux",
            "Config": {
                "Hostname": spec.get("hostname", ""),
                "User": cfg.user or "",
                "Tty": cfg.tty,
                "OpenStdin": cfg.stdin_open,
                "Env": proc.get("env") or [],
                "Cmd": cfg.command,
                "Entrypoint": cfg.entrypoint,
                "Image": cfg.image_ref or cfg.image,
                "WorkingDir": proc.get("cwd", ""),
                "Labels": dict(cfg.labels),
                "StopSignal": signal_name(self._stop_signal(rec, None)),
                "StopTimeout": cfg.stop_timeout,
            },
            "HostConfig": {
                "AutoRemove": cfg.auto_remove,
                "NetworkMode": cfg.network,
                "Privileged": cfg.security.privileged,
                "ReadonlyRootfs": cfg.security.read_only_rootfs,
                "CapAdd": list(cfg.security.cap_add),
                "CapDrop": list(cfg.security.cap_drop),
                "SecurityOpt": _security_opts(cfg),
                "Memory": cfg.resources.memory or 0,
                "MemorySwap": cfg.resources.memory_swap or 0,
                "NanoCpus": int((cfg.resources.cpus or 0) * 1e9),
                "CpuShares": cfg.resources.cpu_shares or 0,
                "CpusetCpus": cfg.resources.cpuset_cpus or "",
                "PidsLimit": cfg.resources.pids_limit,
                "Ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in cfg.ulimits],
                "Sysctls": dict(cfg.sysctls),
                "Tmpfs": dict(cfg.tmpfs),
                "Init": cfg.init,
                "Binds": [
                    f"{m.source}:{m.target}{':ro' if m.read_only else ''}"
                    for m in cfg.mounts
                    if m.type == "bind"
                ],
                "LogConfig": {"Type": cfg.log_driver, "Config": dict(cfg.log_options)},
            },
            "Mounts": mounts,
            "GraphDriver": {
                "Name": "overlay",
                "Data": {
                    "LowerDir": ":".join(rec.extra.get("lowerdirs", [])),
                    "UpperDir": str(ovl / "upper"),
                    "WorkDir": str(ovl / "work"),
                    "MergedDir": str(ovl / "merged"),
                },
            },
            "NetworkSettings": {"IPAddress": "", "Networks": {cfg.network: {}}},
            "Isolation": cfg.isolation,
            "Backend": self.name,
        }

    # -- exec / attach --------------------------------------------------------------------
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
        from lamina.runtime import _exec

        if not argv:
            raise LaminaError("exec needs a command")
        rec = self._resolve(ref)
        self._require_running(rec, "exec in")
        bundle = self._bundle(rec.id)
        try:
            spec = json.loads(bundle.config.read_text())
        except (OSError, ValueError) as e:
            raise LaminaError(f"cannot read the spec of container {rec.id[:12]}: {e}") from None
        user_spec: dict[str, Any] | None = None
        if user:
            from lamina.runtime._userdb import resolve_user

            try:
                u = resolve_user(self._merged(rec.id), user)
            except LaminaError as e:  # Docker: the exec could not start, 126
                raise StartFailed(str(e), exit_code=126) from None
            user_spec = {"uid": u.uid, "gid": u.gid}
            if u.additional_gids:
                user_spec["additionalGids"] = list(u.additional_gids)
            env = [f"HOME={u.home or '/'}", *(env or [])]
        if workdir and not workdir.startswith("/"):
            raise LaminaError(f"the working directory {workdir!r} must be an absolute path")
        process = _exec.build_process(
            spec["process"], argv, env=env, user=user_spec, workdir=workdir,
            tty=tty and not detach,
        )  # fmt: skip
        return _exec.run_exec(
            self._binary(rec),
            rec.id,
            bundle.dir,
            process,
            stdin=stdin,
            detach=detach,
            stream=stream,
            name=rec.name,
        )

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
        """Pump the container's stdio. ``start=True`` (``run`` without ``-d``,
        ``start -a``): connect first, then start a created or exited container, so
        no output is missed."""
        rec = self._resolve(ref)
        bundle = self._bundle(rec.id)
        with contextlib.ExitStack() as starting:  # the lock, from launch until let run
            if start and rec.status not in _ACTIVE:
                if not starting.enter_context(self._starting(rec)):
                    start = False
                _write_waiter(bundle.dir)  # the caller waits next: it cleans up itself
                rec = self._fresh(rec.id)
            elif rec.status == Status.PAUSED:
                raise LaminaError(f"cannot attach to container {rec.id[:12]}: it is paused")
            elif rec.status != Status.RUNNING:
                raise LaminaError(
                    f"cannot attach to a stopped container {rec.id[:12]}; start it first"
                )
            else:
                start = False
            try:
                sock = _conmon.connect_attach(bundle)
            except LaminaError:
                if start:
                    self._release(rec)  # never leave it stuck in runc's "created" state
                raise
            if start:
                try:
                    self._release(rec)
                except BaseException:
                    sock.close()
                    raise
        try:
            _pump_attach(
                sock,
                stdin=stdin if rec.config.stdin_open else None,
                stdout=stdout,
                stderr=stderr,
                tty=tty and rec.config.tty,
                resize=lambda h, w: _conmon.resize(bundle, h, w),
            )
        finally:
            sock.close()

    def resize(self, ref: str, height: int, width: int) -> None:
        rec = self._resolve(ref)
        self._require_running(rec, "resize")
        if not rec.config.tty:
            raise LaminaError(f"container {rec.id[:12]} has no terminal to resize")
        _conmon.resize(self._bundle(rec.id), height, width)

    # -- filesystem -----------------------------------------------------------------------
    def rootfs(self, ref: str) -> Path:
        return self._merged(self._resolve(ref).id)

    def stat_path(self, ref: str, path: str) -> PathStat:
        from lamina.runtime import _copier

        rec = self._resolve(ref)
        with self._copy_view(rec) as view:
            return _copier.stat_path(view, path)

    def copy_out(self, ref: str, path: str, *, follow_link: bool = False) -> Iterator[bytes]:
        from lamina.runtime import _copier

        rec = self._resolve(ref)
        held = contextlib.ExitStack()  # a stopped container's lock, until the stream ends
        try:
            view = held.enter_context(self._copy_view(rec))
            chunks = _copier.copy_out(view, path, follow_link=follow_link)
        except BaseException:
            held.close()
            raise

        def stream() -> Iterator[bytes]:
            with held:
                yield from chunks

        return stream()

    def copy_in(self, ref: str, path: str, tar_stream: BinaryIO) -> None:
        from lamina.runtime import _copier

        rec = self._resolve(ref)
        with self._copy_view(rec) as view:
            _copier.copy_in(view, path, tar_stream)

    def diff(self, ref: str) -> builtins.list[ChangeEntry]:
        from lamina.runtime import _fsops

        rec = self._resolve(ref)
        return _fsops.diff(
            self._ovl(rec.id) / "upper", self._lowerdirs(rec), mountpoints=self._mountpoints(rec)
        )

    def _mountpoints(self, rec: Record) -> builtins.list[str]:
        """Container paths the runtime mounts something on (from the bundle's spec),
        also as resolved in the rootfs when a path there is a symlink."""
        try:
            spec = json.loads(self._bundle(rec.id).config.read_text())
        except (OSError, ValueError):
            return []
        targets = [str(m.get("destination", "")) for m in spec.get("mounts") or []]
        merged = self._merged(rec.id)
        if os.path.ismount(merged):
            from lamina.runtime._paths import secure_join

            base = os.path.realpath(merged)
            for t in list(targets):
                resolved = str(secure_join(merged, t))
                if resolved.startswith(base + "/"):
                    targets.append(resolved[len(base) :])
        return targets

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
        from lamina.runtime import _fsops

        rec = self._resolve(ref)
        paused_here = False
        if pause and rec.status == Status.RUNNING:
            self.pause(rec.id)
            paused_here = True
        try:
            base = self.images.config(self.images.require(rec.extra["image_id"]))
            image_env = (base.get("config") or {}).get("Env") or []
            container_config = _fsops.committed_config(rec.config, image_env)
            record = _fsops.commit_image(
                self.images,
                base_image_id=rec.extra["image_id"],
                upper=self._ovl(rec.id) / "upper",
                reference=reference,
                changes=changes or [],
                message=message,
                author=author,
                container_config=container_config,
            )
        finally:
            if paused_here:
                self.unpause(rec.id)
        return str(record.id)

    def update(self, ref: str, resources: Resources) -> None:
        rec = self._resolve(ref)
        with self._locked(rec.id):
            rec = self._fresh(rec.id)
            old = rec.config.resources
            rec.config.resources = Resources(
                **{
                    f.name: getattr(resources, f.name)
                    if getattr(resources, f.name) is not None
                    else getattr(old, f.name)
                    for f in dataclasses.fields(Resources)
                }
            )
            self._write_spec(rec)  # validates, and keeps the limits for later starts
            if rec.status in _ACTIVE:
                args = _update_args(resources)
                if args:
                    self._oci(rec, "update", *args, rec.id)
            self.state.update(rec.id, config=rec.config)


# -- module helpers ------------------------------------------------------------------------

_DEFAULT_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _container_resolv(host: str) -> str:
    """The host's resolv.conf minus loopback name servers (unreachable from inside)."""
    out = []
    for line in host.splitlines():
        parts = line.split()
        if (
            len(parts) >= 2
            and parts[0] == "nameserver"
            and (parts[1].startswith("127.") or parts[1] == "::1")
        ):
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def _with_image_volumes(config: ContainerConfig, volumes: object) -> ContainerConfig:
    """``config`` plus an anonymous volume for each ``VOLUME`` of the image that no
    mount or tmpfs of the container covers (Docker's rule)."""
    import posixpath

    if not isinstance(volumes, dict) or not volumes:
        return config
    covered = {posixpath.normpath(m.target) for m in config.mounts}
    covered |= {posixpath.normpath(t) for t in config.tmpfs}
    extra = []
    for target in sorted(volumes):
        t = posixpath.normpath("/" + str(target).lstrip("/"))
        if t not in covered:
            covered.add(t)
            extra.append(Mount("volume", t))
    if not extra:
        return config
    return dataclasses.replace(config, mounts=[*config.mounts, *extra])


def _is_under(path: str, top: str) -> bool:
    """Whether container path ``path`` is ``top`` or below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def _owner_alive(root: Path, lease_id: str) -> bool:
    from lamina._leases import alive  # rows with an owner are rare: imported for them

    return alive(root, lease_id)


def _hold(local: LocalImages, holder: str, image: ImageRecord, ref: str) -> None:
    """Hold ``image`` for ``holder``; NotFound when it was removed since it was found
    (``hold`` checks in the transaction that writes it, and ``rmi`` deletes only an
    unheld image: of the two, one sees the other)."""
    try:
        local.images.hold(holder, image.digest)
    except NotFound:
        raise NotFound(f"image not known locally: {ref} (it was just removed)") from None


def _kill_conmon(bundle: Bundle) -> bool:
    """SIGKILL the conmon of ``bundle`` if it still runs (known by its command line: a
    pid file outlives its process, and pids are reused); whether there was one."""
    pid = _conmon.read_pidfile(bundle.conmon_pidfile)
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    if os.path.basename(argv[0]) != b"conmon" or bundle.cid.encode() not in argv:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, SIGKILL)
    return True


def _and(items: builtins.list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _processes(n: int) -> str:
    return "1 process" if n == 1 else f"{n} processes"


def _list_dir(d: Path) -> builtins.list[str]:
    try:
        return os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _count_entries(d: Path) -> int:
    return len(_list_dir(d))


def _is_id(name: str) -> bool:
    return len(name) == _ID_LEN and all(c in "0123456789abcdef" for c in name)


def _remove_dir(d: Path) -> None:
    """Delete a bundle directory. It is renamed away first: another process may be
    about to open (and create) its ``lock``, which must then fail, not leave a new
    file in a directory being deleted."""
    trash = d.with_name(f".rm-{d.name}-{os.urandom(4).hex()}")
    try:
        os.rename(d, trash)
    except FileNotFoundError:
        return
    except OSError:
        trash = d  # cannot rename (busy?): delete in place, as well as that goes
    shutil.rmtree(trash, ignore_errors=True)


def _write_waiter(bundle: Bundle | Path) -> bool:
    d = bundle.dir if isinstance(bundle, Bundle) else bundle
    try:
        (d / "waiter").write_text(str(os.getpid()))
    except OSError:
        return False
    return True


def _remove_waiter(bundle: Bundle) -> None:
    with contextlib.suppress(OSError):
        if bundle.waiter.read_text().strip() == str(os.getpid()):
            bundle.waiter.unlink()


def _pidfd_open(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return -2


def _name_conflict(name: str) -> LaminaError:
    from lamina.errors import AlreadyExists

    return AlreadyExists(
        f"the container name {name!r} is already in use; remove or rename that container"
    )


def _outcome(rec: Record) -> WaitOutcome:
    code = rec.exit_code if rec.exit_code is not None else 0
    reason = rec.exit_reason if rec.reason else ExitReason.EXITED
    sig = signal_from_exit_code(code) if reason == ExitReason.SIGNAL else None
    return WaitOutcome(
        exit_code=code, reason=reason, signal=sig, finished_at=rec.finished_at, error=rec.error
    )


def _iso(ts: float | None) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    secs = int(ts)
    frac = round((ts - secs) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def _security_opts(cfg: ContainerConfig) -> list[str]:
    out = []
    if cfg.security.seccomp:
        out.append(f"seccomp={cfg.security.seccomp}")
    if cfg.security.no_new_privileges:
        out.append("no-new-privileges")
    return out


def _update_args(r: Resources) -> list[str]:
    args: list[str] = []
    if r.memory is not None:
        args += ["--memory", str(r.memory)]
    if r.memory_swap is not None:
        args += ["--memory-swap", str(r.memory_swap)]
    if r.cpus is not None:
        args += ["--cpu-period", "100000", "--cpu-quota", str(round(r.cpus * 100000))]
    if r.cpu_shares is not None:
        args += ["--cpu-share", str(r.cpu_shares)]
    if r.cpuset_cpus is not None:
        args += ["--cpuset-cpus", r.cpuset_cpus]
    if r.pids_limit is not None:
        args += ["--pids-limit", str(r.pids_limit)]
    return args


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    for line in _read_text("/proc/stat").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _ps_row(pid: int) -> list[str] | None:
    """One ``ps -ef`` row from host /proc: UID PID PPID C STIME TTY TIME CMD."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_raw = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    import pwd

    from lamina.runtime._ps import ps_ef_row

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    boot = _boot_time()
    return ps_ef_row(
        stat_raw, cmdline, user, boot_time=boot, uptime=time.time() - boot, hz=_CLK_TCK
    )


def _pump_attach(
    sock: socket.socket,
    *,
    stdin: BinaryIO | None,
    stdout: BinaryIO,
    stderr: BinaryIO,
    tty: bool,
    resize: Any,
) -> None:
    """Copy conmon's packets to stdout/stderr until it closes the socket; stdin (if
    any) is sent from a thread, and its EOF closes the container's stdin."""
    import socket
    import threading

    from lamina.runtime._term import follow_window_size, raw_terminal

    stop_r, stop_w = os.pipe()
    in_fd = _fileno(stdin)
    sender: threading.Thread | None = None

    def send_stdin() -> None:
        assert stdin is not None
        try:
            while True:
                if in_fd is not None:
                    r, _, _ = select.select([in_fd, stop_r], [], [])
                    if stop_r in r:
                        return
                    data = os.read(in_fd, 8192)
                else:
                    data = stdin.read(8192)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    try:
        with contextlib.ExitStack() as stack:
            term = in_fd if tty and in_fd is not None and os.isatty(in_fd) else None
            if term is not None:
                stack.enter_context(raw_terminal(term))
                stack.enter_context(
                    follow_window_size(term, lambda r, c: _safe_resize(resize, r, c))
                )
            if stdin is not None:
                sender = threading.Thread(target=send_stdin, daemon=True)
                sender.start()
            while True:
                try:
                    packet = sock.recv(_conmon.ATTACH_BUFSIZE)
                except InterruptedError:
                    continue
                except ConnectionResetError:
                    break
                if not packet:
                    break
                kind, data = packet[0], packet[1:]
                out = stderr if kind == _conmon.STDERR_PIPE else stdout
                out.write(data)
                out.flush()
    finally:
        os.write(stop_w, b"x")
        if sender is not None:
            sender.join(timeout=1.0 if in_fd is not None else 0.05)
        os.close(stop_r)
        os.close(stop_w)


def _safe_resize(resize: Any, rows: int, cols: int) -> None:
    with contextlib.suppress(LaminaError, OSError):
        resize(rows, cols)


def _fileno(f: object) -> int | None:
    try:
        return int(f.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
