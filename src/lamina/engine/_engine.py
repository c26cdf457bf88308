"""The engine: every container operation of every front end, on one lamina root.

An ``Engine`` is opened on a root (``open_engine``) and used by reference: a full ID,
a unique ID prefix or a name. Containers of both isolations live in one store
(``_store``: one name space, one ID space); what differs between isolations is a
task backend's (``lamina.runtime._oci.OciTasks``: runc + conmon;
``lamina.vm._backend.VmTasks``: QEMU + a supervisor), opened when a container of its
isolation is first touched. The engine keeps, once for both: records and names,
image holds (held before the image is read), volumes, the process merged from image
config and run options, logs, the per-container lock, waiting, restarts of ``--rm``
containers, and the reconcile of records with what is real (``_reconcile``).

Lifecycle: ``create`` (created) -> ``start`` (running; the backend launches the
workload under its monitor and lets it run) -> ``pause``/``unpause`` -> the workload
exits, or ``stop``/``kill`` -> the monitor writes the exit file and runs the exit
command (``python -m lamina.engine.exit``), or a waiting lamina process does that work
itself -> ``finish`` (exited, with a ``WaitOutcome``) -> ``start`` again or
``remove``. A container that could not be started is ``failed`` with a reason. One
whose restart policy (``_restart``) starts it again is ``restarting`` after its exit
until its restarter starts it (running again), or a ``stop``, ``kill`` or ``rm -f``
ends the wait.

Stores are opened when first needed, so a command that uses none of them (an image
listing) pays for none.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import fcntl
import os
import select
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from signal import SIGKILL
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina import _leases
from lamina._fsutil import remove_dir
from lamina._hooks import stop_point
from lamina.engine import _locks, _restart
from lamina.engine._store import ContainerStore, name_conflict
from lamina.errors import InUse, LaminaError, NotFound
from lamina.runtime._types import (
    ChangeEntry,
    Container,
    ContainerConfig,
    ExecResult,
    ExecSink,
    ExitReason,
    ExitStatus,
    LogEntry,
    PathStat,
    PortMapping,
    Record,
    Resources,
    RestartPolicy,
    Signalled,
    Stats,
    Status,
    WaitCondition,
    WaitOutcome,
)

if TYPE_CHECKING:
    import sqlite3

    from lamina.builder import BuildOptions, BuildResult, Progress
    from lamina.engine._networks import Networks
    from lamina.image import ArchiveFormat, ImageRecord, LocalImages, RemoveResult
    from lamina.registry import Credentials, RegistryConfig
    from lamina.runtime._interface import TaskBackend
    from lamina.runtime._volumes import PruneResult as VolumePrune
    from lamina.runtime._volumes import Volume, VolumeStore

_ACTIVE = (Status.RUNNING, Status.PAUSED)
# What Docker counts as running (a container waiting for its restart policy is).
_UP = (Status.RUNNING, Status.PAUSED, Status.RESTARTING)
_RESTART_POLL = 0.05  # how often a restarter looks whether its restart still stands
_STOP_KILL_WAIT = 10.0  # after the final kill, how long a container may take to be gone
# extra key: the lease of a ``restart`` that keeps a --rm container across its stop.
_RESTARTING = "restarting"
_HOLDER = "container:"  # image hold of a container: "container:<id>"
# Each isolation's directory of container directories, under the root.
TASK_ROOTS = {"process": "containers", "vm": "vms"}


class WaitTimeout(LaminaError, TimeoutError):
    """``wait(timeout=...)`` ran out of time; the container is still running."""


class NotStartable(LaminaError):
    """A start refused for the container's state (paused, being removed): nothing was
    tried, so nothing is undone."""


def open_engine(
    root: Path,
    *,
    oci_runtime: str | None = "runc",
    report: Callable[[str], None] | None = None,
    registry_config: Callable[[], RegistryConfig] | None = None,
) -> Engine:
    """The engine on ``root``. ``oci_runtime``: what new process containers are created
    with ("runc", "crun" or a path; missing or unusable -> LaminaError, here, before
    anything is done); None manages existing containers only. ``report`` is told, one
    line each, what reconciling found and did. ``registry_config`` makes the registry
    settings of a pull when one is needed (default: ``RegistryConfig.load()``)."""
    return Engine(
        Path(root), oci_runtime=oci_runtime, report=report, registry_config=registry_config
    )


class Engine:
    """Containers of both isolations, images and volumes of one root."""

    def __init__(
        self,
        root: Path,
        *,
        oci_runtime: str | None = "runc",
        report: Callable[[str], None] | None = None,
        registry_config: Callable[[], RegistryConfig] | None = None,
    ) -> None:
        self.root = Path(root).absolute()  # the exit command runs elsewhere
        self.notices: builtins.list[str] = []  # what reconciling said, also told ``report``
        self._report = report
        self._registry_config = registry_config
        self._oci_runtime: str | None = None
        if oci_runtime is not None:
            from lamina.runtime._conmon import find_oci_runtime

            self._oci_runtime = find_oci_runtime(oci_runtime)  # fails before anything
        self._store: ContainerStore | None = None
        self._tasks: dict[str, TaskBackend] = {}
        self._local: LocalImages | None = None
        self._volumes: VolumeStore | None = None
        self._networks: Networks | None = None
        self._ended_vms: builtins.list[str] = []  # --rm VMs a migration found ended

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the stores' connections; containers are not affected."""
        for task in self._tasks.values():
            task.close()
        self._tasks = {}
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._local is not None:
            self._local.close()
            self._local = None

    # -- the planes -----------------------------------------------------------------
    @property
    def images(self) -> LocalImages:
        """The image store of this root."""
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

    @property
    def networks(self) -> Networks:
        """Bridge networks: records, leases, each run's network (``_networks``)."""
        if self._networks is None:
            from lamina.engine._networks import Networks

            self._networks = Networks(self)
        return self._networks

    @property
    def store(self) -> ContainerStore:
        """The container store, upgraded on its first open (``_migrate``)."""
        if self._store is None:
            self._store = ContainerStore(self.root / "containers.db", upgrade=self._upgrade)
            vms = self.root / TASK_ROOTS["vm"]
            if os.path.exists(vms / "vms.db"):  # migrated: retire it (again, if killed)
                from lamina.engine import _migrate

                stop_point("migrate:retiring")
                _migrate.retire(vms, self._ended_vms)
        return self._store

    def _upgrade(self, db: sqlite3.Connection) -> None:
        """What the store's upgrade adds: the VM containers of ``vms/vms.db``."""
        vms = self.root / TASK_ROOTS["vm"]
        if not (vms / "vms.db").exists():
            return
        from lamina.engine import _migrate

        def digest(image_id: str) -> str:
            try:
                return self.images.images.resolve(image_id).digest
            except LaminaError:
                return ""

        self._ended_vms = _migrate.import_vms(db, vms, image_digest=digest, report=self._say)

    def _task(self, isolation: str) -> TaskBackend:
        """The backend of ``isolation``, opened on first use (roots with process
        containers only never import ``lamina.vm``)."""
        task = self._tasks.get(isolation)
        if task is not None:
            return task
        task_root = self.root / TASK_ROOTS.get(isolation, "")
        if isolation == "process":
            from lamina.runtime._oci import OciTasks

            task = OciTasks(
                self.root, task_root, images=lambda: self.images, report=self._notice,
                oci_runtime=self._oci_runtime, lookup=self.store.resolve,
            )  # fmt: skip
        elif isolation == "vm":
            from lamina.vm._backend import VmTasks

            task = VmTasks(self.root, task_root, images=lambda: self.images, report=self._notice)
        else:
            raise LaminaError(f"unknown isolation {isolation!r}: expected process or vm")
        self._tasks[isolation] = task
        return task

    def _task_dir(self, cid: str, isolation: str) -> Path:
        return self.root / TASK_ROOTS[isolation] / cid

    # -- saying things ----------------------------------------------------------------
    def _notice(self, cid: str, text: str) -> None:
        self._say(f"container {cid[:12]}: {text}")

    def _say(self, line: str) -> None:
        self.notices.append(line)
        if self._report is not None:
            self._report(line)

    def _event(self, type_: str, action: str, actor: str, attributes: dict[str, str]) -> None:
        """The one place every container, image and volume operation reports what it
        did (Docker's events: ``type_`` container|image|volume, ``action`` create,
        start, die...), the exit path included. The journal (``_events``) writes it
        down; best effort, it never fails the operation."""
        emit = _emitter()
        if emit is None:
            return
        try:
            emit(self.root, type_, action, actor, attributes)
        except Exception as e:  # an event must never fail an operation
            self._say(f"could not record the {type_} {action} event: {e}")

    def _volume_events(self, action: str, rec: Record) -> None:
        """``mount``/``unmount`` of each volume of ``rec`` (at its start, its exit),
        with Docker's attributes."""
        if not rec.extra.get("volumes"):
            return
        mounts = {m.target: m for m in rec.config.mounts}
        for target, name in (rec.extra.get("volumes") or {}).items():
            attributes = {"container": rec.id, "driver": "local"}
            if action == "mount":
                m = mounts.get(target)
                propagation = [o for o in m.options if o != "nocopy"] if m else []
                attributes.update({"destination": target, "propagation": "".join(propagation),
                                   "read/write": str(not (m and m.read_only)).lower()})  # fmt: skip
            self._event("volume", action, name, attributes)

    def _container_event(self, action: str, rec: Record, **more: str) -> None:
        attributes = {**rec.config.labels, "name": rec.name,
                      "image": rec.config.image_ref or rec.config.image, **more}  # fmt: skip
        self._event("container", action, rec.id, attributes)

    # -- records --------------------------------------------------------------------
    def _container(self, rec: Record) -> Container:
        from lamina.engine._inspect import isolation_reason

        ports: builtins.list[PortMapping] = []
        if rec.status in _ACTIVE and "netrun" in rec.extra:
            ports = self.networks.ports(rec)
        elif rec.status in _ACTIVE and rec.config.ports:
            ports = self._task(rec.isolation).ports(rec)
        if "process" not in rec.extra:  # made before the engine: merged once, now
            with contextlib.suppress(LaminaError, OSError):
                self._complete(rec)
        health = ""
        if rec.config.healthcheck:
            from lamina.engine._health import status_of

            health = status_of(rec)
        return Container(
            id=rec.id,
            name=rec.name,
            config=rec.config,
            state=rec.state,
            created=rec.created,
            backend="oci" if rec.isolation == "process" else rec.isolation,
            isolation_reason=isolation_reason(rec),
            ports=ports,
            command=list(rec.process.args),
            health=health,
        )

    def _resolve(self, ref: str) -> Record:
        self._reconcile()
        return self.store.resolve(ref)

    def _fresh(self, cid: str) -> Record:
        rec = self.store.get(cid)
        if rec is None:
            raise NotFound(f"no such container: {cid}")
        return rec

    def _complete(self, rec: Record) -> None:
        """A record made before the engine has no merged process: merge it now, from
        its image's config (backends rebuild bundles from it)."""
        if "process" in rec.extra:
            return
        from lamina.engine._process import merge_process

        image = self.images.config(self.images.images.get_by_digest(rec.image_digest))
        process = merge_process(rec.config, image.get("config") or {}, rec.id)
        rec.extra["process"] = dataclasses.asdict(process)
        self.store.update(rec.id, extra=rec.extra)

    def _require_running(self, rec: Record, action: str) -> None:
        if rec.status == Status.RESTARTING:
            raise LaminaError(
                f"cannot {action} container {rec.id[:12]}: it is restarting, wait until it "
                "is running"
            )
        if rec.status == Status.PAUSED:
            raise LaminaError(
                f"cannot {action} container {rec.id[:12]}: it is paused; unpause it first"
            )
        if rec.status != Status.RUNNING:
            raise LaminaError(f"cannot {action} container {rec.id[:12]}: it is not running")

    # -- locks ----------------------------------------------------------------------
    def _open_lock(self, cid: str, isolation: str) -> int:
        """An open descriptor of the container's ``lock`` file. NotFound when the
        container is gone or being removed. A directory deleted by hand under a live
        record is made again: the record, the processes and the runtime's state are
        what is real, and they need a lock to be acted on."""
        path = self._task_dir(cid, isolation) / "lock"
        try:
            return _locks.open_lock(path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        rec = self.store.get(cid)
        if rec is None or rec.status == Status.REMOVING:  # a remover deletes the dir
            raise NotFound(f"no such container: {cid}")
        with contextlib.suppress(FileExistsError):
            path.parent.mkdir(parents=True)
            with contextlib.suppress(LaminaError, OSError):
                self._complete(rec)
                self._task(rec.isolation).rebuild(rec)
            self._notice(cid, f"its directory {path.parent} was gone; made it again")
        try:
            return _locks.open_lock(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"no such container: {cid}") from None

    @contextlib.contextmanager
    def _locked(self, cid: str, isolation: str) -> Iterator[None]:
        """Serialise changes of one container across processes. NotFound once the
        container is removed, also when that happened while this waited for the lock."""
        fd = self._open_lock(cid, isolation)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _locks.still_there(fd, self._task_dir(cid, isolation) / "lock"):
                raise NotFound(f"no such container: {cid}")
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked_if_free(self, cid: str, isolation: str) -> Iterator[bool]:
        """The container's lock if nobody holds it: True inside when taken (whoever
        was changing the container, if anyone, is gone); False when it is held or the
        container is gone."""
        try:
            os.close(self._open_lock(cid, isolation))  # made again if deleted by hand
        except NotFound:
            yield False
            return
        with _leases.try_lock(self._task_dir(cid, isolation) / "lock") as free:
            yield free

    # -- reconcile ------------------------------------------------------------------------
    def _reconcile(self, *, sweep: bool = False) -> None:
        """Bring every record in line with what is real (``_reconcile``); cheap on the
        common path."""
        from lamina.engine._reconcile import reconcile

        reconcile(self, sweep=sweep)

    def sweep(self) -> builtins.list[str]:
        """Free everything interrupted commands left, found the slow way (``container
        prune``, ``system prune``): what reconciling frees, with a full scan of the
        directories, plus runtime state and image holds of containers without a
        record. Returns what was found and done, one line each."""
        from lamina.engine._reconcile import sweep

        start = len(self.notices)
        sweep(self)
        return self.notices[start:]

    def keeps(self, cid: str) -> bool:
        """Whether full ID ``cid`` is a container, or one being made or removed (cheap,
        no reconciling)."""
        return self.store.get(cid) is not None or any(
            (self.root / d / cid).exists() for d in TASK_ROOTS.values()
        )

    # -- run preparation --------------------------------------------------------------
    def registry_config(self) -> RegistryConfig:
        """The registry settings pulls and pushes use."""
        if self._registry_config is not None:
            return self._registry_config()
        from lamina.registry import RegistryConfig

        return RegistryConfig.load()

    def resolve_image(
        self,
        image: str,
        *,
        pull: str = "missing",
        platform: str | None = None,
        progress: Callable[[], Any] | None = None,
    ) -> ImageRecord:
        """The image ``run``/``create`` use, pulled as ``pull`` says (always, missing,
        never, newer); ``platform`` as ``--platform``. ``progress`` makes the progress
        sink of a pull, when one is needed."""
        from lamina.engine._run_image import resolve_image

        return resolve_image(
            self.images,
            image,
            pull=pull,
            platform=platform,
            progress=progress,
            registry_config=self.registry_config,
        )

    def settle(
        self,
        config: ContainerConfig,
        image: ImageRecord,
        *,
        requested: str,
        network: str | None = None,
        make_bind_sources: builtins.list[str] | None = None,
        progress: Callable[[], Any] | None = None,
    ) -> builtins.list[str]:
        """Settle ``config`` for ``image``: the isolation (``requested`` process, vm or
        auto), its network (``network``: as asked, None for the isolation's default)
        and rules, a --vm-base fetched; ``make_bind_sources`` (``-v`` sources that do
        not exist) made. Returns warnings for the user."""
        from lamina.engine import _run_image

        settled = _run_image.settle(
            self.images,
            config,
            image,
            requested=requested,
            network=network,
            progress=progress,
            registry_config=self.registry_config,
        )
        _run_image.make_bind_sources(make_bind_sources or [])
        return settled.warnings

    # -- images ---------------------------------------------------------------------------
    def _image_event(self, action: str, actor: str, attributes: dict[str, str]) -> None:
        self._event("image", action, actor, attributes)

    def pull_image(
        self,
        reference: str,
        *,
        policy: str = "always",
        platform: str | None = None,
        progress: Any = None,
        registry_config: RegistryConfig | None = None,
        credentials: Mapping[str, Credentials] | None = None,
    ) -> ImageRecord:
        """Pull ``reference`` (``policy``: always, missing, never, newer).
        ``credentials``: this call's own, by registry host, used instead of the
        credential files (the Engine API's ``X-Registry-Auth``)."""
        from lamina.engine import _images
        from lamina.image import parse_platform

        config = (registry_config or self.registry_config()).with_credentials(credentials or {})
        return _images.pull(
            self.images, reference, policy=policy,
            platform=parse_platform(platform) if platform else None, progress=progress,
            config=config, emit=self._image_event,
        )  # fmt: skip

    def push_image(
        self,
        source: str,
        destination: str | None = None,
        *,
        progress: Any = None,
        registry_config: RegistryConfig | None = None,
        chunk_size: int | None = None,
        credentials: Mapping[str, Credentials] | None = None,
    ) -> str:
        """Push ``source`` (a local name or ID), as ``destination`` when given;
        returns the digest pushed. ``credentials`` as for ``pull_image``."""
        from lamina.engine import _images

        config = (registry_config or self.registry_config()).with_credentials(credentials or {})
        return _images.push(
            self.images, source, destination, progress=progress,
            config=config, chunk_size=chunk_size, emit=self._image_event,
        )  # fmt: skip

    def inspect_image(self, name: str) -> dict[str, Any]:
        """``image inspect`` of one name or ID; NotFound when there is none."""
        from lamina.engine import _images

        return _images.inspect(self.images, self.images.images.resolve(name))

    def tag_image(self, source: str, target: str) -> None:
        from lamina.engine import _images

        _images.tag(self.images, source, target, emit=self._image_event)

    def remove_image(self, name: str, *, force: bool = False) -> RemoveResult:
        """Docker's ``rmi`` of one name or ID (refused while a container uses it)."""
        from lamina.engine import _images

        return _images.remove(self.images, name, force=force, emit=self._image_event)

    def prune_images(
        self, *, all_unused: bool = False, select: Callable[[ImageRecord], bool] | None = None
    ) -> RemoveResult:
        """Dangling images (every unused one with ``all_unused``) and whatever of the
        image plane nothing owns."""
        from lamina.engine import _images

        return _images.prune(
            self.images, all_unused=all_unused, select=select, emit=self._image_event
        )

    def import_image(
        self,
        source: Path | BinaryIO,
        *,
        reference: str | None = None,
        changes: Sequence[str] = (),
        message: str | None = None,
        platform: str | None = None,
    ) -> ImageRecord:
        """A root filesystem (directory, tarball or stream) as an image."""
        from lamina.engine import _images
        from lamina.image import parse_platform

        return _images.import_(
            self.images, source, reference=reference, changes=changes, message=message,
            platform=parse_platform(platform) if platform else None, emit=self._image_event,
        )  # fmt: skip

    def load_images(self, source: Path | BinaryIO) -> builtins.list[ImageRecord]:
        from lamina.engine import _images

        return _images.load(self.images, source, emit=self._image_event)

    def save_images(
        self, names: Sequence[str], dest: Path | BinaryIO, *, format: ArchiveFormat
    ) -> None:
        from lamina.engine import _images

        _images.save(self.images, names, dest, format=format, emit=self._image_event)

    # -- volumes ---------------------------------------------------------------------------
    def create_volume(
        self, name: str | None = None, labels: dict[str, str] | None = None
    ) -> Volume:
        """A named volume (an existing one of that name is returned as it is); without
        a name, one named at random (a named volume all the same, as Docker's)."""
        from lamina.runtime._volumes import validate_volume_name

        name = validate_volume_name(name or os.urandom(32).hex())
        vol = self.volumes.create(name, labels or {})
        self._event("volume", "create", vol.name, {"driver": vol.driver})
        return vol

    def volume(self, name: str) -> Volume:
        """The volume ``name``; NotFound when there is none."""
        return self.volumes.get(name)

    def list_volumes(
        self, *, filters: Mapping[str, Sequence[str]] | None = None
    ) -> builtins.list[Volume]:
        """Every volume ``filters`` keeps (Docker's: name, label, dangling, driver)."""
        from lamina.engine import _volumes

        vols = self.volumes.list()
        if not filters:
            return vols
        _volumes.check_filters(filters)
        users = self.volume_users if "dangling" in filters else _no_users
        return [v for v in vols if _volumes.matches(v, filters, users)]

    def remove_volume(self, name: str, *, force: bool = False) -> None:
        """Refused while a container of either isolation uses it, even with ``force``
        (which only makes a missing volume no error)."""
        existed = self.volumes.exists(name)
        self.volumes.remove(name, force=force, users=self.volume_users)
        if existed:
            self._event("volume", "destroy", name, {"driver": "local"})

    def prune_volumes(
        self,
        *,
        all: bool = False,
        filters: Mapping[str, Sequence[str]] | None = None,
        skip: set[str] | None = None,
    ) -> VolumePrune:
        """Remove unused volumes: anonymous ones, or every unused one with ``all``;
        only those ``filters`` keep, none named in ``skip``."""
        from lamina.engine import _volumes

        users = self.volume_users
        skip = set(skip or ())
        if filters:
            _volumes.check_filters(filters)
            skip |= {v.name for v in self.volumes.list() if not _volumes.matches(v, filters, users)}

        def picked(name: str) -> Sequence[str]:
            return ["(not selected)"] if name in skip else users(name)

        result = self.volumes.prune(picked, all=all)
        for name in result.removed:
            self._event("volume", "destroy", name, {"driver": "local"})
        return result

    # -- builds -------------------------------------------------------------------------
    def build(self, options: BuildOptions, progress: Progress | None = None) -> BuildResult:
        """Build an image from a Dockerfile (``lamina.builder``), its RUN steps in
        containers of this engine's root (one engine per thread that runs steps)."""
        from lamina.builder import build

        if options.containers is None:
            runtime = self._oci_runtime

            def containers() -> Engine:
                return Engine(self.root, oci_runtime=runtime, report=self._report)

            options = dataclasses.replace(options, containers=containers)
        if options.registry_config is None:
            options = dataclasses.replace(options, registry_config=self.registry_config)
        return build(self.root, options, progress)

    # -- create -----------------------------------------------------------------------
    def create_from_options(
        self,
        opts: Any,
        *,
        image: str,
        command: Sequence[str] | None,
        pull: str = "missing",
        platform: str | None = None,
        progress: Callable[[], Any] | None = None,
    ) -> tuple[Container, builtins.list[str]]:
        """``run``/``create``'s flags (``lamina.engine._options.RunOptions``) checked,
        the image resolved, the config settled, the container created: what every
        front end does (the CLI in-process; through a daemon, its client sends the
        flags). Returns the container and the warnings for the user."""
        from lamina.engine._options import prepare_run

        config, warnings = prepare_run(self, opts, image=image, command=command, pull=pull,
                                       platform=platform, progress=progress)  # fmt: skip
        return self.create(config), warnings

    def create(self, config: ContainerConfig) -> Container:
        """A new container of ``config.isolation`` from image ``config.image`` (an ID
        in the local store)."""
        from lamina.engine._health import validate
        from lamina.engine._names import random_name, validate_name

        if config.restart != RestartPolicy():
            _restart.check_config(config)
        validate(config.healthcheck)
        task = self._task(config.isolation)
        if config.isolation == "process" and self._oci_runtime is None:
            raise LaminaError("no OCI runtime was chosen to create containers with")
        self._reconcile()
        if config.name:
            name = validate_name(config.name)
            if self.store.name_taken(name):
                raise name_conflict(name)
        else:
            name = random_name(self.store.name_taken)
        image = self.images.require(config.image)
        stop_point("create:found")
        cid, lock = _locks.new_dir(task.task_root)
        try:
            rec = self._create_locked(cid, name, config, image, task)
        finally:
            os.close(lock)
        self._container_event("create", rec)
        return self._container(rec)

    def _create_locked(
        self, cid: str, name: str, config: ContainerConfig, image: ImageRecord, task: TaskBackend
    ) -> Record:
        """The rest of ``create``, under the new container's lock. The image is held
        first, so that no ``rmi`` can delete it (and its snapshots) between being
        found and being used; every failure undoes everything, the hold last."""
        from lamina.engine._process import merge_process, with_image_volumes
        from lamina.engine._volumes import prepare_volumes

        local = self.images
        created_volumes: builtins.list[str] = []
        try:
            _hold(local, _HOLDER + cid, image, config.image_ref or config.image)
            stop_point("create:held")
            image_config = local.config(image).get("config") or {}
            config = with_image_volumes(config, image_config.get("Volumes") or {})
            if config.healthcheck or image_config.get("Healthcheck"):
                from lamina.engine._health import merge

                healthcheck = merge(config.healthcheck, image_config.get("Healthcheck"))
                config = dataclasses.replace(config, healthcheck=healthcheck)
            process = merge_process(config, image_config, cid)
            volumes = (
                prepare_volumes(self.volumes, local, image, config, created_volumes)
                if any(m.type == "volume" for m in config.mounts)
                else {}
            )
            task_part = task.prepare(cid, config, process, image, volumes)
            rec = Record(
                id=cid,
                name=name,
                created=time.time(),
                image_digest=image.digest,
                config=config,
                isolation=config.isolation,
                extra={
                    "image_id": image.id,
                    "stop_signal": str(image_config.get("StopSignal") or ""),
                    "volumes": {t: v.name for t, v in volumes.items()},
                    "anonymous_volumes": [v.name for v in volumes.values() if v.anonymous],
                    "process": dataclasses.asdict(process),
                },
                task=task_part,
            )
            if (reset := _restart.reset_override()) is not None:  # tests only
                rec.extra[_restart.RESET_KEY] = reset
            if config.publish_all:
                exposed = [*(image_config.get("ExposedPorts") or {}), *config.expose]
                rec.extra["exposed"] = sorted(set(exposed))
            if config.networks:
                self.networks.before_lease(config.networks)
                # The leases go in with the record: none without it, none given twice.
                with self.store.tx() as db:
                    endpoints = self.networks.lease_all(db, cid, config)
                    rec.extra["endpoints"] = [dataclasses.asdict(e) for e in endpoints]
                    self.store.insert(rec)
            else:
                self.store.insert(rec)
        except BaseException:
            with contextlib.suppress(LaminaError, OSError):
                task.discard(cid)
            remove_dir(task.task_dir(cid))
            for vol in created_volumes:
                with contextlib.suppress(LaminaError, OSError):
                    self.volumes.remove(vol, force=True)
            local.images.release(_HOLDER + cid)
            raise
        return rec

    # -- start ------------------------------------------------------------------------
    def start(self, ref: str) -> None:
        rec = self._resolve(ref)
        try:
            with self._starting(rec) as launched:
                if launched is not None:
                    stop_point("start:launched")
                    self._task(rec.isolation).release(launched)
        except NotStartable:
            raise
        except LaminaError:
            self._start_failed(rec)
            raise

    def _start_failed(self, rec: Record) -> None:
        """After a start that failed: a workload that ended at once is recorded so, and
        a ``--rm`` container is removed (as Docker's daemon removes it): nothing is
        left behind, whatever failed (a published port taken, a VM that did not boot)."""
        with contextlib.suppress(LaminaError):
            self.finish(rec.id)
        if rec.config.auto_remove:
            fresh = self.store.get(rec.id)
            if fresh is not None and not self._restarting(fresh):
                with contextlib.suppress(LaminaError):
                    self._remove(fresh, force=True, volumes=True)

    @contextlib.contextmanager
    def _starting(self, rec: Record, *, console_size: Any = None) -> Iterator[Record | None]:
        """Launch the container under its monitor, holding its lock until the caller
        has let it run (``release``): its record inside when launched, None if it was
        running already (or waits for its restart policy: as Docker, that counts as
        running). A starter killed in between leaves the workload waiting and the lock
        free; reconciling then lets it run."""
        with self._locked(rec.id, rec.isolation):
            yield self._launch_locked(rec, console_size)

    def _launch_locked(
        self, rec: Record, console_size: Any, *, restart_lease: str | None = None
    ) -> Record | None:
        """The start, under the lock. ``restart_lease``: the start of a restart policy,
        by the restarter holding that lease (None when the restart no longer stands);
        any other start is a user's, which resets what the policy has done."""
        from lamina.engine import exit as exit_command
        from lamina.runtime.common import StartFailed

        rec = self._fresh(rec.id)
        if restart_lease is not None:
            if rec.status != Status.RESTARTING or (
                _restart.RestartState.of(rec).lease != restart_lease
            ):
                return None
        elif rec.status in (Status.RUNNING, Status.RESTARTING):
            return None
        if rec.status == Status.PAUSED:
            raise NotStartable(f"container {rec.id[:12]} is paused; unpause it instead")
        if rec.status == Status.REMOVING:
            raise NotStartable(f"container {rec.id[:12]} is being removed")
        self._complete(rec)
        task = self._task(rec.isolation)
        command = exit_command.command(self.root, rec.id, task.task_dir(rec.id))
        # Before the workload: its namespace and ports; netavark's part overlaps a
        # process container's launch (a VM's supervisor needs the veths at once).
        network = self.networks.setup(rec, overlap=rec.isolation == "process")
        try:
            started = task.start(
                rec, exit_command=command, console_size=console_size,
                network=network.run if network else None,
            )  # fmt: skip
        except StartFailed as e:
            self._record_failure(rec, str(e), e.exit_code)
            raise
        except BaseException:
            self.networks.teardown(rec)
            raise
        finally:
            if network is not None:
                from lamina.network._ports import close

                close(network.sockets)  # the monitor holds the published ports now
        if network is not None:
            try:
                self.networks.joined(rec, network)
            except BaseException:
                task.teardown(rec, force=True)  # launched, never let run
                self.networks.teardown(rec)
                raise
        rec.task.update(started.task)
        values: dict[str, Any] = {
            "status": Status.RUNNING,
            "pid": started.pid,
            "pid_start": started.pid_start,
            "monitor_pid": started.monitor_pid,
            "monitor_start": started.monitor_start,
            "task": rec.task,
            "started_at": time.time(),
            "finished_at": None,
            "exit_code": None,
            "reason": "",
            "error": "",
            "oom_killed": False,
        }
        if restart_lease is not None:
            state = _restart.RestartState.of(rec)
            state.lease, state.due = "", 0.0
            values["extra"] = state.into(rec.extra)
        elif _restart.has_state(rec):  # a user's start: RestartCount and backoff anew
            values["extra"] = _restart.RestartState().into(rec.extra)
        self.store.update(rec.id, **values)
        for k, v in values.items():
            setattr(rec, k, v)
        self._container_event("start", rec)
        if restart_lease is not None:  # a policy's restart: die, start, restart (_restart)
            self._container_event("restart", rec)
        self._volume_events("mount", rec)
        if rec.config.healthcheck:
            from lamina.engine import _health

            if _health.probe_of(rec.config.healthcheck) is not None:
                _health.ensure_runner(self.root)  # its checks run from now on
        return rec

    def _record_failure(self, rec: Record, message: str, code: int) -> None:
        self.store.update(
            rec.id,
            status=Status.FAILED,
            pid=0,
            exit_code=code,
            reason=ExitReason.RUNTIME_ERROR.value,
            error=message,
            finished_at=time.time(),
            exits=rec.exits + 1,
        )
        self._task(rec.isolation).teardown(rec, force=True)
        self.networks.teardown(rec)
        if rec.config.auto_remove:
            fresh = self.store.get(rec.id)
            if fresh is not None:
                self._remove_locked(fresh, volumes=True)

    # -- the end of a run ---------------------------------------------------------------
    def finish(self, ref: str) -> None:
        """The exit command's work: record the end of a run and clean it up (nothing
        when it runs on, or was finished already)."""
        try:
            rec = self.store.resolve(ref)
        except NotFound:
            return
        with contextlib.suppress(NotFound):
            self._finish(rec.id, rec.isolation)

    def _finish(self, cid: str, isolation: str) -> Record | None:
        """Record the end of a run and clean it up. Returns the final record (also
        when ``--rm`` removed the container), None if the container is gone."""
        with self._locked(cid, isolation):
            rec = self.store.get(cid)
            if rec is None or rec.status not in _ACTIVE:
                return rec
            task = self._task(rec.isolation)
            status = task.exit_status(rec)
            if status is None:
                if _alive(rec.monitor_pid, rec.monitor_start):
                    return rec  # still running
                status = task.exit_status(rec)  # written just before the monitor exited?
            oom_kills = task.oom_kills(rec)  # before the teardown removes the cgroup
            if status is None:
                status = ExitStatus(137, error="monitor died", failed=False)
                reason = ExitReason.RUNTIME_ERROR
            else:
                reason = _reason(status, oom_kills)
            values: dict[str, Any] = {
                "status": Status.FAILED if status.failed else Status.EXITED,
                "exit_code": status.code,
                "reason": reason.value,
                "oom_killed": oom_kills > 0,
                "error": status.error,
                "finished_at": time.time(),
                "exits": rec.exits + 1,
            }
            # The policy decides before the exit is written: the record goes from
            # running to restarting at once (no exited in between for ps to see).
            restarter = self._policy_decides(rec, values)
            try:
                self.store.update(cid, **values)
            except BaseException:
                if restarter is not None:
                    restarter.release()
                raise
            for k, v in values.items():
                setattr(rec, k, v)
            if reason == ExitReason.OOM_KILLED:
                self._container_event("oom", rec)
            ran = int(max(0.0, values["finished_at"] - (rec.started_at or values["finished_at"])))
            self._container_event("die", rec, exitCode=str(status.code), execDuration=str(ran))
            self._volume_events("unmount", rec)
            self._after_exit(rec, task, restarter)
        return rec

    def _after_exit(
        self, rec: Record, task: TaskBackend, restarter: _leases.Lease | None = None
    ) -> None:
        """What follows a recorded exit, under the container's lock, in whichever
        process finishes it (the exit command with no other lamina process alive, or a
        waiting one): ``--rm`` removes the container, anything else has its run torn
        down; a restart its policy decided (``restarter``: the lease of the process
        that will start it) is handed to that process."""
        if rec.config.auto_remove and not self._restarting(rec):
            self._remove_locked(rec, volumes=True, force=bool(rec.error), network_later=True)
            return
        task.teardown(rec, force=bool(rec.error))
        self.networks.teardown(rec)
        if restarter is not None:
            self._spawn_restarter(rec, restarter)

    # -- restart policies (_restart) ------------------------------------------------------
    def _policy_decides(self, rec: Record, values: dict[str, Any]) -> _leases.Lease | None:
        """The restart policy's decision on the exit ``values`` are about to record,
        put into them (its bookkeeping; ``restarting`` when it restarts). Returns the
        lease of the restart, None when there is none. A run that never started
        properly (``failed``) is not restarted: Docker restarts no failed start."""
        policy = rec.config.restart
        if policy.name == "no":
            return None
        state = _restart.RestartState.of(rec)
        ended = values["finished_at"]
        ran_for = ended - (rec.started_at or ended)
        restarts = values["status"] == Status.EXITED and _restart.decide(
            policy, state, values["exit_code"], ran_for, _restart.reset_after(rec)
        )
        lease = None
        if restarts:
            lease = _leases.take(self.root, "restart")
            state.lease, state.due = lease.id, time.time() + state.delay
            values["status"] = Status.RESTARTING
        values["extra"] = state.into(rec.extra)
        return lease

    def _arm_restart(self, rec: Record, state: _restart.RestartState) -> bool:
        """Under the lock, when reconciling finds the restarter of a ``restarting``
        container dead: another takes its restart over (due at ``state.due``). False
        when none could be started (said in a line; the container is then exited)."""
        lease = _leases.take(self.root, "restart")
        try:
            # Recorded before the restarter exists: killed in between, this process
            # leaves a dead lease in the record, which reconciling takes over again.
            state.lease = lease.id
            self.store.update(rec.id, status=Status.RESTARTING, extra=state.into(rec.extra))
        except BaseException:
            lease.release()
            raise
        rec.status = Status.RESTARTING
        return self._spawn_restarter(rec, lease)

    def _spawn_restarter(self, rec: Record, lease: _leases.Lease) -> bool:
        """Start the restarter of ``rec`` (restarting, its record naming ``lease``) and
        hand ``lease`` over to it. False when it could not be started: the container is
        exited then, its restart given up (said in a line)."""
        try:
            log = self._task_dir(rec.id, rec.isolation) / "restart.log"
            _restart.spawn(self.root, rec.id, lease, log)
        except OSError as e:
            lease.release()
            state = _restart.RestartState.of(rec)
            state.lease, state.due = "", 0.0
            rec.status = Status.EXITED
            self.store.update(rec.id, status=rec.status, extra=state.into(rec.extra))
            self._notice(rec.id, f"could not start the process that restarts it: {e}")
            return False
        except BaseException:
            lease.release()
            raise
        lease.hand_over()
        return True

    def restart_when_due(self, cid: str, lease_id: str) -> None:
        """The restarter's work (``python -m lamina.engine.restarter``): wait until the
        restart of ``cid`` that ``lease_id`` stands for is due, then start the container,
        unless a ``stop``, ``kill``, ``rm`` or ``update`` came first. A start that fails
        ends the policy until a user starts the container (Docker retries none)."""
        while True:
            rec = self.store.get(cid)
            if rec is None or rec.status != Status.RESTARTING:
                return
            state = _restart.RestartState.of(rec)
            if state.lease != lease_id:
                return
            left = state.due - time.time()
            if left <= 0:
                break
            time.sleep(min(left, _RESTART_POLL))
        try:
            with self._locked(cid, rec.isolation):
                rec = self._fresh(cid)
                if rec.status != Status.RESTARTING:
                    return
                if not _restart.still_stands(rec):  # an update changed the policy
                    self._end_restart(rec, _restart.RestartState.of(rec))
                    return
                task = self._task(rec.isolation)
                with contextlib.suppress(OSError):  # the last run's waiter, if it is late
                    (task.task_dir(cid) / "waiter").unlink()
                try:
                    launched = self._launch_locked(rec, None, restart_lease=lease_id)
                    if launched is not None:
                        task.release(launched)
                except LaminaError:
                    fresh = self._fresh(cid)
                    state = _restart.RestartState.of(fresh)
                    state.canceled, state.lease, state.due = True, "", 0.0
                    self.store.update(cid, extra=state.into(fresh.extra))
                    raise
        except NotFound:
            return
        except LaminaError:
            self._start_failed(rec)
            raise

    def _end_restart(self, rec: Record, state: _restart.RestartState) -> None:
        """Under the lock: a ``restarting`` container is stopped where it is (exited,
        its last exit kept); its restarter finds so and starts nothing."""
        state.lease, state.due = "", 0.0
        rec.status = Status.EXITED
        self.store.update(rec.id, status=Status.EXITED, extra=state.into(rec.extra))

    def _user_stops(self, rec: Record, *, cancel: bool) -> tuple[Record, bool]:
        """Before a user's ``stop``, ``kill`` or ``rm -f`` acts on a running or
        restarting container: it is stopped by the user (Docker's
        HasBeenManuallyStopped: no ``unless-stopped`` restart), and with ``cancel`` its
        policy is off until the next start by a user (a pending restart ends here).
        Returns the record as it is now, and whether a pending restart was ended."""
        if rec.status not in _UP:
            return rec, False
        with self._locked(rec.id, rec.isolation):
            fresh = self._fresh(rec.id)
            if fresh.status not in _UP:
                return fresh, False
            state = _restart.RestartState.of(fresh)
            state.stopped_by_user = True
            state.canceled = state.canceled or cancel
            if fresh.status == Status.RESTARTING and cancel:
                self._end_restart(fresh, state)
                return fresh, True
            self.store.update(fresh.id, extra=state.into(fresh.extra))
            return fresh, False

    # -- restart (its marks are read by _after_exit and _reconcile) ----------------------
    def restart(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        """``stop`` (when running or paused), then ``start``. A ``--rm`` container is kept
        across it, as Docker keeps it: only its own exit, ``stop`` or ``kill`` remove it."""
        from lamina.runtime._signals import parse_signal

        rec = self._resolve(ref)
        if signal is not None:
            parse_signal(signal)  # a bad one is refused before anything stops
        if rec.status not in _UP:
            self.start(rec.id)
            self._container_event("restart", rec)
            return
        if not rec.config.auto_remove:
            self.stop(rec.id, timeout=timeout, signal=signal)
            self.start(rec.id)
            self._container_event("restart", rec)
            return
        # --rm: the stop must not remove it (Docker keeps it across a restart). The
        # mark names this process's lease: if it dies, the container is removed after
        # all (by _after_exit, or by _reconcile once it has stopped).
        with _leases.take(self.root, "restart") as lease:
            self._mark_restarting(rec, lease.id)
            try:
                self.stop(rec.id, timeout=timeout, signal=signal)
                self.start(rec.id)
            finally:
                with contextlib.suppress(NotFound):
                    self._mark_restarting(rec, None)
                # Exited again already, or its start failed: --rm removes it now.
                self._remove_if_exited(rec)
        self._container_event("restart", rec)

    def _mark_restarting(self, rec: Record, lease_id: str | None) -> None:
        with self._locked(rec.id, rec.isolation):
            fresh = self._fresh(rec.id)
            if lease_id:
                fresh.extra[_RESTARTING] = lease_id
            else:
                fresh.extra.pop(_RESTARTING, None)
            self.store.update(rec.id, extra=fresh.extra)

    def _restarting(self, rec: Record) -> bool:
        lease_id = rec.extra.get(_RESTARTING)
        return bool(lease_id) and _leases.alive(self.root, str(lease_id))

    def _remove_if_exited(self, rec: Record) -> None:
        """Remove a --rm container that is exited and no restart keeps."""
        with contextlib.suppress(NotFound), self._locked(rec.id, rec.isolation):
            fresh = self.store.get(rec.id)
            if (
                fresh is not None
                and fresh.status in (Status.EXITED, Status.FAILED)
                and fresh.config.auto_remove
                and not self._restarting(fresh)
            ):
                self._remove_locked(fresh, volumes=True)

    # -- stop / kill / pause ----------------------------------------------------------
    def _stop_signal(self, rec: Record, override: str | None) -> int:
        from lamina.runtime._signals import parse_signal, stop_signal

        if override:
            return parse_signal(override)
        return stop_signal(rec.config.stop_signal, rec.extra.get("stop_signal"))

    def stop(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        """Send the stop signal, wait ``timeout`` seconds (the container's stop timeout
        when None; -1 forever), then end it at once. Its restart policy is off until it
        is started again; a restarting one is stopped at once."""
        rec = self._resolve(ref)
        sig = self._stop_signal(rec, signal)
        rec, ended = self._user_stops(rec, cancel=True)  # before the signal: no restart
        if rec.status not in _ACTIVE:
            if ended:  # it was waiting for its restart policy: stopped right here
                self._container_event("stop", rec)
            return
        grace = rec.config.stop_timeout if timeout is None else timeout
        if grace < 0:  # Docker: -1 waits forever
            grace = 10**9
        task = self._task(rec.isolation)
        sent: builtins.list[Signalled] = []
        try:
            # Docker's stop reports its signals as kill events; said before they are
            # sent, so that they come before the die their exit causes.
            self._container_event("kill", rec, signal=str(sig))
            sent.append(task.signal(rec, sig))
            if rec.status == Status.PAUSED:
                self._resume(rec)
            if not self._wait_exit(rec, grace):
                self._container_event("kill", rec, signal=str(int(SIGKILL)))
                sent.append(task.force_stop(rec))
                if not self._wait_exit(rec, _STOP_KILL_WAIT):
                    raise LaminaError(f"container {rec.id[:12]} did not stop after SIGKILL")
        finally:
            self._say_direct(rec, sent)
        self._container_event("stop", rec)

    def _say_direct(self, rec: Record, sent: builtins.list[Signalled]) -> None:
        """One line for the signals that went to the processes, not the runtime."""
        direct = [s for s in sent if s.direct]
        if direct:
            self._notice(
                rec.id,
                f"its runtime state is gone; sent {', then '.join(s.direct for s in direct)}"
                f" in {direct[-1].where} directly",
            )

    def _resume(self, rec: Record) -> None:
        """Unpause: through the runtime, or its own way when the runtime cannot."""
        self._task(rec.isolation).resume(rec)
        self.store.update(rec.id, status=Status.RUNNING)

    def _wait_exit(self, rec: Record, timeout: float) -> bool:
        """Wait until the run of ``rec`` has been finished; False on timeout."""
        try:
            self._wait_for(rec, lambda r: r is None or r.status not in _ACTIVE, timeout)
        except WaitTimeout:
            return False
        return True

    def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        """``signal``: a name with or without SIG, or a number; invalid ones are refused.
        A paused container is thawed for SIGKILL and its stop signal (Docker's rule);
        other signals stay pending until it is unpaused. The restart policy ends as
        Docker's does (``_restart.kill_ends_policy``); a restarting container is not
        signalled (there is nothing to signal), its pending restart ends with it."""
        from lamina.runtime._signals import parse_signal

        sig = parse_signal(signal)
        rec = self._resolve(ref)
        if rec.status not in _UP:
            raise LaminaError(f"cannot kill container {rec.id[:12]}: it is not running")
        configured = rec.config.stop_signal or str(rec.extra.get("stop_signal") or "")
        rec, ended = self._user_stops(rec, cancel=_restart.kill_ends_policy(configured, sig))
        if rec.status not in _ACTIVE:
            if ended or rec.status == Status.RESTARTING:
                return  # as Docker: a restarting container has nothing to signal
            raise LaminaError(f"cannot kill container {rec.id[:12]}: it is not running")
        sent = self._task(rec.isolation).signal(rec, sig)
        self._say_direct(rec, [sent])
        if sent.error:
            self._reconcile()
            fresh = self.store.get(rec.id)
            if fresh is None or fresh.status not in _ACTIVE:
                raise LaminaError(f"cannot kill container {rec.id[:12]}: it is not running")
            raise LaminaError(f"cannot kill container {rec.id[:12]}: {sent.error}")
        self._container_event("kill", rec, signal=str(sig))
        if rec.status == Status.PAUSED and sig in (SIGKILL, self._stop_signal(rec, None)):
            # As Docker: a paused container is thawed for SIGKILL or its stop signal,
            # which then end it; any other signal stays pending until it is unpaused.
            with contextlib.suppress(NotFound), self._locked(rec.id, rec.isolation):
                if self._fresh(rec.id).status == Status.PAUSED:
                    self._resume(rec)

    def pause(self, ref: str) -> None:
        rec = self._resolve(ref)
        with self._locked(rec.id, rec.isolation):
            rec = self._fresh(rec.id)
            self._require_running(rec, "pause")
            self._task(rec.isolation).pause(rec)
            self.store.update(rec.id, status=Status.PAUSED)
        self._container_event("pause", rec)

    def unpause(self, ref: str) -> None:
        rec = self._resolve(ref)
        with self._locked(rec.id, rec.isolation):
            rec = self._fresh(rec.id)
            if rec.status != Status.PAUSED:
                raise LaminaError(f"container {rec.id[:12]} is not paused")
            self._resume(rec)
        self._container_event("unpause", rec)

    # -- remove / rename ----------------------------------------------------------------
    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        self._remove(self._resolve(ref), force=force, volumes=volumes)

    def _remove(self, rec: Record, *, force: bool, volumes: bool) -> None:
        if rec.status in _UP and not force:
            raise InUse(
                f"cannot remove container {rec.name}: container is {rec.status.value}: "
                f"stop the container before removing or force remove"
            )
        if rec.status in _UP and rec.config.restart.name != "no":
            rec, _ = self._user_stops(rec, cancel=True)  # no restart after this kill
        if rec.status in _ACTIVE:
            task = self._task(rec.isolation)
            if rec.status == Status.PAUSED:
                self._resume(rec)
            self._say_direct(rec, [task.force_stop(rec)])
            if not self._wait_exit(rec, _STOP_KILL_WAIT):
                task.force_delete(rec)
                with contextlib.suppress(NotFound):
                    self._finish(rec.id, rec.isolation)
        try:
            with self._locked(rec.id, rec.isolation):
                fresh = self.store.get(rec.id)
                if fresh is None:
                    return
                if fresh.status in _ACTIVE:
                    raise InUse(f"cannot remove container {rec.name}: it is still running")
                self._remove_locked(fresh, volumes=volumes)
        except NotFound:
            # The directory is gone already: a removal was interrupted. Drop the record.
            self._drop(rec, volumes=volumes)

    def _remove_locked(
        self, rec: Record, *, volumes: bool, force: bool = True, network_later: bool = False
    ) -> None:
        # ``remove_volumes``: what a removal resumed after its remover died must do.
        # ``network_later``: netavark's teardown finishes after the caller goes on.
        self.store.update(
            rec.id, status=Status.REMOVING, extra={**rec.extra, "remove_volumes": volumes}
        )
        stop_point("remove:removing")
        self._task(rec.isolation).teardown(rec, force=force, files=False)
        if network_later:
            self.networks.teardown_later(rec)
        else:
            self.networks.teardown(rec)
        self._drop(rec, volumes=volumes)

    def _drop(self, rec: Record, *, volumes: bool) -> None:
        from lamina.engine._volumes import remove_anonymous

        task = self._task(rec.isolation)
        task.delete(rec)
        remove_dir(task.task_dir(rec.id))
        stop_point("remove:dropping")
        self.images.images.release(_HOLDER + rec.id)
        if rec.extra.get("endpoints"):
            self.networks.release(rec.id)
        anonymous = rec.extra.get("anonymous_volumes") or []
        if volumes and anonymous:
            remove_anonymous(
                self.volumes,
                anonymous,
                users=lambda v: [u for u in self._volume_users(v) if u != rec.id],
            )
        self.store.delete(rec.id)
        self._container_event("destroy", rec)

    def rename(self, ref: str, new_name: str) -> None:
        from lamina.engine._names import validate_name

        rec = self._resolve(ref)
        name = validate_name(new_name)
        if name == rec.name:
            return
        if self.store.name_taken(name):
            raise name_conflict(name)
        self.store.rename(rec.id, name)
        self._container_event("rename", rec, oldName="/" + rec.name, name=name)

    # -- volumes ------------------------------------------------------------------------
    def _volume_users(self, volume: str) -> builtins.list[str]:
        return [
            r.id for r in self.store.list() if volume in (r.extra.get("volumes") or {}).values()
        ]

    def volume_users(self, volume: str) -> builtins.list[str]:
        """IDs of the containers (of either isolation, any state) using ``volume``."""
        self._reconcile()
        return self._volume_users(volume)

    # -- observing ------------------------------------------------------------------------
    def get(self, ref: str) -> Container:
        """Resolve an ID, unique ID prefix or name; NotFound otherwise."""
        return self._container(self._resolve(ref))

    def list(
        self, *, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> builtins.list[Container]:
        """Running containers (restarting ones too, as Docker's; ``all``: every one),
        newest first, that ``filters``
        keep (Docker's ps filters: ``{"status": ["exited"], "label": ["a=b"]}``;
        InvalidFilter for one Docker would refuse)."""
        from lamina.engine import _filters

        if filters:
            _filters.check(filters)
            all = all or _filters.needs_all(filters)
        self._reconcile()
        found = [self._container(r) for r in self.store.list() if all or r.status in _UP]
        if filters:
            found = _filters.select(found, filters, self._image_id)
        return found

    def _image_id(self, name: str) -> str | None:
        try:
            return str(self.images.images.resolve(name).id)
        except LaminaError:
            return None

    def disk_usage(self, ref: str) -> int:
        """Bytes on disk the container holds besides its image (its writable layer,
        logs and configuration): what removing it frees."""
        rec = self._resolve(ref)
        return self._task(rec.isolation).disk_usage(rec)

    def ports(self, ref: str) -> builtins.list[PortMapping]:
        """The ports the container publishes now (resolved host ports)."""
        return self.get(ref).ports

    def wait(
        self,
        ref: str,
        condition: WaitCondition = WaitCondition.NOT_RUNNING,
        timeout: float | None = None,
        *,
        exits_seen: int | None = None,
    ) -> WaitOutcome:
        """Wait for ``condition``. ``exits_seen`` (next-exit): the run count the caller
        saw (``Record.exits``) when it asked, so an exit between its asking and this
        call counts (the Docker API answers a wait's headers before it waits)."""
        condition = WaitCondition(condition)
        seen: Record | None = None
        try:
            # The record as it was before reconciling: an exit that happened before this
            # call but was not recorded yet still counts as the "next" one.
            before = seen = self.store.resolve(ref)
            rec = self._resolve(before.id)
        except NotFound:
            # A --rm container that ended before the caller waited: its tombstone, once
            # the process removing it (its exit command, say) has written it.
            gone = self.store.tombstone(ref)
            deadline = time.monotonic() + 30
            while gone is None and seen is not None and time.monotonic() < deadline:
                if self.store.get(seen.id) is None:
                    gone = self.store.tombstone(seen.id)
                    break
                time.sleep(0.005)
            if gone is None:
                raise
            return _outcome(gone)
        if condition == WaitCondition.NOT_RUNNING:
            # Restarting counts as running (Docker's): the wait ends at an exit after
            # the one that made it restart, or when it is stopped.
            ran = before.exits

            def done(r: Record | None) -> bool:
                return r is None or (
                    r.status not in _ACTIVE and (r.status != Status.RESTARTING or r.exits > ran)
                )

            if done(rec):
                return _outcome(rec)

        elif condition == WaitCondition.NEXT_EXIT:
            exits = before.exits if exits_seen is None else exits_seen

            def done(r: Record | None) -> bool:
                return r is None or r.exits > exits

        else:

            def done(r: Record | None) -> bool:
                return r is None

        final = self._wait_for(rec, done, timeout)
        return _outcome(final or rec)

    def _wait_for(
        self, rec: Record, done: Callable[[Record | None], bool], timeout: float | None
    ) -> Record | None:
        """Poll until ``done(record or None)``; returns the last record seen (the one
        the final cleanup produced when the container was removed). While waiting, the
        waiter file tells the exit command that this process will finish it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cid = rec.id
        task = self._task(rec.isolation)
        waiter = task.task_dir(cid) / "waiter"
        exit_file = task.exit_file(cid)
        last: Record | None = rec
        pidfd = -1
        waiter_written = False
        delay = 0.001
        try:
            while True:
                current = self.store.get(cid)
                if (
                    current is not None
                    and current.status in _ACTIVE
                    and (
                        os.path.exists(exit_file)
                        or not _alive(current.monitor_pid, current.monitor_start)
                    )
                ):
                    with contextlib.suppress(NotFound):
                        current = self._finish(cid, rec.isolation) or current
                    if current is not None and self.store.get(cid) is None:
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
                        waiter_written = _write_waiter(waiter)
                    if pidfd == -1 and current.pid:
                        pidfd = _pidfd_open(current.pid)  # -2 when it is gone already
                    if pidfd >= 0:
                        # Block until the workload's process exits, then poll quickly.
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
                _remove_waiter(waiter)

    def _running(self, rec: Record) -> bool:
        """Whether ``rec`` runs still; an ended run is finished here (an attached
        ``run`` that waits on it next finds it done)."""
        current = self.store.get(rec.id)
        if current is None or current.status not in _ACTIVE:
            return False
        task = self._task(rec.isolation)
        if os.path.exists(task.exit_file(rec.id)) or not _alive(
            current.monitor_pid, current.monitor_start
        ):
            with contextlib.suppress(NotFound):
                current = self._finish(rec.id, rec.isolation)
            return current is not None and current.status in _ACTIVE
        return True

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
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[LogEntry]:
        """The container's log entries; ``follow`` goes on while it runs, until
        ``stop()`` says to (a daemon's client went away)."""
        from lamina.runtime import _logs

        rec = self._resolve(ref)
        if rec.config.log_driver == "none":
            raise LaminaError(
                f"container {rec.name} has --log-driver none: configured logging driver "
                "does not support reading"
            )
        streams = frozenset(s for s, on in (("stdout", stdout), ("stderr", stderr)) if on)
        cid = rec.id

        def running() -> bool:
            if stop is not None and stop():
                return False
            self._reconcile()
            r = self.store.get(cid)
            return r is not None and r.status in _ACTIVE

        return _logs.read_logs(
            self._task(rec.isolation).log_path(rec),
            follow=follow,
            running=running,
            tail=tail,
            since=since,
            until=until,
            streams=streams,
        )

    def stats(self, ref: str) -> Stats:
        rec = self._resolve(ref)
        return self._task(rec.isolation).stats(rec)

    def top(self, ref: str) -> tuple[builtins.list[str], builtins.list[builtins.list[str]]]:
        """Processes in the container: (headers, rows), as ``ps -ef`` shows them."""
        from lamina.runtime._ps import TITLES

        rec = self._resolve(ref)
        if rec.isolation == "process" and rec.status not in _ACTIVE:
            raise LaminaError(f"container {rec.id[:12]} is not running")
        return list(TITLES), self._task(rec.isolation).top(rec)

    def pid(self, ref: str) -> int:
        rec = self._resolve(ref)
        return rec.pid if rec.status in _ACTIVE else 0

    def inspect(self, ref: str) -> dict[str, object]:
        from lamina.engine._inspect import inspect_record, merge

        rec = self._resolve(ref)
        task = self._task(rec.isolation)
        found = inspect_record(rec, root=self.root, log_path=task.log_path(rec), backend=task.name)
        found = merge(found, task.inspect(rec))
        if rec.isolation == "process" or rec.config.networks:
            found["NetworkSettings"] = self.networks.settings(rec)
            host_config = found.setdefault("HostConfig", {})
            host_config.update(self.networks.host_config(rec))
        return found

    # -- exec / attach ------------------------------------------------------------------
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
        timeout: float | None = None,
        output_limit: int | None = None,
        sink: ExecSink | None = None,
        detach_keys: bytes | None = None,
    ) -> ExecResult:
        """Run a process in a running container. ``stream=True`` passes the caller's
        stdio through (exit code returned, outputs empty); ``tty=True`` allocates a
        pseudo-terminal and follows the caller's window size, and ``detach_keys``
        (``runtime._term.parse_detach_keys``; None: Docker's ctrl-p ctrl-q) typed
        there leave the process running (``ExecResult.detached``). Captured (a health
        check): ``timeout`` seconds, then the process is killed (``timed_out``, exit
        code -1); ``output_limit``: stdout and stderr together, in the order written,
        in ``stdout``, its first ``output_limit`` bytes kept (``truncated``). ``sink``:
        streamed through it rather than our stdio (the daemon's client)."""
        if not argv:
            raise LaminaError("exec needs a command")
        rec = self._resolve(ref)
        self._require_running(rec, "exec in")
        if workdir and not workdir.startswith("/"):
            raise LaminaError(f"the working directory {workdir!r} must be an absolute path")
        exec_id = os.urandom(32).hex()
        command = " ".join(argv)
        self._container_event("exec_create: " + command, rec, execID=exec_id)
        self._container_event("exec_start: " + command, rec, execID=exec_id)
        result = self._task(rec.isolation).exec(
            rec, argv, env=env, user=user, workdir=workdir, tty=tty, stdin=stdin,
            detach=detach, stream=stream, timeout=timeout, output_limit=output_limit, sink=sink,
            detach_keys=detach_keys,
        )  # fmt: skip
        if not detach and not result.detached:
            self._container_event("exec_die", rec, execID=exec_id, exitCode=str(result.exit_code))
        return result

    def attach(
        self,
        ref: str,
        *,
        stdin: BinaryIO | None,
        stdout: BinaryIO,
        stderr: BinaryIO,
        tty: bool = False,
        start: bool = False,
        detach_keys: bytes | None = None,
    ) -> bool:
        """Pump the container's stdio to the caller's until its output closes. With
        ``tty`` the caller's terminal size is followed, and ``detach_keys`` (None:
        Docker's ctrl-p ctrl-q) in ``stdin`` end the pump with the container running
        (its stdin open): then True. ``start=True`` (``run`` without ``-d``,
        ``start -a``): connect first, then start a created or exited container, so
        that no early output is lost."""
        rec = self._resolve(ref)
        task = self._task(rec.isolation)
        tty = tty and rec.config.tty
        if start and rec.status not in _ACTIVE:
            attachment = self._start_attached(rec, task, stdin=stdin, tty=tty)
            if attachment is None:  # running already: attach as to any running one
                return self.attach(rec.id, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty,
                                   detach_keys=detach_keys)  # fmt: skip
        elif rec.status == Status.PAUSED:
            raise LaminaError(f"cannot attach to container {rec.id[:12]}: it is paused")
        elif rec.status == Status.RESTARTING:
            raise LaminaError(
                f"cannot attach to container {rec.id[:12]}: it is restarting, wait until it "
                "is running"
            )
        elif rec.status != Status.RUNNING:
            raise LaminaError(f"cannot attach to a stopped container {rec.id[:12]}; start it first")
        else:
            attachment = task.attach(rec)
        detached = attachment.pump(
            stdin=stdin if rec.config.stdin_open else None,
            stdout=stdout,
            stderr=stderr,
            tty=tty,
            running=lambda: self._running(rec),
            detach_keys=detach_keys,
        )
        if not detached:
            return False
        # Nobody waits now: the exit command finishes it (this process may live on, a
        # daemon); if it ended meanwhile, here.
        _remove_waiter(task.task_dir(rec.id) / "waiter")
        self._running(rec)
        return True

    def _start_attached(
        self, rec: Record, task: TaskBackend, *, stdin: BinaryIO | None, tty: bool
    ) -> Any:
        """Launch, attach, let run: the attachment (None when it was running already).
        The waiter file is written before the workload can end: the caller waits next
        and finishes the container itself."""
        console_size = None
        if tty and stdin is not None:
            from lamina.runtime._term import window_size

            fd = _fileno(stdin)
            console_size = window_size(fd) if fd is not None and os.isatty(fd) else None
        try:
            with self._starting(rec, console_size=console_size) as launched:
                if launched is None:
                    return None
                _write_waiter(task.task_dir(rec.id) / "waiter")
                try:
                    attachment = task.attach(launched)
                except LaminaError:
                    task.release(launched)  # never leave it waiting to be let run
                    raise
                try:
                    task.release(launched)
                except BaseException:
                    attachment.close()
                    raise
                return attachment
        except NotStartable:
            raise
        except LaminaError:
            self._start_failed(rec)
            raise

    def resize(self, ref: str, height: int, width: int) -> None:
        rec = self._resolve(ref)
        self._require_running(rec, "resize")
        self._task(rec.isolation).resize(rec, height, width)

    # -- filesystem -----------------------------------------------------------------------
    # ``cp`` (Docker's archive API): every path is the container's, resolved as the
    # container sees it (volumes and binds included, running or not), never on the host.
    @contextlib.contextmanager
    def _still(self, rec: Record) -> Iterator[Record]:
        """``rec`` as it is now; a container that is not running stays so meanwhile
        (its lock is held: no start)."""
        if rec.status not in _ACTIVE:
            with self._locked(rec.id, rec.isolation):
                fresh = self._fresh(rec.id)
                if fresh.status not in _ACTIVE:
                    yield fresh
                    return
            rec = fresh
        yield rec

    def stat_path(self, ref: str, path: str) -> PathStat:
        """What is at ``path`` (a final symlink not followed: ``link_target`` says
        where it leads). NotFound if nothing."""
        rec = self._resolve(ref)
        with self._still(rec) as rec:
            return self._task(rec.isolation).stat_path(rec, path)

    def copy_out(self, ref: str, path: str, *, follow_link: bool = False) -> Iterator[bytes]:
        """A tar stream of ``path``, its top entry named after ``path``'s last
        component; a symlink there is archived as a link unless ``follow_link``, then
        what it leads to (under the link's name). Errors are raised before the first
        chunk."""
        rec = self._resolve(ref)
        held = contextlib.ExitStack()  # a stopped container's lock, until the stream ends
        try:
            rec = held.enter_context(self._still(rec))
            chunks = self._task(rec.isolation).copy_out(rec, path, follow_link=follow_link)
        except BaseException:
            held.close()
            raise

        def stream() -> Iterator[bytes]:
            with held:
                yield from chunks

        return stream()

    def copy_in(self, ref: str, path: str, tar_stream: BinaryIO) -> None:
        """Extract a tar stream (plain, gzip or zstd) into directory ``path``, owners
        and modes as the archive says."""
        rec = self._resolve(ref)
        with self._still(rec) as rec:
            self._task(rec.isolation).copy_in(rec, path, tar_stream)

    def diff(self, ref: str) -> builtins.list[ChangeEntry]:
        rec = self._resolve(ref)
        return self._task(rec.isolation).diff(rec)

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
        rec = self._resolve(ref)
        image_id = self._task(rec.isolation).commit(
            rec, reference, changes=changes or [], message=message, author=author, pause=pause
        )
        self._container_event("commit", rec)
        return image_id

    def update(
        self,
        ref: str,
        resources: Resources | None = None,
        *,
        restart: RestartPolicy | None = None,
    ) -> None:
        """New limits (None: unchanged), applied to a running container and kept; a
        new restart policy (``restart``), which a restart the container waits for must
        meet still (else it stays exited)."""
        rec = self._resolve(ref)
        if restart is not None:
            _restart.check_update(rec.config, restart)
        with self._locked(rec.id, rec.isolation):
            rec = self._fresh(rec.id)
            if resources is not None:
                self._complete(rec)
                old = rec.config.resources
                rec.config.resources = Resources(
                    **{
                        f.name: getattr(resources, f.name)
                        if getattr(resources, f.name) is not None
                        else getattr(old, f.name)
                        for f in dataclasses.fields(Resources)
                    }
                )
                self._task(rec.isolation).update(rec, resources)
            if restart is not None:
                rec.config.restart = restart
                if rec.status == Status.RESTARTING and not _restart.still_stands(rec):
                    self._end_restart(rec, _restart.RestartState.of(rec))
            self.store.update(rec.id, config=rec.config)
        self._container_event("update", rec)


# -- module helpers ------------------------------------------------------------------------


def _hold(local: LocalImages, holder: str, image: ImageRecord, ref: str) -> None:
    """Hold ``image`` for ``holder``; NotFound when it was removed since it was found
    (``hold`` checks in the transaction that writes it, and ``rmi`` deletes only an
    unheld image: of the two, one sees the other)."""
    try:
        local.images.hold(holder, image.digest)
    except NotFound:
        raise NotFound(f"image not known locally: {ref} (it was just removed)") from None


def _no_users(volume: str) -> builtins.list[str]:
    return []


def _alive(pid: int, start: int) -> bool:
    from lamina.runtime.common import alive

    return alive(pid, start)


def _reason(status: ExitStatus, oom_kills: int) -> ExitReason:
    if status.failed or (status.error and status.code in (125, 126, 127)):
        return ExitReason.RUNTIME_ERROR
    if oom_kills and status.code != 0:
        return ExitReason.OOM_KILLED
    if status.signaled or status.code > 128:
        return ExitReason.SIGNAL
    return ExitReason.EXITED


def _outcome(rec: Record) -> WaitOutcome:
    from lamina.runtime._signals import signal_from_exit_code

    code = rec.exit_code if rec.exit_code is not None else 0
    reason = rec.exit_reason if rec.reason else ExitReason.EXITED
    sig = signal_from_exit_code(code) if reason == ExitReason.SIGNAL else None
    return WaitOutcome(
        exit_code=code, reason=reason, signal=sig, finished_at=rec.finished_at, error=rec.error
    )


def _write_waiter(path: Path) -> bool:
    try:
        path.write_text(str(os.getpid()))
    except OSError:
        return False
    return True


def _remove_waiter(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()


def _pidfd_open(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return -2


def _fileno(f: object) -> int | None:
    try:
        return int(f.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


_EMIT: list[Any] = []  # [emit or None], once looked up


def _emitter() -> Any:
    """The events journal's ``emit`` (``lamina.engine._events``), when it exists."""
    if not _EMIT:
        try:
            from lamina.engine import _events

            _EMIT.append(getattr(_events, "emit", None))
        except ImportError:
            _EMIT.append(None)
    return _EMIT[0]
