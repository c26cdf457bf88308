"""Reconciling records with what is real, for containers of every isolation.

Every container operation first brings each record in line with the facts
(monitor, exit file, runtime state, directories), so that no container is lost,
shown running after it died, or left half made or half removed, even if every
lamina process was killed at any point:

- a running container whose monitor is gone, or whose exit file has appeared, is
  finished right there; one whose starter died before letting it run is let run;
- a stopped one with what a run leaves (a monitor, runtime state) is torn down;
- a ``removing`` one whose remover died is removed;
- one whose ``ContainerConfig.owner`` lease is not alive (a killed build's step) is
  removed, killed first if it runs;
- a container directory without a record is what a killed ``create`` left (or a
  killed removal): it is freed once its lock is free, image hold included. (Scanned
  for only when a backend's directories are not as many as its records.)
- ``--rm`` containers a killed ``restart`` stopped and never started again are
  removed; what killed commands registered on their leases is undone;
- a ``restarting`` container whose restarter is gone (its lease is not alive: it was
  killed) gets a new restarter: the restart its policy decided goes ahead, due when
  it was (``_restart``).

Each finding is said in one line (``Engine._notice``). ``sweep`` (``container
prune``, ``system prune``) adds the slow checks: every directory scanned, runtime
state of containers that have nothing else, image holds of containers that do not
exist.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from lamina import _leases
from lamina._fsutil import remove_dir, sweep_trash
from lamina.engine import _health, _locks
from lamina.errors import LaminaError, NotFound, StorageError
from lamina.runtime._types import Status

if TYPE_CHECKING:
    from lamina.engine._engine import Engine
    from lamina.engine._store import Summary

_ACTIVE = (Status.RUNNING.value, Status.PAUSED.value)
_HOLDER = "container:"


def reconcile(engine: Engine, *, sweep: bool = False) -> None:
    """See the module docstring. Cheap on the common path: a few stats per record, and
    a scan of the directories only when their count differs from the record count
    (or ``sweep``)."""
    from lamina.engine._engine import TASK_ROOTS

    rows = engine.store.summaries()
    for row in rows:
        try:
            if row.status in _ACTIVE:
                _check_active(engine, row)
            else:
                with _recovering(engine, row.id):
                    if row.status == Status.REMOVING.value:
                        _resume_removal(engine, row)
                    else:
                        _check_stopped(engine, row)
                    if row.status == Status.RESTARTING.value:
                        _check_restarting(engine, row)
            if row.owner and not _leases.alive(engine.root, row.owner):
                with _recovering(engine, row.id):
                    _dispose(engine, row)
        except NotFound:
            continue
    for isolation, dirname in TASK_ROOTS.items():
        mine = {row.id for row in rows if row.isolation == isolation}
        if not mine and not sweep and not _has_dirs(engine, dirname):
            continue  # nothing of this isolation: its backend is not even imported
        task = engine._task(isolation)
        if sweep or not task.counts_agree(len(mine)):
            _collect_orphans(engine, isolation, {row.id for row in rows}, thorough=sweep)
    _remove_abandoned_restarts(engine)
    if os.path.isdir(engine.root / "netns"):
        # A run's namespace whose container has no record: a removal that died past it.
        # On a full disk (the store read-only) it waits for a command with space.
        with contextlib.suppress(StorageError):
            for cid in engine.networks.stray_namespaces({row.id for row in rows}):
                engine._notice(cid, "left over by an interrupted command: removed its netns")
    _health.ensure_for_running(engine)  # a killed health runner is started again
    # What killed commands registered on their leases (a cp's scratch directory, a
    # save's temp file...) goes with the next container command, not only the next
    # one that writes images.
    for info in _leases.reap(engine.root):
        if info.paths or info.mounts:
            n = len(info.paths) + len(info.mounts)
            engine._say(
                f"{info.kind or 'a command'} (process {info.pid}) was interrupted: "
                f"removed {n} leftover{'s' if n != 1 else ''} of it"
            )


def sweep(engine: Engine) -> None:
    """The thorough pass: ``reconcile(sweep=True)`` and image holds of containers that
    no longer exist (a creator or remover killed at the wrong moment: the image must
    not stay pinned)."""
    reconcile(engine, sweep=True)
    if engine.networks.release_orphans():
        engine._say("released the network addresses of containers that no longer exist")
    images = engine.images.images
    for record in images.list():
        for holder in images.holders(record.digest):
            cid = holder.removeprefix(_HOLDER)
            if holder.startswith(_HOLDER) and not engine.keeps(cid):
                images.release(holder)
                engine._notice(cid, f"released its hold on image {record.id[7:19]}")


def _has_dirs(engine: Engine, dirname: str) -> bool:
    """Whether a backend's directory holds any container directory (or trash)."""
    return any(
        _locks.is_id(n) or n.startswith(".rm-") for n in _locks.list_dir(engine.root / dirname)
    )


@contextlib.contextmanager
def _recovering(engine: Engine, cid: str) -> Iterator[None]:
    """Cleaning up after a dead command must not fail the living one (``ps``): what
    cannot be done is said, and tried again by the next command."""
    try:
        yield
    except NotFound:
        raise
    except (LaminaError, OSError) as e:
        engine._notice(cid, f"could not clean up after an interrupted command: {e}")


def _check_active(engine: Engine, row: Summary) -> None:
    from lamina.engine._engine import _alive

    task = engine._task(row.isolation)
    cid = row.id
    if os.path.exists(task.exit_file(cid)) or not _alive(row.monitor_pid, row.monitor_start):
        engine._finish(cid, row.isolation)
    elif task.launched(cid):
        with _recovering(engine, cid):
            _resume_start(engine, row)
    elif not os.path.exists(task.task_dir(cid) / "lock"):
        os.close(engine._open_lock(cid, row.isolation))  # deleted by hand: made again


def _resume_start(engine: Engine, row: Summary) -> None:
    """The workload was launched but waits to be let run: fine while its starter holds
    the lock; a starter that died leaves it waiting forever. Let it run, as the start
    asked (Docker's daemon finishes a start its client gave up on)."""
    with engine._locked_if_free(row.id, row.isolation) as free:
        rec = engine.store.get(row.id) if free else None
        if rec is None or rec.status not in (Status.RUNNING, Status.PAUSED):
            return
        task = engine._task(rec.isolation)
        if not task.launched(rec.id):
            return
        task.release(rec)
        engine._notice(rec.id, "its start was interrupted before it ran; started it")


def _check_stopped(engine: Engine, row: Summary) -> None:
    """A stopped container with what a run leaves: a start, stop or finish was killed
    halfway. Tear that run down once nobody is at it."""
    task = engine._task(row.isolation)
    if not task.has_run(row.id) and not engine.networks.has_run(row.id):
        return
    with engine._locked_if_free(row.id, row.isolation) as free:
        rec = engine.store.get(row.id) if free else None
        if rec is None or rec.status in (Status.RUNNING, Status.PAUSED, Status.REMOVING):
            return
        task.teardown(rec, force=True)
        engine.networks.teardown(rec)
        engine._notice(rec.id, "a start or stop of it was interrupted; cleaned up after it")


def _check_restarting(engine: Engine, row: Summary) -> None:
    """A container waiting for its restart policy whose restarter died (SIGKILL):
    another takes the restart over, due when it was. (Starting it here instead would
    make any command, ``ps`` included, wait for a start, and a VM's boot.)"""
    from lamina.engine._restart import RestartState

    rec = engine.store.get(row.id)
    if rec is None or _leases.alive(engine.root, RestartState.of(rec).lease):
        return
    with engine._locked_if_free(row.id, row.isolation) as free:
        rec = engine.store.get(row.id) if free else None
        if rec is None or rec.status != Status.RESTARTING:
            return
        state = RestartState.of(rec)
        if _leases.alive(engine.root, state.lease) or not engine._arm_restart(rec, state):
            return
    engine._notice(row.id, "the process that was to restart it is gone; started another")


def _resume_removal(engine: Engine, row: Summary) -> None:
    """A record left ``removing`` by a remover that died ("Removal In Progress"
    forever): finish the removal."""
    task = engine._task(row.isolation)
    with engine._locked_if_free(row.id, row.isolation) as free:
        if free:
            rec = engine.store.get(row.id)
            if rec is not None and rec.status == Status.REMOVING:
                engine._remove_locked(rec, volumes=bool(rec.extra.get("remove_volumes")))
                engine._notice(row.id, "its removal was interrupted; removed it")
            return
    if not task.task_dir(row.id).exists():  # past its directory: nothing to lock
        rec = engine.store.get(row.id)
        if rec is not None and rec.status == Status.REMOVING:
            engine._drop(rec, volumes=bool(rec.extra.get("remove_volumes")))
            engine._notice(row.id, "its removal was interrupted; removed it")


def _dispose(engine: Engine, row: Summary) -> None:
    """Remove a container that was disposable work of a process that is gone."""
    rec = engine.store.get(row.id)
    if rec is None:
        return
    try:
        engine._remove(rec, force=True, volumes=True)
    except NotFound:
        return
    engine._notice(row.id, f"its owner {row.owner} is gone; removed it")


def _collect_orphans(engine: Engine, isolation: str, known: set[str], *, thorough: bool) -> None:
    """Directories without a record: what a killed create (or removal) left."""
    task = engine._task(isolation)
    for name in _locks.list_dir(task.task_root):
        if name in known:
            continue
        if name.startswith(".rm-"):  # a removal's trash
            sweep_trash(task.task_root / name)
        elif _locks.is_id(name):
            with _recovering(engine, name):
                _remove_orphan(engine, name, isolation)
    for cid in task.strays(known, thorough=thorough):
        # Traces without a directory: give them one to lock, then free them.
        (task.task_root / cid).mkdir(parents=True, exist_ok=True)
        with _recovering(engine, cid):
            _remove_orphan(engine, cid, isolation)


def _remove_orphan(engine: Engine, cid: str, isolation: str) -> None:
    """Free what a container without a record left, once its lock is free."""
    task = engine._task(isolation)
    with engine._locked_if_free(cid, isolation) as free:
        if not free or engine.store.get(cid) is not None:
            return  # its creator still works, or finished since the records were read
        what = task.orphan(cid)
        engine.images.images.release(_HOLDER + cid)
        remove_dir(task.task_dir(cid))
    if what:
        engine._notice(cid, f"left over by an interrupted command: removed its {_and(what)}")
    else:
        engine._notice(cid, "left over by an interrupted command: removed it")


def _remove_abandoned_restarts(engine: Engine) -> None:
    """--rm containers a restart stopped and, killed, never started again."""
    from lamina.engine._engine import _RESTARTING

    for rec in engine.store.exited_with(_RESTARTING):
        if not engine._restarting(rec):
            engine._remove_if_exited(rec)


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)
