"""The micro-VM task backend: ``VmTasks``, workloads in micro-VMs beneath the engine.

Lifecycle and contract:

- ``prepare`` (at ``create``) resolves what the VM needs once (its shape, the user in
  the image, the bind mounts and volumes as virtio-fs shares, a ``--vm-base``) into the
  record's task part; the engine has merged the process and made the volumes.
- ``start`` writes ``<root>/vms/<id>/run.json`` (everything the VM needs: the process,
  shares, published ports checked free now, the log settings, the exit command) and
  launches a **supervisor** (``python -m lamina.vm._backend ROOT ID DIR``, its own
  session);
  ``release`` waits until it listens on ``<root>/vms/<id>/ctl.sock``. The supervisor
  boots the VM (``start_vm``), holds the agent channel, sends the workload's EXEC,
  writes its STDOUT/STDERR into ``<root>/vms/<id>/ctr.log`` in conmon's k8s-file format
  (read back with ``lamina.runtime._logs``), and once the workload has exited (or the
  VM failed) shuts QEMU down, writes the exit file (``vms/<id>/exit``: code, signal,
  error) and runs the engine's exit command, as conmon does for process containers.
  It never touches the engine's store.
- Later processes talk to the supervisor over ``ctl.sock`` with the agent protocol
  itself (docs/VM_AGENT.md): SIGNAL for session 1 goes to the workload; EXEC, STDIN and
  SIGNAL on other sessions are relayed to a fresh guest session (``exec``, RESIZE too
  for ``exec -t``); STDIN and RESIZE for session 1 from a client that has no session 1
  of its own go to the workload (``attach``: its output it reads from the log);
  SHUTDOWN kills the VM at once (``stop`` after its grace period, ``rm -f``).
- ``-t`` gives the workload (or an exec) a pseudo-terminal in the guest (EXEC_TTY,
  TERM=xterm unless set): its stream is stdout in the log, the caller's terminal is raw
  while attached and its size follows (SIGWINCH -> RESIZE); ``-i`` keeps its stdin
  open for attached clients; the end of the caller's stdin closes it (a terminal: ^D).

Networking: bridge networks (the default, ``lamina``, as for process containers): the
engine makes the run's network namespace and netavark its veths (addresses, DNS, port
forwarding, firewall: nothing VM-specific); ``start`` gets them as a ``NetworkRun`` and
the supervisor, before booting, takes the veths over with a tap each (``_tapnet``: tc
redirects both ways, the guest NIC gets the veth's MAC, addresses, MTU and default
route, configured by the agent's NETWORK frame with the container's /etc files from
``runtime/_etc``). Published ports are netavark's DNAT to the guest's address; the
supervisor holds their host ports' sockets for the run, as conmon does. The taps die with
QEMU and the namespace with the engine's teardown, whoever is killed. ``--network nat``
is QEMU's user-mode NAT (the guest is 10.0.2.15/24, the host 10.0.2.2, DNS 10.0.2.3):
there ``-p`` becomes QEMU hostfwd rules, ``start`` checks each host port is free (a free
one is chosen for ``-p PORT``) and returns the run's mappings for the record before the
supervisor boots with them. ``none`` leaves only loopback. A VM on bridge networks is
never restored from a snapshot (its NICs are configured at boot); a running one cannot
be connected to another network (microvm has no hotplug). ``--vm-base`` (``_base``) is
resolved at ``create`` (a registry bundle pulled into the cache, its shape checked); the
supervisor boots its kernel and stacks its disk under the image.

``pause`` stops the whole VM (SIGSTOP to QEMU; the engine continues it for stop, kill
and rm -f; exec is refused meanwhile). ``top``, ``cp``, ``diff`` and ``commit`` run the
initramfs's busybox in the guest (``_guestfs``); they need a running (not paused) VM,
as the writable layer lives in the guest.

Containers made before the engine (their supervisor wrote its exit into
``vms/vms.db``, which the engine's migration retired as ``vms/vms.db.migrated``):
a supervisor of that kind still running keeps being reachable through ``ctl.sock``;
the exit it writes down is read from the retired database, for that container only.

Not supported for VMs yet (a one-line LaminaError): update.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import os
import signal as _signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina._fsutil import atomic_write
from lamina.errors import LaminaError
from lamina.runtime._interface import Attachment, TaskBackend
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
    Status,
)

if TYPE_CHECKING:
    import socket

    from lamina.image import ImageRecord, LocalImages
    from lamina.runtime._logs import LogSettings
    from lamina.runtime._term import DetachKeys
    from lamina.runtime._volumes import Volume
    from lamina.vm._agent import AgentConnection, Frame

# The agent protocol (and its socket, terminal and log helpers) is imported where a VM
# is talked to: reconciling records, as every command does, needs none of it.

WORKLOAD = 1  # the agent session of the container's main process
_CHECK = 2  # a client's session of a bounded exec (a health check)
_START_TIMEOUT = 30.0  # seconds a bounded exec may take to start (Docker's)
MIN_MEMORY_MIB = 128
DEFAULT_MEMORY_MIB = 512
_ACTIVE = (Status.RUNNING, Status.PAUSED)
_UNSUPPORTED = "is not supported for micro-VM containers yet"
# Files of one run in a VM's directory: what ``teardown`` removes.
_RUN_FILES = ("ctl.sock", "ctl.sock.tmp", "qemu.pid", "exit", "waiter", "run.json",
              "supervisor.pid")  # fmt: skip
# The database of the VM containers before the engine, retired by its migration.
RETIRED_DB = "vms.db.migrated"
BOOT_TIMEOUT = 60.0


def vm_shape(config: ContainerConfig) -> tuple[int, int]:
    """(vCPUs, memory MiB) for the container's resources: --cpus rounded up, --memory
    with a floor of 128 MiB."""
    cpus = config.resources.cpus
    vcpus = max(1, -(-int(cpus * 1000) // 1000)) if cpus else 1
    mem = config.resources.memory
    memory_mib = max(MIN_MEMORY_MIB, mem >> 20) if mem else DEFAULT_MEMORY_MIB
    return vcpus, memory_mib


def _bridge_run(rec: Record, network: NetworkRun) -> dict[str, Any]:
    """What ``run.json`` says of a run on bridge networks: the namespace, the links the
    guest takes over (netavark's veths, in order), the container's /etc files (as a
    process container's: ``runtime/_etc``), the published ports' sockets to hold."""
    from lamina.runtime import _etc
    from lamina.vm._config import MAX_NETWORKS

    if len(network.endpoints) > MAX_NETWORKS:
        raise LaminaError(
            f"a VM container joins at most {MAX_NETWORKS} networks, "
            f"not {len(network.endpoints)}"
        )
    name = _etc.hostname(rec.config, rec.id, rec.process.hostname)
    files = {
        "hostname": name + "\n",
        "hosts": _etc.hosts(rec.config, network.endpoints, name),
        "resolv.conf": _etc.resolv_conf(rec.config, network.endpoints),
    }
    return {
        "netns": network.netns, "links": [e.interface for e in network.endpoints],
        "etc": files, "port_fds": list(network.port_fds),
    }  # fmt: skip


class VmTasks(TaskBackend):
    """Micro-VM workloads on one lamina root."""

    isolation = "vm"
    name = "vm"

    def __init__(
        self,
        root: Path,
        task_root: Path,
        *,
        images: Callable[[], LocalImages],
        report: Callable[[str, str], None],
        accel: str = "auto",
    ) -> None:
        super().__init__(root, task_root, images=images, report=report)
        self.accel = accel
        self.task_root.mkdir(parents=True, exist_ok=True)
        self._launched: dict[str, subprocess.Popen[bytes]] = {}  # supervisors of this process

    # -- making and unmaking ------------------------------------------------------------
    def prepare(
        self,
        cid: str,
        config: ContainerConfig,
        process: ProcessSpec,
        image: ImageRecord,
        volumes: dict[str, Volume],
    ) -> dict[str, Any]:
        from lamina.vm._arch import host_arch, image_arch, require
        from lamina.vm._config import generate_mac
        from lamina.vm._mounts import shares_for, tmpfs_mounts
        from lamina.vm._rootfs import image_user

        local = self.images
        arch = image_arch(local.config(image))
        if arch.foreign:  # emulated: say now, in one line, what is missing to run it
            if config.vm_base:
                raise LaminaError(
                    f"--vm-base bundles run linux/{host_arch()} images, not {arch.platform} ones"
                )
            if self.accel == "kvm":
                raise LaminaError(
                    f"KVM cannot run {arch.platform} guests on this {host_arch()} host"
                )
            require(arch)
        bridges = config.network not in ("nat", "none")
        if bridges and (not config.networks or config.network.startswith("container:")):
            raise LaminaError(f"--network {config.network} is not supported for VM containers")
        if config.ports and config.network == "none":
            raise LaminaError("publishing ports (-p) needs a network: not --network none")
        tmpfs = tmpfs_mounts(config)
        shares = shares_for(config, volumes)
        vcpus, memory_mib = vm_shape(config)
        base: dict[str, Any] | None = None
        if config.vm_base:
            from lamina.vm._base import base_kernel, fit_shape, resolve_base

            found = resolve_base(local, config.vm_base)
            vcpus, memory_mib = fit_shape(
                found, vcpus, memory_mib, cpus_given=bool(config.resources.cpus),
                memory_given=bool(config.resources.memory),
            )  # fmt: skip
            base_kernel(self.root, found)  # its modules: a missing one fails here, not at boot
            base = found.to_dict()
        uid, gid, groups, home = image_user(local, image, process.user or None)
        return {
            "uid": uid, "gid": gid, "groups": groups, "home": home, "vcpus": vcpus,
            "memory_mib": memory_mib, "arch": arch.name,
            "accel": "tcg" if arch.foreign else self.accel, "mac": generate_mac(),
            "base": base, "tmpfs": tmpfs, "shares": shares,
        }  # fmt: skip

    def discard(self, cid: str) -> None:
        """Nothing of a VM's exists outside its directory before it starts."""

    def delete(self, rec: Record) -> None:
        _kill_qemu(self.task_dir(rec.id))  # a supervisor killed before it could

    def orphan(self, cid: str) -> builtins.list[str]:
        vmdir = self.task_dir(cid)
        what = []
        if _kill_supervisor(vmdir, 0):
            what.append("monitor")
        if _kill_qemu(vmdir):  # its supervisor, if any, ends with it
            what.append("micro-VM")
        return what

    def counts_agree(self, rows: int) -> bool:
        try:
            names = os.listdir(self.task_root)
        except FileNotFoundError:
            return rows == 0
        return sum(len(n) == 64 for n in names) == rows

    # -- running ------------------------------------------------------------------------
    def start(
        self,
        rec: Record,
        *,
        exit_command: builtins.list[str],
        console_size: Any = None,
        network: NetworkRun | None = None,
    ) -> Started:
        from lamina.runtime.common import process_start_time

        vmdir = self.task_dir(rec.id)
        self.teardown(rec, force=True)  # what an earlier run left; the log goes on
        cfg, task, process = rec.config, rec.task, rec.process
        env = list(process.env)
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={task.get('home') or '/'}")
        published: builtins.list[dict[str, Any]] = []
        bridges: dict[str, Any] = {}
        if network is not None:  # netavark's veths, taken over by the supervisor
            bridges = _bridge_run(rec, network)
        elif cfg.network == "nat":
            # This run's host ports: checked free now (a taken one fails in one line
            # before anything boots); "-p PORT" gets a free one. QEMU binds them.
            published = [asdict(p) for p in claim_ports(cfg.ports)]
        elif cfg.network != "none":
            raise LaminaError(f"container {rec.name} has no network namespace for this run")
        run = {
            **{k: task.get(k) for k in ("uid", "gid", "groups", "vcpus", "memory_mib", "arch",
                                        "accel", "mac", "base", "shares", "tmpfs")},
            "argv": process.args, "env": env, "cwd": process.cwd,
            "hostname": process.hostname or rec.id[:12], "image_digest": rec.image_digest,
            "network": cfg.network, "published": published, "stdin": cfg.stdin_open,
            "tty": cfg.tty, "log_driver": cfg.log_driver, "log_options": cfg.log_options,
            "console_size": list(console_size) if console_size else None,
            "exit_command": exit_command, **bridges,
        }  # fmt: skip
        atomic_write(vmdir / "run.json", json.dumps(run).encode(), sync=False)
        with open(vmdir / "supervisor.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lamina.vm._backend", str(self.root), rec.id, str(vmdir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",  # pins no directory of the caller's
                start_new_session=True,  # outlives the CLI and its ^C
                pass_fds=tuple(bridges.get("port_fds") or ()),  # held for the run
            )
        (vmdir / "supervisor.pid").write_text(str(proc.pid))
        self._launched[rec.id] = proc
        started = process_start_time(proc.pid)
        return Started(
            pid=proc.pid,
            pid_start=started,
            monitor_pid=proc.pid,
            monitor_start=started,
            task={"published": published},
        )

    def release(self, rec: Record) -> None:
        """Wait until the VM has booted and its supervisor listens (what the caller
        does next, attach or exec, needs that); a boot that fails is one error line."""
        vmdir = self.task_dir(rec.id)
        proc = self._launched.pop(rec.id, None)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not (vmdir / "ctl.sock").exists():
            ended = proc.poll() is not None if proc is not None else not _alive(rec)
            if ended or os.path.exists(self.exit_file(rec.id)):
                status = self.exit_status(rec)
                msg = status.error if status is not None and status.error else ""
                raise LaminaError(
                    f"the VM of container {rec.id[:12]} did not start: "
                    f"{msg or _last_line(vmdir / 'supervisor.log')}"
                )
            if time.monotonic() > deadline:
                _kill_supervisor(vmdir, rec.monitor_pid)
                raise LaminaError(
                    f"the VM of container {rec.id[:12]} did not start within {BOOT_TIMEOUT:.0f} s"
                )
            time.sleep(0.01)

    def exit_file(self, cid: str) -> str:
        return f"{self.task_root}/{cid}/exit"

    def exit_status(self, rec: Record) -> ExitStatus | None:
        try:
            found = json.loads(Path(self.exit_file(rec.id)).read_bytes())
        except FileNotFoundError:
            return self._legacy_exit(rec) if rec.task.get("legacy") else None
        except (OSError, ValueError):
            return None
        return ExitStatus(
            int(found["code"]),
            signaled=bool(found.get("signaled")),
            error=str(found.get("error") or ""),
            failed=bool(found.get("failed")),
        )

    def _legacy_exit(self, rec: Record) -> ExitStatus | None:
        """The exit a supervisor started before the engine wrote into its database."""
        import sqlite3

        path = self.task_root / RETIRED_DB
        if not path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                row = db.execute(
                    "SELECT status, exit_code, signaled, error FROM vms WHERE id = ?", (rec.id,)
                ).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return None
        if row is None or row[0] not in ("exited", "failed", "removed") or row[1] is None:
            return None
        return ExitStatus(int(row[1]), bool(row[2]), str(row[3] or ""), row[0] == "failed")

    def has_run(self, cid: str) -> bool:
        vmdir = self.task_dir(cid)
        return any((vmdir / name).exists() for name in ("run.json", "ctl.sock", "qemu.pid"))

    def teardown(
        self, rec: Record, *, force: bool, unmount: bool = True, files: bool = True
    ) -> None:
        vmdir = self.task_dir(rec.id)
        if force:
            _kill_supervisor(vmdir, rec.monitor_pid)
            _kill_qemu(vmdir)
        if files:
            for name in _RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (vmdir / name).unlink()

    def signal(self, rec: Record, sig: int) -> Signalled:
        from lamina.vm._agent import Msg

        try:
            self._tell(rec.id, Msg.SIGNAL, WORKLOAD, sig.to_bytes(4, "big"))
        except LaminaError as e:
            return Signalled(error=str(e))
        return Signalled()

    def force_stop(self, rec: Record) -> Signalled:
        from lamina.vm._agent import Msg

        try:
            self._tell(rec.id, Msg.SHUTDOWN)
        except LaminaError as e:
            return Signalled(error=str(e))
        return Signalled()

    def force_delete(self, rec: Record) -> None:
        _kill_supervisor(self.task_dir(rec.id), rec.monitor_pid)
        _kill_qemu(self.task_dir(rec.id))

    def pause(self, rec: Record) -> None:
        from lamina.vm._guestfs import require_guest, signal_vmm

        require_guest(str(rec.status), rec.id, "pause")
        if not signal_vmm(self.task_dir(rec.id), _signal.SIGSTOP):
            raise LaminaError(f"cannot pause container {rec.id[:12]}: its VM is not running")

    def resume(self, rec: Record) -> None:
        from lamina.vm._guestfs import signal_vmm

        signal_vmm(self.task_dir(rec.id), _signal.SIGCONT)

    def _control(self, cid: str) -> AgentConnection:
        import socket

        from lamina.vm._agent import AgentConnection

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _short_path(self.task_dir(cid) / "ctl.sock") as path:
                sock.connect(path)
        except OSError as e:
            sock.close()
            raise LaminaError(f"container {cid[:12]} is not running ({e.strerror})") from None
        return AgentConnection(sock)

    def _tell(self, cid: str, type_: int, session: int = 0, payload: bytes = b"") -> None:
        """One frame for the VM's supervisor: a signal or a shutdown."""
        conn = self._control(cid)
        try:
            conn.send(type_, session, payload)
            deadline = time.monotonic() + 5
            while conn.pending and time.monotonic() < deadline and not conn.closed:
                conn.poll(0.05)
        finally:
            conn.close()

    def update_network(self, rec: Record, endpoints: builtins.list[Endpoint]) -> None:
        """A network was disconnected (the engine refuses connecting a running VM:
        microvm has no hotplug): a running guest takes the NIC of that network down and
        gets the /etc files of the networks left. A stopped one gets both at its next
        start."""
        from lamina.vm._agent import Msg
        from lamina.vm._tapnet import network_payload

        if rec.status not in _ACTIVE:
            return
        try:
            run = json.loads((self.task_dir(rec.id) / "run.json").read_bytes())
        except (OSError, ValueError):
            return
        if not run.get("links"):
            return
        network = NetworkRun(netns=run.get("netns") or "", endpoints=endpoints)
        files = _bridge_run(rec, network)["etc"]
        kept = {e.interface for e in endpoints}
        down = [link for link in run["links"] if link not in kept]
        self._tell(rec.id, Msg.NETWORK, 0, network_payload([], [], files, down=down))

    # -- observing ----------------------------------------------------------------------
    def log_path(self, rec: Record) -> Path:
        return self.task_dir(rec.id) / "ctr.log"

    def stats(self, rec: Record) -> Stats:
        from lamina.runtime.common import host_cpu_ns
        from lamina.vm._guestfs import vmm_cpu_ns

        qemu = _qemu_pid(self.task_dir(rec.id)) if rec.status in _ACTIVE else 0
        # The VM as the host sees it: QEMU's memory and CPU time (the CLI makes the
        # CPU % from two samples and the host's CPU time).
        return Stats(
            cpu_usage_ns=vmm_cpu_ns(qemu) if qemu else 0,
            system_cpu_ns=host_cpu_ns(),
            memory_used=_rss(qemu) if qemu else 0,
            memory_limit=int(rec.task.get("memory_mib") or DEFAULT_MEMORY_MIB) << 20,
            pids=1 if qemu else 0,
            timestamp=time.time(),
        )

    def top(self, rec: Record) -> builtins.list[builtins.list[str]]:
        from lamina.vm import _guestfs

        _guestfs.require_guest(str(rec.status), rec.id, "list the processes of")
        conn = self._control(rec.id)
        try:
            return _guestfs.top(conn)
        finally:
            conn.close()

    def disk_usage(self, rec: Record) -> int:
        from lamina.runtime._volumes import disk_usage

        return disk_usage(self.task_dir(rec.id))

    def inspect(self, rec: Record) -> dict[str, Any]:
        from lamina.vm._arch import host_arch

        task = rec.task
        vmdir = self.task_dir(rec.id)
        try:
            boot = json.loads((vmdir / "boot.json").read_bytes())
        except (OSError, ValueError):
            boot = {}
        active = rec.status in _ACTIVE
        ports = [PortMapping(**m) for m in task.get("published") or []] if active else []
        arch = task.get("arch", "amd64")
        return {
            "HostConfig": {"PortBindings": _port_map(rec.config.ports, requested=True)},
            "Mounts": [_mount_info(self.root, share) for share in task.get("shares", [])]
            + [_tmpfs_info(t) for t in task.get("tmpfs", [])],
            "NetworkSettings": _network_settings(
                rec.config.network, boot.get("mac") or task.get("mac", ""), ports
            ),
            "VM": {
                "Architecture": arch,
                "Emulated": arch != host_arch(),
                "VCPUs": task.get("vcpus"),
                "MemoryMiB": task.get("memory_mib"),
                "Accel": task.get("accel", "auto"),
                "QemuPid": _qemu_pid(vmdir) if active else 0,
                "Base": _base_info(task.get("base")),
                "RestoredFrom": boot.get("restored_from") or None,
            },
        }

    def ports(self, rec: Record) -> builtins.list[PortMapping]:
        """The ports of the current run, resolved."""
        return [PortMapping(**m) for m in rec.task.get("published") or []]

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
        from lamina.runtime._term import window_size
        from lamina.runtime.common import merge_env
        from lamina.vm._agent import Msg, exec_payload

        task = rec.task
        uid, gid, groups = task["uid"], task["gid"], task["groups"]
        environ = list(rec.process.env)
        if not any(e.startswith("HOME=") for e in environ):
            environ.append(f"HOME={task.get('home') or '/'}")
        environ = merge_env(environ, env or [])
        if user:
            from lamina.vm._rootfs import image_user

            local = self.images
            try:
                image = local.images.get_by_digest(rec.image_digest)
                uid, gid, groups, home = image_user(local, image, user)
            except LaminaError as e:  # Docker: the exec could not start, 126
                from lamina.runtime.common import StartFailed

                raise StartFailed(str(e), exit_code=126) from None
            environ = merge_env(environ, [f"HOME={home or '/'}", *(env or [])])
        if tty and not any(e.startswith("TERM=") for e in environ):
            environ.append("TERM=xterm")
        tty = tty and not detach  # nobody would read its terminal
        term = size = None
        if sink is not None and not detach:
            in_fd = sink.stdin_fd
            interactive = in_fd is not None
            size = sink.size if tty else None
        else:
            sink = None
            interactive = (
                not detach and stdin is not None and getattr(stdin, "name", None) != os.devnull
            )
            in_fd = _fileno(stdin) if interactive else None
            term = in_fd if tty and in_fd is not None and os.isatty(in_fd) else None
            size = window_size(term) if term is not None else None
        payload = exec_payload(
            argv, environ, cwd=workdir or rec.process.cwd, uid=uid, gid=gid, groups=groups,
            stdin=interactive, tty=tty, size=size,
        )  # fmt: skip
        conn = self._control(rec.id)
        bounded = timeout is not None or output_limit is not None
        # An exec that may be signalled (a check's timeout, a relay's reader gone) has
        # a session of its own, since SIGNAL for session 1 goes to the workload.
        session = _CHECK if bounded or sink is not None else WORKLOAD
        try:
            conn.send(Msg.EXEC, session, payload)
            if detach:
                return _started(conn)
            if interactive and in_fd is None:  # a stream without a descriptor: all at once
                assert stdin is not None
                conn.send_stdin(WORKLOAD, stdin.read())
            if bounded:
                return _collect_bounded(conn, timeout, output_limit)
            from lamina.runtime._term import DetachKeys

            watch = DetachKeys(detach_keys) if tty and in_fd is not None else None
            return _collect_exec(conn, stream, in_fd=in_fd, term=term, session=session,
                                 sink=sink, watch=watch)  # fmt: skip
        finally:
            conn.close()

    def attach(self, rec: Record) -> Attachment:
        return _LogAttachment(self, rec)

    def resize(self, rec: Record, height: int, width: int) -> None:
        from lamina.vm._agent import Msg, resize_payload

        if not rec.config.tty:
            raise LaminaError(f"container {rec.id[:12]} has no terminal to resize")
        self._tell(rec.id, Msg.RESIZE, WORKLOAD, resize_payload(height, width))

    # -- its filesystem -----------------------------------------------------------------
    def stat_path(self, rec: Record, path: str) -> PathStat:
        from lamina.vm import _guestfs

        _guestfs.require_guest(str(rec.status), rec.id, "copy files from")
        conn = self._control(rec.id)
        try:
            return _guestfs.stat_path(conn, path)
        finally:
            conn.close()

    def copy_out(self, rec: Record, path: str, *, follow_link: bool) -> Iterator[bytes]:
        from lamina.vm import _guestfs

        _guestfs.require_guest(str(rec.status), rec.id, "copy files from")
        return _guestfs.copy_out(lambda: self._control(rec.id), path, follow_link=follow_link)

    def copy_in(self, rec: Record, path: str, tar_stream: BinaryIO) -> None:
        from lamina.vm import _guestfs

        _guestfs.require_guest(str(rec.status), rec.id, "copy files into")
        conn = self._control(rec.id)
        try:
            _guestfs.copy_in(conn, path, tar_stream)
        finally:
            conn.close()

    def diff(self, rec: Record) -> builtins.list[ChangeEntry]:
        from lamina.vm import _guestfs

        _guestfs.require_guest(str(rec.status), rec.id, "diff")
        mounts = [m.target for m in rec.config.mounts]
        conn = self._control(rec.id)
        try:
            return _guestfs.diff(_guestfs.upper_listing(conn), mounts)
        finally:
            conn.close()

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
        from lamina.vm import _guestfs

        _guestfs.require_guest(str(rec.status), rec.id, "commit")
        local = self.images
        conn = self._control(rec.id)
        try:
            return _guestfs.commit(
                conn, local, image_id=local.images.get_by_digest(rec.image_digest).id,
                config=rec.config, reference=reference, changes=changes, message=message,
                author=author, pause=pause,
            )  # fmt: skip
        finally:
            conn.close()

    def update(self, rec: Record, resources: Resources) -> None:
        raise LaminaError(f"update {_UNSUPPORTED}")


class _LogAttachment(Attachment):
    """A VM's output follows its log (which holds every byte from the start, with a
    TTY the terminal's stream as stdout): nothing is lost between ``start`` and the
    first read, which a live relay could not promise as the supervisor only listens
    once the VM is up. Stdin (when the container has ``-i``) and the terminal's size go
    to the supervisor over ``ctl.sock`` as STDIN and RESIZE frames for the workload's
    session; the end of stdin closes the workload's (a terminal: ^D)."""

    def __init__(self, tasks: VmTasks, rec: Record) -> None:
        from lamina.runtime._logs import LogReader

        self._tasks = tasks
        self._rec = rec
        self._tail = LogReader(tasks.log_path(rec), pieces=True)

    def close(self) -> None:
        self._tail.close()

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
        from lamina.runtime._term import DetachKeys

        forward = stdin is not None
        in_fd = _fileno(stdin) if forward else None
        term = in_fd if tty and in_fd is not None and os.isatty(in_fd) else None
        # The log opened before ``running()`` first looks: the end it may see finished
        # removes a --rm container's directory, which the open log outlives.
        pending = self._tail.read()
        conn: AgentConnection | None = None
        if (forward or term is not None) and running():
            with contextlib.suppress(LaminaError):  # it ended already: the log has it all
                conn = self._tasks._control(self._rec.id)
        if conn is not None and forward and in_fd is None:
            assert stdin is not None
            conn.send_stdin(WORKLOAD, stdin.read())
        with contextlib.ExitStack() as stack:
            stack.callback(self._tail.close)
            fwd = None
            watch = DetachKeys(detach_keys) if tty and in_fd is not None else None
            if conn is not None:
                stack.callback(conn.close)
                fwd = stack.enter_context(_InputForwarder(conn, WORKLOAD, in_fd, term, watch))
            while True:
                if watch is not None and watch.detached:
                    return True  # the workload's stdin stays open: only ours stops
                # Polled every 20 ms (not logs -f's backoff): the exit is seen at once.
                done = not running()
                for entry in pending + self._tail.read():
                    out = stderr if entry.stream == "stderr" else stdout
                    out.write(entry.data)
                    out.flush()
                pending = []
                if done:
                    return False
                if fwd is not None:
                    fwd.wait(0.02)  # the supervisor sends attached clients nothing
                else:
                    time.sleep(0.02)


def claim_ports(ports: builtins.list[PortMapping]) -> builtins.list[PortMapping]:
    """``ports`` with every host port checked free (host port 0: a free one picked),
    as QEMU's hostfwd will bind them (TCP with SO_REUSEADDR, as slirp does)."""
    import errno
    import socket

    held: builtins.list[socket.socket] = []
    out: builtins.list[PortMapping] = []
    try:
        for p in ports:
            kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
            s = socket.socket(socket.AF_INET, kind)
            held.append(s)  # held until all are chosen: two "-p PORT" get two ports
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((p.host_ip or "0.0.0.0", p.host_port))
            except OSError as e:
                where = f"{p.host_ip or '0.0.0.0'}:{p.host_port}/{p.protocol}"
                if e.errno == errno.EADDRINUSE:
                    raise LaminaError(
                        f"cannot publish port {p.host_port}: {where} is already in use"
                    ) from None
                raise LaminaError(f"cannot publish port {where}: {e.strerror}") from None
            out.append(PortMapping(p.container_port, p.protocol, p.host_ip, s.getsockname()[1]))
    finally:
        for s in held:
            s.close()
    return out


def hostfwd_rules(ports: builtins.list[PortMapping]) -> builtins.list[str]:
    """QEMU user-mode hostfwd rules (to the guest's 10.0.2.15)."""
    return [f"{p.protocol}:{p.host_ip}:{p.host_port}-:{p.container_port}" for p in ports]


def _port_map(
    ports: builtins.list[PortMapping], *, requested: bool = False
) -> dict[str, builtins.list[dict[str, str]]]:
    """Docker's ``{"80/tcp": [{"HostIp": ..., "HostPort": ...}]}``; ``requested``: as
    asked (HostPort "" = any free one), else as bound."""
    out: dict[str, builtins.list[dict[str, str]]] = {}
    for p in ports:
        ip = p.host_ip if requested else p.host_ip or "0.0.0.0"
        port = str(p.host_port) if p.host_port else ""
        out.setdefault(p.private, []).append({"HostIp": ip, "HostPort": port})
    return out


def _network_settings(network: str, mac: str, ports: builtins.list[PortMapping]) -> dict[str, Any]:
    nets: dict[str, Any] = {}
    if network == "nat":  # the addresses QEMU's user-mode NAT gives the guest (agent.c)
        nets["nat"] = {
            "IPAddress": "10.0.2.15", "IPPrefixLen": 24, "Gateway": "10.0.2.2",
            "DNSServers": ["10.0.2.3"], "MacAddress": mac,
        }  # fmt: skip
    else:
        nets[network] = {}
    return {"Ports": _port_map(ports), "Networks": nets}


def _base_info(base: dict[str, Any] | None) -> dict[str, Any] | None:
    if not base:
        return None
    return {
        "Reference": base["reference"],
        "Path": base["path"],
        "Digest": base.get("digest", ""),
        "Architecture": base.get("architecture", ""),
        "KernelVersion": base.get("kernel_version", ""),
    }


def _tmpfs_info(mount: dict[str, Any]) -> dict[str, object]:
    """inspect's Mounts entry of a --tmpfs mount (flag bit 1: read-only)."""
    return {"Type": "tmpfs", "Destination": mount["target"], "Source": "",
            "RW": not mount["flags"] & 1, "Mode": mount["data"]}  # fmt: skip


def _mount_info(root: Path, share: dict[str, Any]) -> dict[str, object]:
    """One entry of inspect's Mounts, as the process backend shows it."""
    entry: dict[str, object] = {
        "Type": "volume" if "volume" in share else "bind",
        "Destination": share["target"],
        "RW": not share.get("read_only"),
        "Mode": "ro" if share.get("read_only") else "",
        "Propagation": "virtiofs",
    }
    if "volume" in share:
        entry.update(Name=share["volume"], Driver="local",
                     Source=str(root / "volumes" / share["volume"] / "_data"))  # fmt: skip
    else:
        entry["Source"] = share["source"]
    return entry


def _fileno(f: object) -> int | None:
    try:
        return int(f.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


class _InputForwarder:
    """Feeds a session from the caller: bytes read from ``in_fd`` become STDIN frames
    (its end an empty one) and, with ``term`` (the caller's terminal, raw for the
    duration), its window size RESIZE frames, now and on every SIGWINCH. The handler
    only notes the size and wakes ``wait``: frames are queued from the loop, never from
    a signal handler in the middle of a send."""

    def __init__(
        self,
        conn: AgentConnection,
        session: int,
        in_fd: int | None,
        term: int | None,
        watch: DetachKeys | None = None,
    ) -> None:
        """``watch``: the input goes through it; once it has seen the detach keys,
        nothing more is read (and no end of input is sent)."""
        import selectors

        self.conn, self.session, self.in_fd, self.term = conn, session, in_fd, term
        self.watch = watch
        self._size: tuple[int, int] | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(conn.sock, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        if in_fd is not None:
            self._sel.register(in_fd, selectors.EVENT_READ)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _InputForwarder:
        from lamina.runtime._term import follow_window_size, raw_terminal

        if self.term is not None:
            self._stack.enter_context(raw_terminal(self.term))
            self._stack.enter_context(follow_window_size(self.term, self.on_size))
            self._send_size()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def on_size(self, rows: int, cols: int) -> None:
        """A new terminal size, sent from the loop (safe from a signal or a thread)."""
        self._size = (rows, cols)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def _send_size(self) -> None:
        from lamina.vm._agent import Msg, resize_payload

        size, self._size = self._size, None
        if size is not None:
            self.conn.send(Msg.RESIZE, self.session, resize_payload(*size))

    def wait(self, timeout: float) -> builtins.list[Frame]:
        """Wait up to ``timeout`` for output or input, forward the input; the frames
        that arrived."""
        from lamina.vm._agent import STDIN_CHUNK, Msg

        if self.conn.closed:
            time.sleep(timeout)
            return self.conn.poll(0)
        if self.conn.pending:  # still sending: come back soon to push the rest
            timeout = min(timeout, 0.01)
        ready = self._sel.select(timeout)
        self._send_size()  # first: keys typed after a resize must see the new size
        for key, _ in ready:
            if key.fd == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 512)
            elif key.fd == self.in_fd:
                read = os.read(self.in_fd, STDIN_CHUNK)
                data = self._watched(read) if self.watch is not None else read
                if data is None:
                    continue
                self.conn.send(Msg.STDIN, self.session, data)  # b"": the end
                if not data:
                    self._sel.unregister(self.in_fd)
        return self.conn.poll(0)

    def _watched(self, data: bytes) -> bytes | None:
        """``data`` through the watch: what to send (b"": the end), None for nothing."""
        from lamina.vm._agent import Msg

        assert self.watch is not None and self.in_fd is not None
        if not data:  # the end: a held ctrl-p first, as typed
            held = self.watch.flush()
            if held:
                self.conn.send(Msg.STDIN, self.session, held)
            return b""
        data = self.watch.feed(data)
        if self.watch.detached:
            if data:
                self.conn.send(Msg.STDIN, self.session, data)
            self._sel.unregister(self.in_fd)
            return None
        return data or None


def _started(conn: AgentConnection) -> ExecResult:
    """``exec --detach``: wait until the process started (its failure to start is
    raised as for an attached exec); it then runs on in the guest, its output dropped
    by the supervisor once this client is gone, as Docker drops a detached exec's."""
    from lamina.runtime.common import exec_failed
    from lamina.vm._agent import Msg

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not conn.closed:
        for f in conn.poll(1.0):
            if f.type == Msg.STARTED:
                return ExecResult(0, b"", b"")
            if f.type == Msg.ERROR:
                raise exec_failed(f.payload.decode(errors="replace"))
    raise LaminaError("the container stopped before the exec started")


def _collect_exec(
    conn: AgentConnection,
    stream: bool,
    *,
    in_fd: int | None = None,
    term: int | None = None,
    session: int = WORKLOAD,
    sink: ExecSink | None = None,
    watch: DetachKeys | None = None,
) -> ExecResult:
    """Run an exec session to its EXIT: output passed through (``stream``), handed
    to ``sink`` or collected, the caller's stdin and terminal size forwarded
    (``_InputForwarder``). A sink whose reader has gone gets the process SIGKILL.
    Once ``watch`` sees the detach keys (a terminal's) in the input, the exec runs on: this client
    leaves it (the supervisor drops its output), or a sink is told and the output
    dropped here until its end."""
    import signal

    from lamina.vm._agent import Msg, parse_exit

    out, err = bytearray(), bytearray()
    error: str | None = None
    sink_gone = False

    def end_for_gone_reader() -> None:
        nonlocal sink_gone
        sink_gone = True
        conn.send(Msg.SIGNAL, session, int(signal.SIGKILL).to_bytes(4, "big"))

    with _InputForwarder(conn, session, in_fd, term, watch) as fwd:
        if sink is not None:
            sink.resize = fwd.on_size
        try:
            while True:
                frames = fwd.wait(1.0)
                if watch is not None and watch.detached and not sink_gone:
                    if sink is None:
                        return ExecResult(0, b"", b"", detached=True)
                    sink_gone, sink.resize = True, None  # its output dropped from now
                    if sink.detached is not None:
                        sink.detached()
                if sink is not None and not frames and not sink_gone and sink.gone():
                    end_for_gone_reader()
                for f in frames:
                    if f.type in (Msg.STDOUT, Msg.STDERR):
                        if sink is not None:
                            if not sink_gone:
                                try:
                                    sink.write(1 if f.type == Msg.STDOUT else 2, f.payload)
                                except OSError:
                                    end_for_gone_reader()
                        elif stream:
                            ours = sys.stdout if f.type == Msg.STDOUT else sys.stderr
                            ours.buffer.write(f.payload)
                            ours.buffer.flush()
                        else:
                            (out if f.type == Msg.STDOUT else err).extend(f.payload)
                    elif f.type == Msg.ERROR:
                        error = f.payload.decode(errors="replace")
                    elif f.type == Msg.EXIT:
                        if error is not None:
                            from lamina.runtime.common import exec_failed

                            raise exec_failed(error)
                        return ExecResult(parse_exit(f.payload).exit_code, bytes(out), bytes(err))
                if conn.closed:
                    raise LaminaError("the container stopped before the exec finished")
        finally:
            if sink is not None:
                sink.resize = None


def _collect_bounded(conn: AgentConnection, timeout: float | None, limit: int | None) -> ExecResult:
    """An exec session for a check: stdout and stderr together, the first ``limit``
    bytes kept; ``timeout`` seconds after its process started (as Docker counts: not
    the time a booting guest takes to start it) the process is sent SIGKILL."""
    import signal

    from lamina.runtime.common import exec_failed
    from lamina.vm._agent import Msg, parse_exit

    kept = bytearray()
    truncated = timed_out = False
    error: str | None = None
    deadline = time.monotonic() + _START_TIMEOUT  # until STARTED: Docker's 30 s to start
    while not conn.closed:
        wait = min(max(deadline - time.monotonic(), 0.0), 1.0)
        if wait <= 0:
            if timed_out:  # killed, and no EXIT came: give up on it
                return ExecResult(-1, bytes(kept), b"", timed_out=True, truncated=truncated)
            timed_out, deadline = True, time.monotonic() + 10  # then its EXIT, briefly
            conn.send(Msg.SIGNAL, _CHECK, int(signal.SIGKILL).to_bytes(4, "big"))
            continue
        for f in conn.poll(wait):
            if f.type == Msg.STARTED and timeout is not None and not timed_out:
                deadline = time.monotonic() + timeout
            elif f.type in (Msg.STDOUT, Msg.STDERR):
                room = len(f.payload) if limit is None else max(limit - len(kept), 0)
                kept += f.payload[:room]
                truncated = truncated or len(f.payload) > room
            elif f.type == Msg.ERROR:
                error = f.payload.decode(errors="replace")
            elif f.type == Msg.EXIT:
                if error is not None and not timed_out:
                    raise exec_failed(error)
                code = -1 if timed_out else parse_exit(f.payload).exit_code
                return ExecResult(code, bytes(kept), b"", timed_out=timed_out,
                                  truncated=truncated)  # fmt: skip
            elif f.type == Msg.STARTED:
                deadline = time.monotonic() + 10**9  # no timeout: until its EXIT
    raise LaminaError("the container stopped before the exec finished")


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """``path`` as a socket address: unix socket paths are limited to 107 bytes, and a
    root plus a 64-hex ID can be longer, so go through ``/proc/self/fd`` of its dir."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _qemu_pid(vmdir: Path) -> int:
    try:
        return int((vmdir / "qemu.pid").read_text())
    except (OSError, ValueError):
        return 0


def _kill_qemu(vmdir: Path) -> bool:
    """SIGKILL the VM's QEMU (known by its command line: pids are reused); whether
    there was one."""
    pid = _qemu_pid(vmdir)
    if pid:
        try:
            if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, _signal.SIGKILL)
                return True
        except (OSError, ProcessLookupError):
            pass
    return False


def _kill_supervisor(vmdir: Path, pid: int) -> bool:
    """SIGKILL the VM's supervisor (``pid``, or the one its directory names), known by
    its command line (a supervisor that became the exit command is left alone);
    whether there was one."""
    if pid <= 0:
        try:
            pid = int((vmdir / "supervisor.pid").read_text())
        except (OSError, ValueError):
            return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"lamina.vm._backend" not in argv or vmdir.name.encode() not in argv:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, _signal.SIGKILL)
    return True


def _alive(rec: Record) -> bool:
    from lamina.runtime.common import alive

    return alive(rec.monitor_pid, rec.monitor_start)


def _last_line(path: Path) -> str:
    """The last line a supervisor wrote to its log (why it failed)."""
    try:
        tail = path.read_bytes()[-2000:].decode(errors="replace")
    except OSError:
        return "its monitor ended"
    lines = [x for x in tail.splitlines() if x.strip()]
    return lines[-1] if lines else "its monitor ended"


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


# -- the supervisor ----------------------------------------------------------------------


class _LogWriter:
    """Appends output to a k8s-file log: complete lines as F, an unterminated rest as P;
    rotated as ``--log-opt`` says."""

    def __init__(self, path: Path, settings: LogSettings) -> None:
        from lamina.runtime._logs import RotatingLog

        self.f = RotatingLog(path, settings)  # lives as long as the VM

    def write(self, stream: str, data: bytes) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
        head = f"{now} {stream} ".encode()
        lines = data.split(b"\n")
        rest = lines.pop()
        chunks = [head + b"F " + line + b"\n" for line in lines]
        if rest:
            chunks.append(head + b"P " + rest + b"\n")
        self.f.write(chunks)


def _boot(root: Path, vmdir: Path, p: dict[str, Any]) -> Any:
    """Boot (or restore) the VM that ``run.json`` describes: a ``MicroVm``."""
    from lamina.image import LocalImages
    from lamina.vm._config import NetworkAttachment, VmConfig
    from lamina.vm._mounts import shared_dirs, tmpfs_cmdline
    from lamina.vm._run import start_vm

    local = LocalImages.open(root)
    try:
        nat = p.get("network", "none") == "nat"
        links = tuple(NetworkAttachment("netns", netns=p["netns"], link=name)
                      for name in p.get("links") or ())  # fmt: skip
        machine = VmConfig(
            vcpus=p["vcpus"],
            memory_mib=p["memory_mib"],
            networks=(NetworkAttachment("nat"),) if nat else links,
            macs=(p["mac"],) if nat and p.get("mac") else (),
        )
        shares, mount_points = shared_dirs(root, p.get("shares") or [])
        if shares:
            machine = dataclasses.replace(machine, shared_dirs=shares)
        if p.get("tmpfs"):
            machine = dataclasses.replace(machine, cmdline=tmpfs_cmdline(p["tmpfs"]))
        published = [PortMapping(**m) for m in p.get("published") or []]
        kernel, base_disk = None, None
        if p.get("base"):
            from lamina.vm._base import base_kernel, resolve_base

            base = resolve_base(local, p["base"]["path"])
            kernel, base_disk = base_kernel(root, base), base.bundle.disk_path
        vm = start_vm(
            local,
            local.images.get_by_digest(p["image_digest"]),
            machine,
            accel=p.get("accel", "auto"),
            hostname=p["hostname"],
            kernel=kernel,
            base_disk=base_disk,
            forwards=hostfwd_rules(published) if nat else (),
            mount_points=mount_points,
            guest_files=p.get("etc") or {},
        )
    finally:
        local.close()
    if vm.restore_error:  # fell back to a cold boot: say why in supervisor.log
        print(f"not restored from a snapshot: {vm.restore_error}", file=sys.stderr)
    if vm.restored_from:  # inspect's RestoredFrom; the guest kept the template's NIC
        boot = {"restored_from": vm.restored_from, "mac": vm.spec.macs[0] if vm.spec.macs else ""}
        atomic_write(vmdir / "boot.json", json.dumps(boot).encode(), sync=False)
    return vm


def supervise(root: Path, vmdir: Path) -> int:
    """Boot the VM that ``vmdir/run.json`` describes, stay with it until its workload
    exits, write the exit down and run the engine's exit command."""
    try:
        p = json.loads((vmdir / "run.json").read_bytes())
    except (OSError, ValueError) as e:
        print(f"cannot read what to run: {e}", file=sys.stderr)
        return 1
    (vmdir / "boot.json").unlink(missing_ok=True)
    outcome: tuple[int, bool, str] | None = None  # exit code, signaled, error
    try:
        vm = _boot(root, vmdir, p)
    except LaminaError as e:
        print(str(e), file=sys.stderr)
        outcome = (125, False, str(e))
    else:
        try:
            outcome = _serve(vmdir, vm, p)
        finally:
            # The VM has nothing to flush (read-only root, tmpfs overlay): it is killed.
            vm.close()
            (vmdir / "qemu.pid").unlink(missing_ok=True)
    finally:
        # Written last: once it exists, nothing of this run is left but this process.
        code, signaled, err = outcome or (137, True, "the VM's monitor failed")
        exit_status = {"code": code, "signaled": signaled, "error": err,
                       "failed": code == 125 and bool(err)}  # fmt: skip
        atomic_write(vmdir / "exit", json.dumps(exit_status).encode(), sync=False)
    for fd in p.get("port_fds") or ():  # the run's published ports are free again
        with contextlib.suppress(OSError):
            os.close(fd)
    command = p.get("exit_command") or []
    if command:
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            os.execv(command[0], command)  # as conmon runs it, once all is written down
    return 0


def _serve(vmdir: Path, vm: Any, p: dict[str, Any]) -> tuple[int, bool, str]:
    """Run the workload in the booted ``vm``, relay clients of ``ctl.sock``, log its
    output; how it ended."""
    import selectors
    import socket

    from lamina.runtime._logs import log_settings
    from lamina.vm._agent import AgentConnection, Msg, exec_payload, parse_exit

    clients: dict[int, AgentConnection] = {}  # fd -> connection
    sessions: dict[int, tuple[AgentConnection, int]] = {}  # guest session -> client's
    by_client: dict[tuple[int, int], int] = {}
    next_session = WORKLOAD + 1
    error = ""
    outcome: tuple[int, bool, str] | None = None  # exit code, signaled, error
    shutdown = False
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        (vmdir / "qemu.pid").write_text(str(vm.proc.pid))
        size = p.get("console_size")  # the attached terminal's, when run/start -a had one
        vm.conn.send(
            Msg.EXEC,
            WORKLOAD,
            exec_payload(p["argv"], p["env"], cwd=p["cwd"], uid=p["uid"], gid=p["gid"],
                         groups=p["groups"], stdin=bool(p.get("stdin")),
                         tty=bool(p.get("tty")), size=(size[0], size[1]) if size else None),
        )  # fmt: skip
        settings = log_settings(p.get("log_driver") or "k8s-file", p.get("log_options") or {})
        log = _LogWriter(vmdir / "ctr.log", settings)
        tmp = vmdir / "ctl.sock.tmp"
        tmp.unlink(missing_ok=True)
        with _short_path(tmp) as path:
            listener.bind(path)
        listener.listen(16)
        listener.setblocking(False)
        os.rename(tmp, vmdir / "ctl.sock")  # release() waits for this name
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, None)
        sel.register(vm.conn.sock, selectors.EVENT_READ, None)
        while outcome is None:
            sel.select(0.1)
            with contextlib.suppress(BlockingIOError):
                c, _ = listener.accept()
                conn = AgentConnection(c)
                clients[c.fileno()] = conn
                sel.register(c, selectors.EVENT_READ, None)
            for fd, client in builtins.list(clients.items()):
                for f in client.poll(0):
                    if f.type == Msg.SHUTDOWN:
                        shutdown = True
                    elif f.type == Msg.SIGNAL and f.session in (0, WORKLOAD):
                        vm.conn.send(Msg.SIGNAL, WORKLOAD, f.payload)
                    elif f.type == Msg.NETWORK and f.session == 0:  # a disconnect
                        vm.conn.send(Msg.NETWORK, 0, f.payload)
                    elif f.type == Msg.EXEC:
                        s, next_session = next_session, next_session + 1
                        sessions[s] = (client, f.session)
                        by_client[(fd, f.session)] = s
                        vm.conn.send(Msg.EXEC, s, f.payload)
                    elif (fd, f.session) in by_client:
                        vm.conn.send(f.type, by_client[(fd, f.session)], f.payload)
                    elif f.session == WORKLOAD and f.type in (Msg.STDIN, Msg.RESIZE):
                        vm.conn.send(f.type, WORKLOAD, f.payload)  # an attached client
                if client.closed:
                    sel.unregister(client.sock)
                    client.close()
                    del clients[fd]
                    for key in [k for k in by_client if k[0] == fd]:  # fds get reused
                        del by_client[key]
            if shutdown:
                outcome = (137, True, "")
                break
            for f in vm.conn.poll(0):
                if f.session == WORKLOAD:
                    if f.type == Msg.STDOUT:
                        log.write("stdout", f.payload)
                    elif f.type == Msg.STDERR:
                        log.write("stderr", f.payload)
                    elif f.type == Msg.ERROR:
                        error = f.payload.decode(errors="replace")
                        log.write("stderr", f.payload + b"\n")
                    elif f.type == Msg.EXIT:
                        st = parse_exit(f.payload)
                        code = st.exit_code
                        if error:
                            from lamina.runtime.common import error_exit_code

                            code = error_exit_code(error)
                        outcome = (code, st.signaled, error)
                elif f.session == 0 and f.type == Msg.ERROR:
                    outcome = (125, False, "the VM failed to boot: " + f.payload.decode())
                elif f.session in sessions:
                    client, theirs = sessions[f.session]
                    if not client.closed:
                        client.send(f.type, theirs, f.payload)
                    if f.type == Msg.EXIT:
                        del sessions[f.session]
            if outcome is None and vm.conn.closed:
                from lamina.vm import _qemu

                time.sleep(0.05)
                tail = _qemu.console_tail(vm.spec.console_log) or "no console output"
                outcome = (137, True, f"the VM exited: {tail}")
        return outcome
    except Exception as e:
        import traceback

        traceback.print_exc()
        return outcome or (125, False, f"the VM's monitor failed: {e}")
    finally:
        for client in clients.values():
            with contextlib.suppress(OSError, LaminaError):
                client.poll(0)
            client.close()
        listener.close()
        (vmdir / "ctl.sock").unlink(missing_ok=True)


if __name__ == "__main__":  # ROOT ID VMDIR (the ID: for ps, and for _kill_supervisor)
    sys.exit(supervise(Path(sys.argv[1]), Path(sys.argv[3])))
