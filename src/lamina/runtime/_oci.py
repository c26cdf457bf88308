"""The process-isolation task backend: runc containers monitored by conmon, no daemon.

The engine keeps the container's record and lock; this backend keeps, under the
lamina root:

- ``containers/<id>/``: the OCI bundle (``config.json``), ``userdata/`` (hostname,
  hosts, resolv.conf), conmon's files (``ctr.log``, ``exit/<id>``, ``conmon.pid``,
  ``attach``, ``ctl``) and the engine's ``lock`` and ``waiter``;
- ``overlay/<id>/{upper,work,merged}``: the root filesystem, an overlay of the
  image's snapshots (never copied) mounted at create and at start, unmounted when
  the container stops;
- ``runc/<id>``: runc's own state (``runc --root <root>/runc``); another OCI runtime
  (crun, ``--runtime PATH``) keeps its state in ``runtimes/<name>/<id>``. The record's
  task part names the runtime binary a container was created with, and every later
  operation on that container uses it (records without one are runc's).

A run: ``start`` (conmon runs ``<runtime> create`` and reports the PID on its sync
pipe) -> ``release`` (for runc, reading its exec FIFO, as ``runc start`` would;
otherwise ``<runtime> start``) -> the workload exits -> conmon writes the exit file
and runs the engine's exit command -> the engine records the exit and calls
``teardown``: the overlay unmounted, runc state and cgroups removed.

When the runtime cannot act on a container (its state was deleted), signals reach
its processes directly (its init, known by PID and start time; for SIGKILL its
whole cgroup), and the engine says so in one line.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from signal import SIGKILL
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina._fsutil import atomic_write, naming, queued_in, remove_dir, sweep_trash
from lamina._hooks import stop_point
from lamina._mount import MNT_DETACH, last_errno, libc, mount_overlay, unmount_under
from lamina.errors import InUse, LaminaError
from lamina.runtime import _conmon, _logs
from lamina.runtime._cgroups import (
    cgroup_procs,
    kill_cgroup,
    read_oom_kills,
    read_stats,
    remove_cgroup,
    thaw,
)
from lamina.runtime._conmon import Bundle, OciBinary
from lamina.runtime._interface import Attachment, TaskBackend
from lamina.runtime._signals import signal_name
from lamina.runtime._spec import build_spec, cgroup_path
from lamina.runtime._types import (
    ChangeEntry,
    ContainerConfig,
    Endpoint,
    ExecResult,
    ExecSink,
    ExitStatus,
    NetworkRun,
    PathStat,
    ProcessSpec,
    Record,
    Resources,
    Signalled,
    Started,
    Stats,
    Status,
)
from lamina.runtime.common import StartFailed, alive, process_start_time

if TYPE_CHECKING:
    import socket

    from lamina.image import ImageRecord, LocalImages
    from lamina.runtime import _copier
    from lamina.runtime._volumes import Volume

_ACTIVE = (Status.RUNNING, Status.PAUSED)
_ID_LEN = 64


class OciTasks(TaskBackend):
    """runc + conmon workloads on one lamina root."""

    isolation = "process"
    name = "oci"

    def __init__(
        self,
        root: Path,
        task_root: Path,
        *,
        images: Callable[[], LocalImages],
        report: Callable[[str, str], None],
        oci_runtime: str | None = "runc",
        lookup: Callable[[str], Record] | None = None,
    ) -> None:
        """``oci_runtime``: the runtime new containers are created with, "runc",
        "crun" (looked up in PATH) or a path; a missing one, or crun on a host it
        cannot run on, fails here. None: only existing containers are managed.
        ``lookup(ref)``: the record of another container (``--network container:``)."""
        super().__init__(root, task_root, images=images, report=report)
        self.oci_runtime: OciBinary | None = None
        if oci_runtime is not None:
            self.oci_runtime = OciBinary.at(_conmon.find_oci_runtime(oci_runtime), self.root)
        self.overlay_dir = self.root / "overlay"
        self._lookup = lookup
        self._root_s = str(self.root)
        self.task_root.mkdir(parents=True, exist_ok=True)

    # -- paths ------------------------------------------------------------------------
    def _bundle(self, cid: str) -> Bundle:
        return Bundle(self.task_root / cid, cid)

    def _ovl(self, cid: str) -> Path:
        return self.overlay_dir / cid

    def _merged(self, cid: str) -> Path:
        return self.overlay_dir / cid / "merged"

    def _binary(self, rec: Record) -> OciBinary:
        """The OCI runtime ``rec`` was created with (runc for records that name none)."""
        return OciBinary.at(str(rec.task.get("oci_runtime") or _conmon.RUNC), self.root)

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

    # -- making and unmaking ------------------------------------------------------------
    def prepare(
        self,
        cid: str,
        config: ContainerConfig,
        process: ProcessSpec,
        image: ImageRecord,
        volumes: dict[str, Volume],
    ) -> dict[str, Any]:
        if self.oci_runtime is None:
            raise LaminaError("no OCI runtime was chosen to create containers with")
        if _logs.settings_of(config).keeps_rotated:
            from lamina.runtime import _logrotate

            _logrotate.build(self.root)  # no compiler: refused before anything runs
        local = self.images
        lowers = local.snapshots.lowerdirs(local.unpack(image))
        rec = Record(
            id=cid,
            name="",
            created=0.0,
            image_digest=image.digest,
            config=config,
            extra={"process": _asdict(process)},
            task={
                "lowerdirs": [str(p) for p in lowers],
                "oci_runtime": self.oci_runtime.path,
                "volume_paths": {t: str(v.mountpoint) for t, v in volumes.items()},
            },
        )
        bundle = self._bundle(cid)
        (bundle.dir / "userdata").mkdir(parents=True, exist_ok=True)
        for sub in ("upper", "work", "merged"):
            (self._ovl(cid) / sub).mkdir(parents=True, exist_ok=True)
        self._mount(rec)
        stop_point("create:mounted")
        with naming(bundle.dir):
            self._write_userdata(rec)
            self._write_spec(rec)
        return rec.task

    def discard(self, cid: str) -> None:
        self._unmount(cid)
        remove_dir(self._ovl(cid))

    def rebuild(self, rec: Record) -> None:
        """conmon writes the exit status into exit/ (and persist/): with these back,
        the exit of a running container is still recorded; exec and start need the
        userdata and the spec."""
        d = self._bundle(rec.id).dir
        for sub in ("userdata", "exit", "persist"):
            (d / sub).mkdir(exist_ok=True)
        with contextlib.suppress(LaminaError, OSError):
            self._write_userdata(rec)
            self._write_spec(rec)

    def delete(self, rec: Record) -> None:
        self.discard(rec.id)

    def orphan(self, cid: str) -> builtins.list[str]:
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
        return what + self._remove_overlay(cid)

    def strays(self, known: set[str], *, thorough: bool) -> builtins.list[str]:
        """An ``overlay/<id>`` without its directory in ``containers/`` (whose lock
        tells whether its owner lives): freed here. ``thorough``: runtime state of
        containers that have nothing else, for the engine to free as orphans."""
        for name in _list_dir(self.overlay_dir):
            if name.startswith(".rm-"):  # a removal's trash
                sweep_trash(self.overlay_dir / name)
                continue
            if name in known or not _is_id(name) or (self.task_root / name).exists():
                continue
            try:
                what = self._remove_overlay(name)[:-1]
            except (LaminaError, OSError) as e:
                self._report(name, f"could not clean up after an interrupted command: {e}")
                continue
            self._report(name, f"left over by an interrupted command: removed its {_and(what)}")
        if not thorough:
            return []
        found = []
        for state_root in (self.root / "runc", *(self.root / "runtimes").glob("*")):
            for cid in _list_dir(state_root):
                if _is_id(cid) and cid not in known and not (self.task_root / cid).exists():
                    found.append(cid)
        return found

    def counts_agree(self, rows: int) -> bool:
        return _count_entries(self.task_root) == _count_entries(self.overlay_dir) == rows

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

    # -- the bundle ---------------------------------------------------------------------
    def _write_userdata(
        self, rec: Record, endpoints: builtins.list[Endpoint] | None = None
    ) -> None:
        """``hostname``, ``hosts`` and ``resolv.conf`` (``_etc``) for the container's
        network: ``endpoints`` as realised for a run, else as the record has them.
        Written in place: a running container has them bind-mounted."""
        from lamina.runtime import _etc

        ud = self._bundle(rec.id).dir / "userdata"
        eps = rec.endpoints if endpoints is None else endpoints
        name = _etc.hostname(rec.config, rec.id, rec.process.hostname)
        for file, text in (
            ("hostname", name + "\n"),
            ("hosts", _etc.hosts(rec.config, eps, name)),
            ("resolv.conf", _etc.resolv_conf(rec.config, eps)),
        ):
            with open(ud / file, "w") as f:
                f.write(text)

    def _netns_path(self, cfg: ContainerConfig, netns: str = "") -> str | None:
        """The network namespace to join: the one made for this run (``netns``), or
        another container's (``--network container:``); None for a new one."""
        if netns:
            return netns
        if not cfg.network.startswith("container:"):
            return None
        if self._lookup is None:
            raise LaminaError(f"--network {cfg.network}: no container to look it up in")
        other = self._lookup(cfg.network.partition(":")[2])
        if other.status not in _ACTIVE or not other.pid:
            raise LaminaError(
                f"cannot join the network of container {other.name}: it is not running"
            )
        if other.isolation != self.isolation:
            raise LaminaError(
                f"cannot join the network of container {other.name}: it is a micro-VM"
            )
        return f"/proc/{other.pid}/ns/net"

    def _write_spec(self, rec: Record, netns: str = "") -> None:
        bundle = self._bundle(rec.id)
        ud = bundle.dir / "userdata"
        volume_paths = {t: Path(p) for t, p in (rec.task.get("volume_paths") or {}).items()}
        spec = build_spec(
            config=rec.config,
            process=rec.process,
            rootfs=self._merged(rec.id),
            container_id=rec.id,
            hostname_file=ud / "hostname",
            hosts_file=ud / "hosts",
            resolv_file=ud / "resolv.conf",
            volume_paths=volume_paths,
            netns_path=self._netns_path(rec.config, netns),
        )
        # No fsync: the spec is rebuilt from the record (a crash loses no user data).
        atomic_write(bundle.config, json.dumps(spec).encode(), sync=False)

    def _spec(self, rec: Record) -> dict[str, Any]:
        try:
            spec: dict[str, Any] = json.loads(self._bundle(rec.id).config.read_text())
        except (OSError, ValueError):
            return {}
        return spec

    # -- overlay ------------------------------------------------------------------------
    def _overlay_options(self, rec: Record) -> tuple[list[str], str]:
        """The overlay of ``rec``'s root: its lower dirs (topmost first) and the mount
        options that follow ``lowerdir=``."""
        ovl = self._ovl(rec.id)
        lowers = [str(p) for p in rec.task.get("lowerdirs", [])]
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

    # -- running ------------------------------------------------------------------------
    def start(
        self,
        rec: Record,
        *,
        exit_command: builtins.list[str],
        console_size: Any = None,
        network: NetworkRun | None = None,
    ) -> Started:
        bundle = self._bundle(rec.id)
        if (
            rec.exits
            or rec.status != Status.CREATED
            or bundle.conmon_pidfile.exists()
            or (self._binary(rec).state_root / rec.id).exists()
        ):
            self.teardown(rec, force=True, unmount=False)  # an earlier run's
        self._mount(rec)
        netns = network.netns if network is not None else ""
        if network is not None or not bundle.config.exists():
            # This run's network, or its directory was deleted: the record has it all.
            self._write_userdata(rec, network.endpoints if network is not None else None)
            self._write_spec(rec, netns)
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
                exit_cmd=exit_command,
                log=log,
                rotator=rotator,
                keep_fds=tuple(network.port_fds) if network is not None else (),
            )
        except StartFailed:
            self.teardown(rec, force=True)
            raise
        stop_point("start:created")
        conmon_pid = _conmon.read_pidfile(bundle.conmon_pidfile)
        return Started(
            pid=pid,
            pid_start=process_start_time(pid),
            monitor_pid=conmon_pid,
            monitor_start=process_start_time(conmon_pid),
        )

    def release(self, rec: Record) -> None:
        """``<runtime> start``; for runc, what that does without the cost of running it
        (read the container's exec FIFO)."""
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

    def launched(self, cid: str) -> bool:
        return os.path.exists(f"{self._root_s}/runc/{cid}/exec.fifo")

    def exit_file(self, cid: str) -> str:
        return f"{self.task_root}/{cid}/exit/{cid}"

    def exit_status(self, rec: Record) -> ExitStatus | None:
        code = _conmon.read_exit_file(self._bundle(rec.id))
        return None if code is None else ExitStatus(code, signaled=code > 128)

    def oom_kills(self, rec: Record) -> int:
        return read_oom_kills(cgroup_path(rec.id))  # before runc delete removes the cgroup

    def has_run(self, cid: str) -> bool:
        return os.path.exists(f"{self.task_root}/{cid}/conmon.pid") or os.path.exists(
            f"{self._root_s}/runc/{cid}"
        )

    def teardown(
        self, rec: Record, *, force: bool, unmount: bool = True, files: bool = True
    ) -> None:
        cid = rec.id
        binary = self._binary(rec)
        if force:
            _kill_conmon(self._bundle(cid))  # a starter killed mid-launch leaves one
        if not (binary.state_root / cid).exists():
            # A crash between runc delete and this, or state deleted by hand: whatever
            # still runs in the cgroup is the container's, with nothing to stop it.
            if force and (left := kill_cgroup(cgroup_path(cid))):
                self._report(
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

    def signal(self, rec: Record, sig: int) -> Signalled:
        """``<runtime> kill``; when the runtime has no state of the container any more
        (deleted by hand), the signal goes to its real processes instead: its init
        (known by PID and start time), and for SIGKILL everything in its cgroup."""
        proc = self._oci(rec, "kill", rec.id, str(sig), check=False)
        if proc.returncode == 0:
            return Signalled()
        error = _conmon.runc_error_text(proc.stderr.decode(errors="replace"))
        if (self._binary(rec).state_root / rec.id).exists():
            return Signalled(error=error or f"exit {proc.returncode}")
        init_alive = rec.pid > 0 and alive(rec.pid, rec.pid_start)
        if init_alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, sig)
        if sig == SIGKILL:
            sent, targets = kill_cgroup(cgroup_path(rec.id), timeout=0) + init_alive, "processes"
        else:
            sent, targets = int(init_alive), f"process {rec.pid}"
        if not sent:
            return Signalled(error=error or "it is not running")
        return Signalled(
            direct=f"{signal_name(sig)} to its {targets}", where=f"cgroup {cgroup_path(rec.id)}"
        )

    def pause(self, rec: Record) -> None:
        self._oci(rec, "pause", rec.id)

    def resume(self, rec: Record) -> None:
        if self._oci(rec, "resume", rec.id, check=False).returncode != 0:
            thaw(cgroup_path(rec.id))

    def force_delete(self, rec: Record) -> None:
        """Last resort when SIGKILL did not end a container: runc delete --force."""
        self._oci(rec, "delete", "--force", rec.id, check=False)

    # -- observing ----------------------------------------------------------------------
    def log_path(self, rec: Record) -> Path:
        return self._bundle(rec.id).log

    def stats(self, rec: Record) -> Stats:
        if rec.status not in _ACTIVE:
            return Stats(timestamp=time.time())
        return read_stats(cgroup_path(rec.id), pid=rec.pid)

    def top(self, rec: Record) -> builtins.list[builtins.list[str]]:
        return [row for pid in cgroup_procs(cgroup_path(rec.id)) if (row := _ps_row(pid))]

    def update_network(self, rec: Record, endpoints: builtins.list[Endpoint]) -> None:
        """A network was connected or disconnected: its hosts and resolv.conf say so
        (a running container sees the change: they are bind-mounted)."""
        self._write_userdata(rec, endpoints)

    def disk_usage(self, rec: Record) -> int:
        from lamina.runtime._volumes import disk_usage

        return disk_usage(self._ovl(rec.id) / "upper") + disk_usage(self._bundle(rec.id).dir)

    def inspect(self, rec: Record) -> dict[str, Any]:
        spec = self._spec(rec)
        proc = spec.get("process") or {}
        ovl = self._ovl(rec.id)
        userdata = self._bundle(rec.id).dir / "userdata"
        found: dict[str, Any] = {
            "ResolvConfPath": str(userdata / "resolv.conf"),
            "HostnamePath": str(userdata / "hostname"),
            "HostsPath": str(userdata / "hosts"),
            "Driver": "overlay",
            "GraphDriver": {
                "Name": "overlay",
                "Data": {
                    "LowerDir": ":".join(rec.task.get("lowerdirs", [])),
                    "UpperDir": str(ovl / "upper"),
                    "WorkDir": str(ovl / "work"),
                    "MergedDir": str(ovl / "merged"),
                },
            },
        }
        if proc:  # what runs, as the runtime was told (the init, HOME of the user)
            found["Path"] = (proc.get("args") or [""])[0]
            found["Args"] = (proc.get("args") or [])[1:]
            found["Config"] = {
                "Hostname": spec.get("hostname", ""),
                "Env": proc.get("env") or [],
                "WorkingDir": proc.get("cwd", ""),
            }
        return found

    # -- exec and attach ----------------------------------------------------------------
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
        from lamina.runtime import _exec

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
            timeout=timeout,
            output_limit=output_limit,
            sink=sink,
            detach_keys=detach_keys,
        )

    def attach(self, rec: Record) -> Attachment:
        bundle = self._bundle(rec.id)
        return _ConmonAttachment(
            _conmon.connect_attach(bundle), resize=lambda h, w: _conmon.resize(bundle, h, w)
        )

    def resize(self, rec: Record, height: int, width: int) -> None:
        if not rec.config.tty:
            raise LaminaError(f"container {rec.id[:12]} has no terminal to resize")
        _conmon.resize(self._bundle(rec.id), height, width)

    # -- its filesystem -----------------------------------------------------------------
    def _view(self, rec: Record) -> _copier.View:
        """Where ``cp``'s copier finds the container's files: a running container's
        own view; else its root and mounts (the engine holds its lock)."""
        from lamina.runtime import _copier

        if rec.status in _ACTIVE:
            return _copier.RunningRoot(rec.pid, rec.monitor_pid, rec.monitor_start)
        return self._stopped_root(rec)

    def _stopped_root(self, rec: Record) -> _copier.StoppedRoot:
        """The overlay and bind mounts (volumes are binds) of a container that is not
        running, as its bundle has them; binds below its other mounts (/dev, /proc,
        tmpfs) are left out: those exist only while it runs."""
        from lamina.runtime import _copier

        spec = self._spec(rec)
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

    def stat_path(self, rec: Record, path: str) -> PathStat:
        from lamina.runtime import _copier

        return _copier.stat_path(self._view(rec), path)

    def copy_out(self, rec: Record, path: str, *, follow_link: bool) -> Iterator[bytes]:
        from lamina.runtime import _copier

        return _copier.copy_out(self._view(rec), path, follow_link=follow_link)

    def copy_in(self, rec: Record, path: str, tar_stream: BinaryIO) -> None:
        from lamina.runtime import _copier

        _copier.copy_in(self._view(rec), path, tar_stream)

    def diff(self, rec: Record) -> builtins.list[ChangeEntry]:
        from lamina.runtime import _fsops

        lowers = [Path(p) for p in rec.task.get("lowerdirs", [])]
        return _fsops.diff(self._ovl(rec.id) / "upper", lowers, mountpoints=self._mountpoints(rec))

    def _mountpoints(self, rec: Record) -> builtins.list[str]:
        """Container paths the runtime mounts something on (from the bundle's spec),
        also as resolved in the rootfs when a path there is a symlink."""
        targets = [str(m.get("destination", "")) for m in self._spec(rec).get("mounts") or []]
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
        rec: Record,
        reference: str | None,
        *,
        changes: builtins.list[str],
        message: str | None,
        author: str | None,
        pause: bool,
    ) -> str:
        from lamina.runtime import _fsops

        local = self.images
        base = local.images.get_by_digest(rec.image_digest)
        image_env = (local.config(base).get("config") or {}).get("Env") or []
        frozen = pause and rec.status == Status.RUNNING
        if frozen:
            self.pause(rec)
        try:
            record = _fsops.commit_image(
                local,
                base_image_id=base.id,
                upper=self._ovl(rec.id) / "upper",
                reference=reference,
                changes=changes,
                message=message,
                author=author,
                container_config=_fsops.committed_config(rec.config, image_env),
            )
        finally:
            if frozen:
                self.resume(rec)
        return str(record.id)

    def update(self, rec: Record, resources: Resources) -> None:
        self._write_spec(rec)  # validates, and keeps the limits for later starts
        if rec.status in _ACTIVE:
            args = _update_args(resources)
            if args:
                self._oci(rec, "update", *args, rec.id)


class _ConmonAttachment(Attachment):
    """conmon's attach socket: its packets to the caller's stdout/stderr, the caller's
    stdin to it (from a thread; its EOF closes the container's stdin)."""

    def __init__(self, sock: socket.socket, *, resize: Callable[[int, int], None]) -> None:
        self._sock = sock
        self._resize = resize

    def close(self) -> None:
        self._sock.close()

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
        try:
            return _pump_attach(
                self._sock, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty,
                resize=self._resize, detach_keys=detach_keys,
            )  # fmt: skip
        finally:
            self._sock.close()


# -- module helpers ------------------------------------------------------------------------

def _asdict(value: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(value)


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _is_under(path: str, top: str) -> bool:
    """Whether container path ``path`` is ``top`` or below it."""
    return path == top or path.startswith(top.rstrip("/") + "/")


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
    """Entries of ``d``, but trash this process deletes in the background (not left
    over: sweeping it would put its deletion back on the caller's path)."""
    return len(_list_dir(d)) - queued_in(d)


def _is_id(name: str) -> bool:
    return len(name) == _ID_LEN and all(c in "0123456789abcdef" for c in name)


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
    detach_keys: bytes | None = None,
) -> bool:
    """Copy conmon's packets to stdout/stderr until it closes the socket; stdin (if
    any) is sent from a thread, and its EOF closes the container's stdin. With a
    terminal, the detach keys in stdin end both (the container goes on, its stdin
    open): then True."""
    import socket
    import threading

    from lamina.runtime._term import DetachKeys, follow_window_size, raw_terminal

    stop_r, stop_w = os.pipe()
    in_fd = _fileno(stdin)
    sender: threading.Thread | None = None
    watch = DetachKeys(detach_keys) if tty else None

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
                if watch is not None:
                    data = watch.feed(data)
                    if watch.detached:
                        sock.sendall(data)
                        sock.shutdown(socket.SHUT_RDWR)  # ends the output loop too
                        return
                sock.sendall(data)
            if watch is not None:
                sock.sendall(watch.flush())
        except OSError:
            return
        with contextlib.suppress(OSError):
            # The output goes on to the end, as Docker's client waits for it after its
            # input ended. Without a terminal the EOF closes the container's stdin; with
            # one conmon keeps it open (a terminal's client leaving is a detach).
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
                if not packet or (watch is not None and watch.detached):
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
    return watch is not None and watch.detached


def _safe_resize(resize: Any, rows: int, cols: int) -> None:
    with contextlib.suppress(LaminaError, OSError):
        resize(rows, cols)


def _fileno(f: object) -> int | None:
    try:
        return int(f.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
