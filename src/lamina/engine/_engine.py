"""The engine: every container operation of every front end, on one lamina root.

An ``Engine`` is opened on a root (``open_engine``) and used by reference: a full
ID, a unique ID prefix or a name. Containers of both isolations are listed together
and share one name space; an operation goes to the backend of the container's
isolation. Stores are opened when first needed, so a command that uses none of
them (an image listing) pays for none.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina.errors import LaminaError
from lamina.runtime._types import (
    ChangeEntry,
    Container,
    ContainerConfig,
    ExecResult,
    LogEntry,
    PathStat,
    PortMapping,
    Resources,
    Stats,
    WaitCondition,
    WaitOutcome,
)

if TYPE_CHECKING:
    from lamina.image import ImageRecord, LocalImages
    from lamina.registry import RegistryConfig
    from lamina.runtime._oci import OciRuntime
    from lamina.vm._backend import VmRuntime

# Where containers made before the engine kept why a process container got its isolation.
_REASON_LABEL = "lamina.isolation.reason"


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
        self.root = Path(root).absolute()
        self._report = report
        self._registry_config = registry_config
        self._oci_runtime = oci_runtime
        if oci_runtime is not None:
            from lamina.runtime._conmon import find_oci_runtime

            find_oci_runtime(oci_runtime)  # a missing runtime fails before anything
        self._process: OciRuntime | None = None
        self._vm: VmRuntime | None = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the stores' connections; containers are not affected."""
        if self._process is not None:
            self._process.close()
            self._process = None
        if self._vm is not None:
            self._vm.close()
            self._vm = None

    # -- the planes ---------------------------------------------------------------
    @property
    def images(self) -> LocalImages:
        """The image store of this root (one set of connections for resolving and
        creating)."""
        return self._oci().images

    def _oci(self) -> OciRuntime:
        if self._process is None:
            from lamina.runtime._oci import OciRuntime

            self._process = OciRuntime(
                self.root, oci_runtime=self._oci_runtime, report=self._report
            )
        return self._process

    def _vms(self, *, create: bool = False) -> VmRuntime | None:
        """The micro-VM backend, opened only once it has a database: roots with
        process containers only never import ``lamina.vm``."""
        if self._vm is None and (create or (self.root / "vms" / "vms.db").exists()):
            from lamina.vm import open_vm_runtime

            self._vm = open_vm_runtime(self.root, report=self._report)
        return self._vm

    def _backend(self, ref: str) -> Any:
        vm = self._vms()
        return vm if vm is not None and vm.owns(ref) else self._oci()

    # -- run preparation ----------------------------------------------------------
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

    def registry_config(self) -> RegistryConfig:
        """The registry settings pulls and pushes use."""
        if self._registry_config is not None:
            return self._registry_config()
        from lamina.registry import RegistryConfig

        return RegistryConfig.load()

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

    # -- containers ---------------------------------------------------------------
    def create(self, config: ContainerConfig) -> Container:
        from lamina.errors import AlreadyExists

        vm = self._vms(create=config.isolation == "vm")
        other: Any = self._oci() if config.isolation == "vm" else vm
        if config.name and other is not None and _has_name(other, config.name):
            raise AlreadyExists(f"the container name {config.name!r} is already in use")
        if config.isolation == "vm":
            assert vm is not None
            return vm.create(config, isolation_reason=config.isolation_reason)
        return self._oci().create(config)

    def start(self, ref: str) -> None:
        self._backend(ref).start(ref)

    def stop(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        self._backend(ref).stop(ref, timeout=timeout, signal=signal)

    def restart(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        self._backend(ref).restart(ref, timeout=timeout, signal=signal)

    def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        self._backend(ref).kill(ref, signal)

    def pause(self, ref: str) -> None:
        self._backend(ref).pause(ref)

    def unpause(self, ref: str) -> None:
        self._backend(ref).unpause(ref)

    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        self._backend(ref).remove(ref, force=force, volumes=volumes)

    def rename(self, ref: str, new_name: str) -> None:
        from lamina.errors import AlreadyExists

        backend = self._backend(ref)
        vm = self._vms()
        other: Any = self._oci() if backend is vm else vm
        if other is not None and _has_name(other, new_name):
            raise AlreadyExists(f"the container name {new_name.lstrip('/')!r} is already in use")
        backend.rename(ref, new_name)

    def get(self, ref: str) -> Container:
        c: Container = self._backend(ref).get(ref)
        return c

    def list(self, *, all: bool = False) -> builtins.list[Container]:
        vm = self._vms()
        return self._oci().list(all=all) + (vm.list(all=all) if vm is not None else [])

    def wait(
        self,
        ref: str,
        condition: WaitCondition = WaitCondition.NOT_RUNNING,
        timeout: float | None = None,
    ) -> WaitOutcome:
        outcome: WaitOutcome = self._backend(ref).wait(ref, condition, timeout)
        return outcome

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
        entries: Iterator[LogEntry] = self._backend(ref).logs(
            ref, follow=follow, tail=tail, since=since, until=until, stdout=stdout, stderr=stderr
        )
        return entries

    def stats(self, ref: str) -> Stats:
        s: Stats = self._backend(ref).stats(ref)
        return s

    def top(self, ref: str) -> tuple[builtins.list[str], builtins.list[builtins.list[str]]]:
        found: tuple[builtins.list[str], builtins.list[builtins.list[str]]]
        found = self._backend(ref).top(ref)
        return found

    def ports(self, ref: str) -> builtins.list[PortMapping]:
        """The ports the container publishes now (resolved host ports)."""
        return self.get(ref).ports

    def inspect(self, ref: str) -> dict[str, object]:
        backend = self._backend(ref)
        found = dict(backend.inspect(ref))
        if found.get("Isolation") == "process" and "IsolationReason" not in found:
            config = backend.get(ref).config
            found["IsolationReason"] = (
                config.isolation_reason
                or config.labels.get(_REASON_LABEL)
                or "--isolation process (default)"
            )
        return found

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
        result: ExecResult = self._backend(ref).exec(
            ref, argv, env=env, user=user, workdir=workdir, tty=tty, stdin=stdin,
            detach=detach, stream=stream,
        )  # fmt: skip
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
    ) -> None:
        self._backend(ref).attach(
            ref, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty, start=start
        )

    def resize(self, ref: str, height: int, width: int) -> None:
        self._backend(ref).resize(ref, height, width)

    def stat_path(self, ref: str, path: str) -> PathStat:
        found: PathStat = self._backend(ref).stat_path(ref, path)
        return found

    def copy_out(self, ref: str, path: str, *, follow_link: bool = False) -> Iterator[bytes]:
        chunks: Iterator[bytes] = self._backend(ref).copy_out(ref, path, follow_link=follow_link)
        return chunks

    def copy_in(self, ref: str, path: str, tar_stream: BinaryIO) -> None:
        self._backend(ref).copy_in(ref, path, tar_stream)

    def diff(self, ref: str) -> builtins.list[ChangeEntry]:
        changes: builtins.list[ChangeEntry] = self._backend(ref).diff(ref)
        return changes

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
        image_id: str = self._backend(ref).commit(
            ref, reference, changes=changes, message=message, author=author, pause=pause
        )
        return image_id

    def update(self, ref: str, resources: Resources) -> None:
        self._backend(ref).update(ref, resources)

    def disk_usage(self, ref: str) -> int:
        """Bytes the container holds besides its image (writable layer, logs, config)."""
        size: int = self._backend(ref).disk_usage(ref)
        return size

    def volume_users(self, volume: str) -> builtins.list[str]:
        """IDs of the containers of either isolation using ``volume``."""
        vm = self._vms()
        users = self._oci().volume_users(volume)
        return users + (vm.volume_users(volume) if vm is not None else [])

    def sweep(self) -> builtins.list[str]:
        """Free what interrupted commands left, the thorough way (``container prune``,
        ``system prune``); one line per thing found. An image hold is stale only if
        no container of either isolation keeps its container."""
        vm = self._vms()
        found = self._oci().sweep(foreign=vm.keeps if vm is not None else None)
        return found + (vm.sweep() if vm is not None else [])


def _has_name(backend: Any, name: str) -> bool:
    try:
        return bool(backend.get(name).name == name.lstrip("/"))
    except LaminaError:
        return False
