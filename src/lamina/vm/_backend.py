"""The micro-VM runtime backend: ``VmRuntime``, the Runtime interface over micro-VMs.

Lifecycle and contract:

- ``create`` resolves the image and Docker's process rules (entrypoint and command,
  env, user, working directory) once and stores them in a row of ``<root>/vms/vms.db``
  (its own SQLite database: the process backend's schema is its own business);
- ``start`` launches a **supervisor** (``python -m lamina.vm._backend ROOT ID``, its own
  session) and waits until it listens on ``<root>/vms/<id>/ctl.sock``. The supervisor
  boots the VM (``start_vm``), holds the agent channel, sends the workload's EXEC,
  writes its STDOUT/STDERR into ``<root>/vms/<id>/ctr.log`` in conmon's k8s-file format
  (read back with ``lamina.runtime._conmon``), records the exit status in the row and
  shuts QEMU down. It owns every state change after ``created``.
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
- A supervisor that died is found by ``_reconcile`` (every public call): its row
  becomes ``exited`` with an error and its QEMU is killed. ``create`` holds the
  image first and ``vms/<id>/lock`` until its row is in: a directory without a row
  and a free lock (a killed create or ``rm``) is freed, hold included.

Networking: ``--network nat`` (the default for VMs) is QEMU's user-mode NAT (the guest
is 10.0.2.15/24, the host 10.0.2.2, DNS 10.0.2.3), ``none`` leaves only loopback.
Published ports (``-p``) become QEMU hostfwd rules: ``start`` checks each host port is
free (a free one is chosen for ``-p PORT``) and records the run's mappings in the row
before the supervisor boots with them. ``--vm-base`` (``_base``) is resolved at
``create`` (a registry bundle pulled into the cache, its shape checked); the supervisor
boots its kernel and stacks its disk under the image.

``pause`` stops the whole VM (SIGSTOP to QEMU; stop, kill and rm -f continue it
first; exec is refused meanwhile). ``top``, ``cp``, ``diff`` and ``commit`` run the
initramfs's busybox in the guest (``_guestfs``); they need a running (not paused) VM,
as the writable layer lives in the guest.

Bind mounts (directories only) and volumes, the image's VOLUMEs included, are
virtio-fs shares (``_mounts``: prepared at ``create``; one virtiofsd each while the VM
runs, ``_virtiofs``); ``--rm`` and ``rm -v`` remove the anonymous volumes.

Not supported for VMs yet (a one-line LaminaError): update.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import fcntl
import json
import os
import selectors
import signal as _signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from lamina import _sqlite
from lamina._hooks import stop_point
from lamina.errors import InUse, LaminaError, NotFound
from lamina.runtime._interface import Runtime
from lamina.runtime._logs import LogSettings, RotatingLog, settings_of
from lamina.runtime._term import follow_window_size, raw_terminal, window_size
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
from lamina.vm._agent import (
    STDIN_CHUNK,
    AgentConnection,
    Frame,
    Msg,
    exec_payload,
    parse_exit,
    resize_payload,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    config TEXT NOT NULL,
    process TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    signaled INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    reason TEXT NOT NULL DEFAULT ''
);
"""
WORKLOAD = 1  # the agent session of the container's main process
MIN_MEMORY_MIB = 128
DEFAULT_MEMORY_MIB = 512
_ACTIVE = ("running", "paused")
TOMBSTONE_SECONDS = 60
_UNSUPPORTED = "is not supported for micro-VM containers yet"
# In a VM's directory: the lease id of a ``restart`` that keeps a --rm container.
_RESTARTING = "restarting"


def open_vm_runtime(root: Path, **options: Any) -> VmRuntime:
    """The micro-VM backend over ``root`` (``accel=`` "auto", "kvm" or "tcg")."""
    return VmRuntime(Path(root), **options)


def _config_from_dict(d: dict[str, Any]) -> ContainerConfig:
    d = dict(d)
    d["mounts"] = [Mount(**m) for m in d.get("mounts", [])]
    d["ulimits"] = [Ulimit(**u) for u in d.get("ulimits", [])]
    d["resources"] = Resources(**d.get("resources", {}))
    d["security"] = Security(**d.get("security", {}))
    return ContainerConfig(**d)


def vm_shape(config: ContainerConfig) -> tuple[int, int]:
    """(vCPUs, memory MiB) for the container's resources: --cpus rounded up, --memory
    with a floor of 128 MiB."""
    cpus = config.resources.cpus
    vcpus = max(1, -(-int(cpus * 1000) // 1000)) if cpus else 1
    mem = config.resources.memory
    memory_mib = max(MIN_MEMORY_MIB, mem >> 20) if mem else DEFAULT_MEMORY_MIB
    return vcpus, memory_mib


class VmRuntime(Runtime):
    name = "vm"

    def __init__(
        self,
        root: Path,
        *,
        accel: str = "auto",
        report: Callable[[str], None] | None = None,
        **_ignored: Any,
    ) -> None:
        self.root = Path(root).absolute()
        self.notices: builtins.list[str] = []  # what reconciling found, also told ``report``
        self._report = report
        self.dir = self.root / "vms"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.accel = accel
        self.db = _sqlite.connect(self.dir / "vms.db", SCHEMA)
        self._local: Any = None

    def close(self) -> None:
        self.db.close()
        if self._local is not None:
            self._local.close()
            self._local = None

    @property
    def images(self) -> Any:
        if self._local is None:
            from lamina.image import LocalImages

            self._local = LocalImages.open(self.root)
        return self._local

    # -- rows ------------------------------------------------------------------------
    def _rows(self) -> builtins.list[sqlite3.Row]:
        """Every container's row; tombstones (``removed``: a --rm container that
        ended, kept a minute for ``wait`` and a last ``logs`` read) are left out."""
        self.db.row_factory = sqlite3.Row
        query = "SELECT * FROM vms WHERE status != 'removed' ORDER BY created"
        return builtins.list(self.db.execute(query))

    def _tombstone(self, ref: str) -> sqlite3.Row | None:
        self.db.row_factory = sqlite3.Row
        rows = builtins.list(
            self.db.execute("SELECT * FROM vms WHERE status = 'removed' AND id LIKE ?",
                            (ref.replace("%", "").replace("_", "") + "%",))
        )  # fmt: skip
        return rows[0] if len(rows) == 1 and ref else None

    def _row(self, ref: str) -> sqlite3.Row:
        self._reconcile()
        rows = self._rows()
        for r in rows:
            if r["id"] == ref or r["name"] == ref.lstrip("/"):
                return r
        found = [r for r in rows if ref and r["id"].startswith(ref)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise LaminaError(f"container ID prefix {ref!r} is ambiguous")
        raise NotFound(f"no such container: {ref}")

    def owns(self, ref: str) -> bool:
        """Whether ``ref`` names one of this backend's containers (or its tombstone)."""
        try:
            self._row(ref)
        except NotFound:
            return self._tombstone(ref) is not None
        except LaminaError:
            return True
        return True

    def _update(self, cid: str, **values: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        with _sqlite.transaction(self.db) as db:
            db.execute(f"UPDATE vms SET {cols} WHERE id = ?", (*values.values(), cid))

    def _reconcile(self, *, sweep: bool = False) -> None:
        """Tombstones past their time go; a VM whose supervisor died is exited; a
        directory without a row (a killed create or remove) is freed, scanned for
        only when the counts differ (or ``sweep``)."""
        import shutil

        old = time.time() - TOMBSTONE_SECONDS
        for (cid,) in builtins.list(self.db.execute(
            "SELECT id FROM vms WHERE status = 'removed' AND finished_at < ?", (old,)
        )):  # fmt: skip
            with _sqlite.transaction(self.db) as db:
                db.execute("DELETE FROM vms WHERE id = ?", (cid,))
            shutil.rmtree(self.dir / cid, ignore_errors=True)
            self.images.images.release(_holder(cid))
        for r in self._rows():
            if r["status"] in _ACTIVE and not _supervisor_alive(r["pid"]):
                _kill_qemu(self.dir / r["id"])
                fresh = self.db.execute("SELECT status FROM vms WHERE id = ?", (r["id"],))
                row = fresh.fetchone()
                if row is not None and row[0] in _ACTIVE:
                    self._update(
                        r["id"], status="exited", exit_code=137, signaled=0,
                        error="the VM's monitor died", finished_at=time.time(),
                    )  # fmt: skip
            elif r["status"] == "exited" and (self.dir / r["id"] / _RESTARTING).exists():
                self._remove_if_exited(r["id"])  # its restart was killed between stop and start
        known = {row[0] for row in self.db.execute("SELECT id FROM vms")}
        dirs = [d for d in os.listdir(self.dir) if len(d) == 64]
        if sweep or len(dirs) != len(known):
            for cid in dirs:
                if cid not in known:
                    self._remove_orphan(cid)

    def _remove_orphan(self, cid: str) -> None:
        """``vms/<id>`` without a row: a create or remove killed halfway. Freed once
        nobody holds its lock (a live creator does until its row is in)."""
        import shutil

        from lamina._leases import try_lock

        vmdir = self.dir / cid
        with try_lock(vmdir / "lock") as free:
            if not free:
                return
            if self.db.execute("SELECT 1 FROM vms WHERE id = ?", (cid,)).fetchone():
                return  # its creator finished meanwhile
            _kill_qemu(vmdir)  # its supervisor, if any, ends with it
            self.images.images.release(_holder(cid))
            trash = self.dir / f".rm-{cid}"
            with contextlib.suppress(OSError):
                os.rename(vmdir, trash)
                vmdir = trash
            shutil.rmtree(vmdir, ignore_errors=True)
        line = f"container {cid[:12]}: left over by an interrupted command: removed it"
        self.notices.append(line)
        if self._report is not None:
            self._report(line)

    def keeps(self, cid: str) -> bool:
        found = self.db.execute("SELECT 1 FROM vms WHERE id = ?", (cid,)).fetchone()
        return found is not None or (self.dir / cid).exists()

    def sweep(self, *, foreign: Callable[[str], bool] | None = None) -> builtins.list[str]:
        start = len(self.notices)
        self._reconcile(sweep=True)
        return self.notices[start:]

    def disk_usage(self, ref: str) -> int:
        from lamina.runtime._volumes import disk_usage

        return disk_usage(self.dir / self._row(ref)["id"])

    def _container(self, r: sqlite3.Row) -> Container:
        config = _config_from_dict(json.loads(r["config"]))
        state = ContainerState(
            status=Status(r["status"]),
            pid=r["pid"],
            exit_code=r["exit_code"],
            error=r["error"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
        )
        ports: builtins.list[PortMapping] = []
        if r["status"] in _ACTIVE:
            ports = [PortMapping(**m) for m in json.loads(r["process"]).get("published", [])]
        return Container(
            r["id"], r["name"], config, state, r["created"], "vm", isolation_reason=r["reason"],
            ports=ports,
        )  # fmt: skip

    # -- images ----------------------------------------------------------------------
    def pull(self, reference: str, *, policy: str = "if-not-present") -> str:
        from lamina.registry import RegistryConfig
        from lamina.registry import pull as registry_pull

        record = registry_pull(self.images, reference, policy=policy, config=RegistryConfig.load())
        return str(record.id)

    # -- lifecycle -------------------------------------------------------------------
    def create(self, config: ContainerConfig, *, isolation_reason: str = "") -> Container:
        self._reconcile()
        local = self.images
        record = local.require(config.image)
        # The creator holds the directory's lock until its row is in (a directory
        # without a row and a free lock is a killed create's), and the image from
        # before it reads it: no rmi deletes it between found and held.
        cid, lock = self._new_dir()
        try:
            local.images.hold(_holder(cid), record.digest)
            try:
                try:
                    local.images.get_by_digest(record.digest)  # rmi won the race?
                except NotFound:
                    ref = config.image_ref or config.image
                    raise NotFound(
                        f"image not known locally: {ref} (it was just removed)"
                    ) from None
                stop_point("create:held")
                return self._create_held(cid, config, record, isolation_reason)
            except BaseException:
                import shutil

                local.images.release(_holder(cid))
                shutil.rmtree(self.dir / cid, ignore_errors=True)
                raise
        finally:
            os.close(lock)

    def _new_dir(self) -> tuple[str, int]:
        """A new container ID with ``vms/<id>`` made and its lock held. (Reconciling
        in another process may take a directory not locked yet: then another ID.)"""
        for _ in range(5):
            cid = os.urandom(32).hex()
            lock_path = self.dir / cid / "lock"
            lock_path.parent.mkdir(parents=True)
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                    return cid, fd
            except FileNotFoundError:
                pass
            os.close(fd)
        raise LaminaError("cannot make a container directory: it keeps being removed")

    def _create_held(
        self, cid: str, config: ContainerConfig, record: Any, isolation_reason: str
    ) -> Container:
        from lamina.runtime._spec import DEFAULT_PATH, merge_env, process_args
        from lamina.runtime._state import random_name, validate_name
        from lamina.vm._arch import host_arch, image_arch, require
        from lamina.vm._rootfs import image_user

        local = self.images
        full = local.config(record)
        arch = image_arch(full)
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
        img = full.get("config") or {}
        args = process_args(
            config.entrypoint, config.command, img.get("Entrypoint"), img.get("Cmd")
        )
        if not args:
            raise LaminaError("no command specified")
        names = {r["name"] for r in self._rows()}
        name = validate_name(config.name) if config.name else random_name(names.__contains__)
        if name in names:
            raise LaminaError(f"the container name {name!r} is already in use")
        hostname = config.hostname or cid[:12]
        uid, gid, groups, home = image_user(local, record, config.user or img.get("User"))
        env = merge_env(merge_env([f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"],
                                  img.get("Env") or []), config.env)  # fmt: skip
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={home or '/'}")
        if config.tty and not any(e.startswith("TERM=") for e in env):
            env.append("TERM=xterm")  # as Docker does for -t
        workdir = config.working_dir or img.get("WorkingDir") or "/"
        if not config.stop_signal and img.get("StopSignal"):
            config.stop_signal = img["StopSignal"]
        vcpus, memory_mib = vm_shape(config)
        if config.network not in ("nat", "none"):
            raise LaminaError(f"--network {config.network} is not supported for VM containers")
        if config.ports and config.network != "nat":
            raise LaminaError("publishing ports (-p) needs a network: not --network none")
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
        from lamina.vm._config import generate_mac

        process = {
            "argv": args, "env": env, "cwd": workdir, "uid": uid, "gid": gid,
            "groups": groups, "hostname": hostname, "image_id": record.id,
            "vcpus": vcpus, "memory_mib": memory_mib, "arch": arch.name,
            "accel": "tcg" if arch.foreign else self.accel,
            "network": config.network, "mac": generate_mac(), "base": base,
        }  # fmt: skip
        from lamina.vm._mounts import prepare_mounts, tmpfs_mounts

        # Last: it may create volumes. Bind mounts and volumes become virtio-fs shares.
        process["tmpfs"] = tmpfs_mounts(config)  # checked before any volume is made
        process["shares"] = prepare_mounts(self.root, local, record, config)
        config.isolation = "vm"
        now = time.time()
        with _sqlite.transaction(self.db) as db:
            db.execute(
                "INSERT INTO vms (id, name, config, process, status, created, reason)"
                " VALUES (?, ?, ?, ?, 'created', ?, ?)",
                (cid, name, json.dumps(asdict(config)), json.dumps(process), now,
                 isolation_reason),
            )  # fmt: skip
        return self.get(cid)

    def start(self, ref: str) -> None:
        r = self._row(ref)
        if r["status"] in _ACTIVE:
            return
        cid = r["id"]
        vmdir = self.dir / cid
        for stale in ("ctl.sock", "qemu.pid"):  # the log goes on across restarts
            (vmdir / stale).unlink(missing_ok=True)
        process = json.loads(r["process"])
        config = _config_from_dict(json.loads(r["config"]))
        # This run's host ports: checked free now (a taken one fails in one line before
        # anything boots); "-p PORT" gets a free one. QEMU binds them as it starts.
        process["published"] = [asdict(p) for p in claim_ports(config.ports)]
        process.pop("restored_from", None)
        self._update(cid, status="created", exit_code=None, error="", finished_at=None,
                     process=json.dumps(process))  # fmt: skip
        with open(vmdir / "supervisor.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lamina.vm._backend", str(self.root), cid],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",  # pins no directory of the caller's
                start_new_session=True,  # outlives the CLI and its ^C
            )
        deadline = time.monotonic() + 60
        while not (vmdir / "ctl.sock").exists():
            if proc.poll() is not None:
                tail = (vmdir / "supervisor.log").read_bytes()[-2000:].decode(errors="replace")
                lines = [x for x in tail.splitlines() if x.strip()]
                msg = lines[-1] if lines else f"exit status {proc.returncode}"
                self._update(cid, status="failed", error=msg, finished_at=time.time())
                raise LaminaError(f"the VM of container {cid[:12]} did not start: {msg}")
            if time.monotonic() > deadline:
                proc.kill()
                raise LaminaError(f"the VM of container {cid[:12]} did not start within 60 s")
            time.sleep(0.01)

    def _control(self, cid: str) -> AgentConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _short_path(self.dir / cid / "ctl.sock") as path:
                sock.connect(path)
        except OSError as e:
            sock.close()
            raise LaminaError(f"container {cid[:12]} is not running ({e.strerror})") from None
        return AgentConnection(sock)

    def _tell(self, cid: str, type_: int, session: int = 0, payload: bytes = b"") -> None:
        """One frame for the VM's supervisor: a signal or a shutdown. A paused VM is
        continued first: stopped, it would never see it."""
        row = self.db.execute("SELECT status FROM vms WHERE id = ?", (cid,)).fetchone()
        if row is not None and row[0] == "paused":
            self.unpause(cid)
        conn = self._control(cid)
        try:
            conn.send(type_, session, payload)
            deadline = time.monotonic() + 5
            while conn.pending and time.monotonic() < deadline and not conn.closed:
                conn.poll(0.05)
        finally:
            conn.close()

    def _require_running(self, r: sqlite3.Row, what: str) -> None:
        if r["status"] not in _ACTIVE:
            raise LaminaError(f"cannot {what} container {r['id'][:12]}: it is not running")

    def stop(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        from lamina.runtime._signals import parse_signal, stop_signal

        r = self._row(ref)
        if r["status"] not in _ACTIVE:
            return
        config = _config_from_dict(json.loads(r["config"]))
        signum = parse_signal(signal) if signal else stop_signal(config.stop_signal)
        grace = config.stop_timeout if timeout is None else timeout
        with contextlib.suppress(LaminaError):
            self._tell(r["id"], Msg.SIGNAL, WORKLOAD, signum.to_bytes(4, "big"))
        if self._wait_exit(r["id"], grace):
            return
        with contextlib.suppress(LaminaError):
            self._tell(r["id"], Msg.SHUTDOWN)
        self._wait_exit(r["id"], 10)

    def restart(self, ref: str, *, timeout: int | None = None, signal: str | None = None) -> None:
        from lamina import _leases
        from lamina.runtime._signals import parse_signal

        r = self._row(ref)
        if signal is not None:
            parse_signal(signal)  # a bad one is refused before anything stops
        cid = r["id"]
        if r["status"] not in _ACTIVE:
            self.start(cid)
            return
        # --rm: the supervisor keeps the container while this restart's lease lives
        # (``_restarting``); if this process dies, _reconcile removes it after all.
        with _leases.take(self.root, "restart") as lease:
            mark = self.dir / cid / _RESTARTING
            mark.write_text(lease.id)
            try:
                self.stop(cid, timeout=timeout, signal=signal)
                self.start(cid)
            finally:
                mark.unlink(missing_ok=True)
                self._remove_if_exited(cid)

    def _remove_if_exited(self, cid: str) -> None:
        """Remove a --rm container that has exited and that no restart keeps (its
        supervisor left it to a restart that has ended)."""
        r = self.db.execute("SELECT status, config FROM vms WHERE id = ?", (cid,)).fetchone()
        if r is None or r[0] != "exited" or not json.loads(r[1]).get("auto_remove"):
            return
        if _restarting(self.root, self.dir / cid):
            return
        self._delete(cid, volumes=True)

    def _wait_exit(self, cid: str, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._reconcile()
            row = self.db.execute("SELECT status FROM vms WHERE id = ?", (cid,)).fetchone()
            if row is None or row[0] not in (*_ACTIVE, "created"):
                return True
            if row[0] == "created" and not (self.dir / cid / "supervisor.log").exists():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        from lamina.runtime._signals import parse_signal

        signum = parse_signal(signal)
        r = self._row(ref)
        self._require_running(r, "kill")
        self._tell(r["id"], Msg.SIGNAL, WORKLOAD, signum.to_bytes(4, "big"))

    def pause(self, ref: str) -> None:
        from lamina.vm._guestfs import require_guest, signal_vmm

        r = self._row(ref)
        require_guest(r["status"], r["id"], "pause")
        if not signal_vmm(self.dir / r["id"], _signal.SIGSTOP):
            raise LaminaError(f"cannot pause container {r['id'][:12]}: its VM is not running")
        with _sqlite.transaction(self.db) as db:
            db.execute("UPDATE vms SET status = 'paused' WHERE id = ? AND status = 'running'",
                       (r["id"],))  # fmt: skip

    def unpause(self, ref: str) -> None:
        from lamina.vm._guestfs import signal_vmm

        r = self._row(ref)
        if r["status"] != "paused":
            raise LaminaError(f"container {r['id'][:12]} is not paused")
        signal_vmm(self.dir / r["id"], _signal.SIGCONT)
        with _sqlite.transaction(self.db) as db:
            db.execute("UPDATE vms SET status = 'running' WHERE id = ? AND status = 'paused'",
                       (r["id"],))  # fmt: skip

    def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        r = self._row(ref)
        if r["status"] in _ACTIVE:
            if not force:
                raise InUse(
                    f"cannot remove container {r['id'][:12]}: it is running "
                    "(stop it first or use --force)"
                )
            with contextlib.suppress(LaminaError):
                self._tell(r["id"], Msg.SHUTDOWN)
            if not self._wait_exit(r["id"], 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r["pid"], _signal.SIGKILL)
                _kill_qemu(self.dir / r["id"])
        self._delete(r["id"], volumes=volumes)

    def _delete(self, cid: str, *, volumes: bool) -> None:
        """Drop a container that is not running: row, directory, image hold, and with
        ``volumes`` its anonymous volumes."""
        import shutil

        row = self.db.execute("SELECT process FROM vms WHERE id = ?", (cid,)).fetchone()
        if row is None:
            return
        with _sqlite.transaction(self.db) as db:
            db.execute("DELETE FROM vms WHERE id = ?", (cid,))
        # Killed from here on, the directory without a row (or, past it, the image
        # hold without either) is freed by the next command (or sweep).
        stop_point("remove:dropping")
        shutil.rmtree(self.dir / cid, ignore_errors=True)
        self.images.images.release(_holder(cid))
        if volumes:
            from lamina.vm._mounts import release_volumes

            release_volumes(self.root, json.loads(row[0]).get("shares", []))

    def volume_users(self, volume: str) -> builtins.list[str]:
        """IDs of the VM containers using ``volume`` (``volume rm`` and prune refuse it)."""
        from lamina.vm._mounts import volume_names

        self._reconcile()
        return [
            r["id"]
            for r in self._rows()
            if volume in volume_names(json.loads(r["process"]).get("shares", []))
        ]

    def rename(self, ref: str, new_name: str) -> None:
        from lamina.runtime._state import validate_name

        r = self._row(ref)
        name = validate_name(new_name)
        try:
            self._update(r["id"], name=name)
        except sqlite3.IntegrityError:
            raise LaminaError(f"the container name {name!r} is already in use") from None

    # -- observing -------------------------------------------------------------------
    def get(self, ref: str) -> Container:
        return self._container(self._row(ref))

    def list(self, *, all: bool = False) -> builtins.list[Container]:
        self._reconcile()
        return [self._container(r) for r in self._rows() if all or r["status"] in _ACTIVE]

    def wait(
        self,
        ref: str,
        condition: WaitCondition = WaitCondition.NOT_RUNNING,
        timeout: float | None = None,
    ) -> WaitOutcome:
        from lamina.runtime._signals import signal_name

        try:
            r = self._row(ref)
        except NotFound:
            gone = self._tombstone(ref)
            if gone is None:
                raise
            r = gone
        if condition == WaitCondition.NEXT_EXIT and r["status"] not in _ACTIVE:
            raise LaminaError(f"container {r['id'][:12]} is not running")
        if not self._wait_exit(r["id"], timeout):
            raise LaminaError(f"container {r['id'][:12]} is still running after {timeout} s")
        row = self.db.execute(
            "SELECT exit_code, signaled, error, finished_at, status FROM vms WHERE id = ?",
            (r["id"],),
        ).fetchone()
        if row is None:
            if condition == WaitCondition.REMOVED:
                return WaitOutcome(0, ExitReason.EXITED)
            raise NotFound(f"no such container: {ref}")
        code, signaled, error, finished, status = row
        if condition == WaitCondition.REMOVED:
            while self.db.execute("SELECT 1 FROM vms WHERE id = ?", (r["id"],)).fetchone():
                time.sleep(0.05)
        code = 0 if code is None else code
        if status == "failed" or (error and code in (125, 126, 127)):
            return WaitOutcome(code or 125, ExitReason.RUNTIME_ERROR, None, finished, error)
        if signaled:
            return WaitOutcome(code, ExitReason.SIGNAL, signal_name(code - 128), finished, error)
        return WaitOutcome(code, ExitReason.EXITED, None, finished, error)

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
        from lamina.runtime._logs import read_logs

        r = self._row(ref)
        cid = r["id"]
        streams = frozenset(s for s, on in (("stdout", stdout), ("stderr", stderr)) if on)

        def running() -> bool:
            return not self._wait_exit(cid, 0)

        return read_logs(
            self.dir / cid / "ctr.log",
            follow=follow,
            running=running,
            tail=tail,
            since=since,
            until=until,
            streams=streams,
        )

    def stats(self, ref: str) -> Stats:
        r = self._row(ref)
        process = json.loads(r["process"])
        qemu = _qemu_pid(self.dir / r["id"]) if r["status"] in _ACTIVE else 0
        rss = _rss(qemu) if qemu else 0
        from lamina.runtime._cgroups import host_cpu_ns
        from lamina.vm._guestfs import vmm_cpu_ns

        # The VM as the host sees it: QEMU's memory and CPU time (the CLI makes the
        # CPU % from two samples and the host's CPU time).
        return Stats(
            cpu_usage_ns=vmm_cpu_ns(qemu) if qemu else 0,
            system_cpu_ns=host_cpu_ns(),
            memory_used=rss,
            memory_limit=process["memory_mib"] << 20,
            pids=1 if qemu else 0,
            timestamp=time.time(),
        )

    def top(self, ref: str) -> tuple[builtins.list[str], builtins.list[builtins.list[str]]]:
        from lamina.runtime._ps import TITLES
        from lamina.vm import _guestfs

        r = self._row(ref)
        _guestfs.require_guest(r["status"], r["id"], "list the processes of")
        conn = self._control(r["id"])
        try:
            return list(TITLES), _guestfs.top(conn)
        finally:
            conn.close()

    def inspect(self, ref: str) -> dict[str, object]:
        from lamina.runtime._signals import signal_name, stop_signal
        from lamina.vm._arch import host_arch

        c = self.get(ref)
        r = self._row(c.id)
        process = json.loads(r["process"])
        cfg = c.config
        st = c.state
        return {
            "Id": c.id,
            "Name": "/" + c.name,
            "Created": datetime.fromtimestamp(c.created, UTC).isoformat(),
            "Path": process["argv"][0],
            "Args": process["argv"][1:],
            "State": {
                "Status": str(st.status),
                "Running": st.status in (Status.RUNNING, Status.PAUSED),
                "Paused": st.status == Status.PAUSED,
                "Pid": st.pid,
                "ExitCode": st.exit_code or 0,
                "Error": st.error,
                "StartedAt": _iso(st.started_at),
                "FinishedAt": _iso(st.finished_at),
            },
            "Image": process["image_id"],
            "Config": {
                "Hostname": process["hostname"],
                "Image": cfg.image_ref or cfg.image,
                "Env": process["env"],
                "Cmd": process["argv"],
                "WorkingDir": process["cwd"],
                "Labels": dict(cfg.labels),
                "StopSignal": signal_name(stop_signal(cfg.stop_signal)),
                "Tty": cfg.tty,
                "OpenStdin": cfg.stdin_open,
            },
            "HostConfig": {
                "Memory": cfg.resources.memory or 0,
                "NanoCpus": int((cfg.resources.cpus or 0) * 1e9),
                "AutoRemove": cfg.auto_remove,
                "NetworkMode": cfg.network,
                "PortBindings": _port_map(cfg.ports, requested=True),
                "LogConfig": {"Type": cfg.log_driver, "Config": dict(cfg.log_options)},
            },
            "Mounts": [_mount_info(self.root, share) for share in process.get("shares", [])]
            + [_tmpfs_info(t) for t in process.get("tmpfs", [])],
            "NetworkSettings": _network_settings(cfg.network, process, c.ports),
            "VM": {
                "Architecture": process.get("arch", "amd64"),
                "Emulated": process.get("arch", "amd64") != host_arch(),
                "VCPUs": process["vcpus"],
                "MemoryMiB": process["memory_mib"],
                "Accel": process.get("accel", "auto"),
                "QemuPid": _qemu_pid(self.dir / c.id) if st.status in _ACTIVE else 0,
                "Base": _base_info(process.get("base")),
                "RestoredFrom": process.get("restored_from") or None,
            },
            "LogPath": str(self.dir / c.id / "ctr.log"),
            "Isolation": "vm",
            "IsolationReason": c.isolation_reason,
            "Backend": self.name,
        }

    def pid(self, ref: str) -> int:
        r = self._row(ref)
        return _qemu_pid(self.dir / r["id"]) if r["status"] in _ACTIVE else 0

    def ip_address(self, ref: str) -> str:
        self._row(ref)
        return ""

    # -- exec ------------------------------------------------------------------------
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
        from lamina.runtime._spec import merge_env

        if not argv:
            raise LaminaError("exec needs a command")
        r = self._row(ref)
        self._require_running(r, "exec in")
        if r["status"] == "paused":
            raise LaminaError(f"cannot exec in container {r['id'][:12]}: it is paused; "
                              "unpause it first")  # fmt: skip
        p = json.loads(r["process"])
        uid, gid, groups = p["uid"], p["gid"], p["groups"]
        environ = merge_env(p["env"], env or [])
        if user:
            from lamina.vm._rootfs import image_user

            local = self.images
            try:
                uid, gid, groups, home = image_user(local, local.require(p["image_id"]), user)
            except LaminaError as e:  # Docker: the exec could not start, 126
                from lamina.runtime._conmon import StartFailed

                raise StartFailed(str(e), exit_code=126) from None
            environ = merge_env(environ, [f"HOME={home or '/'}", *(env or [])])
        if workdir and not workdir.startswith("/"):
            raise LaminaError(f"the working directory {workdir!r} must be an absolute path")
        if tty and not any(e.startswith("TERM=") for e in environ):
            environ.append("TERM=xterm")
        interactive = (
            not detach and stdin is not None and getattr(stdin, "name", None) != os.devnull
        )
        tty = tty and not detach  # nobody would read its terminal
        in_fd = _fileno(stdin) if interactive else None
        term = in_fd if tty and in_fd is not None and os.isatty(in_fd) else None
        payload = exec_payload(
            argv, environ, cwd=workdir or p["cwd"], uid=uid, gid=gid, groups=groups,
            stdin=interactive, tty=tty, size=window_size(term) if term is not None else None,
        )  # fmt: skip
        conn = self._control(r["id"])
        try:
            conn.send(Msg.EXEC, WORKLOAD, payload)
            if detach:
                return _started(conn)
            if interactive and in_fd is None:  # a stream without a descriptor: all at once
                assert stdin is not None
                conn.send_stdin(WORKLOAD, stdin.read())
            return _collect_exec(conn, stream, in_fd=in_fd, term=term)
        finally:
            conn.close()

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
        """Output follows the log (which holds every byte from the start, with a TTY the
        terminal's stream as stdout): nothing is lost between ``start`` and the first
        read, which a live relay could not promise as the supervisor only listens once
        the VM is up. Stdin (when the container has ``-i``) and the terminal's size go
        to the supervisor over ``ctl.sock`` as STDIN and RESIZE frames for the
        workload's session; the end of stdin closes the workload's (a terminal: ^D)."""
        from lamina.runtime._logs import LogReader

        r = self._row(ref)
        cid = r["id"]
        config = _config_from_dict(json.loads(r["config"]))
        tty = tty and config.tty
        forward = stdin is not None and config.stdin_open
        in_fd = _fileno(stdin) if forward else None
        term = in_fd if tty and in_fd is not None and os.isatty(in_fd) else None
        if start:
            size = window_size(term) if term is not None else None
            if size and r["status"] not in _ACTIVE:
                # The workload's EXEC carries it: a shell starts with the right size.
                process = json.loads(r["process"])
                process["console_size"] = list(size)
                self._update(cid, process=json.dumps(process))
            self.start(cid)
        conn: AgentConnection | None = None
        if (forward or term is not None) and not self._wait_exit(cid, 0):
            with contextlib.suppress(LaminaError):  # it ended already: the log has it all
                conn = self._control(cid)
        if conn is not None and forward and in_fd is None:
            assert stdin is not None
            conn.send_stdin(WORKLOAD, stdin.read())
        tail = LogReader(self.dir / cid / "ctr.log", pieces=True)
        with contextlib.ExitStack() as stack:
            fwd = None
            if conn is not None:
                stack.callback(conn.close)
                fwd = stack.enter_context(_InputForwarder(conn, WORKLOAD, in_fd, term))
            while True:
                # Polled every 20 ms (not logs -f's backoff): the exit is seen at once.
                done = self._wait_exit(cid, 0)
                for entry in tail.read():
                    out = stderr if entry.stream == "stderr" else stdout
                    out.write(entry.data)
                    out.flush()
                if done:
                    return
                if fwd is not None:
                    fwd.wait(0.02)  # the supervisor sends attached clients nothing
                else:
                    time.sleep(0.02)

    def resize(self, ref: str, height: int, width: int) -> None:
        r = self._row(ref)
        self._require_running(r, "resize")
        if not _config_from_dict(json.loads(r["config"])).tty:
            raise LaminaError(f"container {r['id'][:12]} has no terminal to resize")
        self._tell(r["id"], Msg.RESIZE, WORKLOAD, resize_payload(height, width))

    # -- filesystem ------------------------------------------------------------------
    def stat_path(self, ref: str, path: str) -> PathStat:
        from lamina.vm import _guestfs

        r = self._row(ref)
        _guestfs.require_guest(r["status"], r["id"], "copy files from")
        conn = self._control(r["id"])
        try:
            return _guestfs.stat_path(conn, path)
        finally:
            conn.close()

    def copy_out(self, ref: str, path: str, *, follow_link: bool = False) -> Iterator[bytes]:
        from lamina.vm import _guestfs

        r = self._row(ref)
        _guestfs.require_guest(r["status"], r["id"], "copy files from")
        return _guestfs.copy_out(lambda: self._control(r["id"]), path, follow_link=follow_link)

    def copy_in(self, ref: str, path: str, tar_stream: BinaryIO) -> None:
        from lamina.vm import _guestfs

        r = self._row(ref)
        _guestfs.require_guest(r["status"], r["id"], "copy files into")
        conn = self._control(r["id"])
        try:
            _guestfs.copy_in(conn, path, tar_stream)
        finally:
            conn.close()

    def diff(self, ref: str) -> builtins.list[ChangeEntry]:
        from lamina.vm import _guestfs

        r = self._row(ref)
        _guestfs.require_guest(r["status"], r["id"], "diff")
        mounts = [m.target for m in _config_from_dict(json.loads(r["config"])).mounts]
        conn = self._control(r["id"])
        try:
            return _guestfs.diff(_guestfs.upper_listing(conn), mounts)
        finally:
            conn.close()

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
        from lamina.vm import _guestfs

        r = self._row(ref)
        _guestfs.require_guest(r["status"], r["id"], "commit")
        conn = self._control(r["id"])
        try:
            return _guestfs.commit(
                conn, self.images, image_id=json.loads(r["process"])["image_id"],
                config=_config_from_dict(json.loads(r["config"])), reference=reference,
                changes=changes or [], message=message, author=author, pause=pause,
            )  # fmt: skip
        finally:
            conn.close()

    def update(self, ref: str, resources: Resources) -> None:
        raise LaminaError(f"update {_UNSUPPORTED}")


def claim_ports(ports: builtins.list[PortMapping]) -> builtins.list[PortMapping]:
    """``ports`` with every host port checked free (host port 0: a free one picked),
    as QEMU's hostfwd will bind them (TCP with SO_REUSEADDR, as slirp does)."""
    import errno

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


def _network_settings(
    network: str, process: dict[str, Any], ports: builtins.list[PortMapping]
) -> dict[str, Any]:
    nets: dict[str, Any] = {}
    if network == "nat":  # the addresses QEMU's user-mode NAT gives the guest (agent.c)
        nets["nat"] = {
            "IPAddress": "10.0.2.15", "IPPrefixLen": 24, "Gateway": "10.0.2.2",
            "DNSServers": ["10.0.2.3"], "MacAddress": process.get("mac", ""),
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


def _restarting(root: Path, vmdir: Path) -> bool:
    """Whether a live ``restart`` keeps this --rm container across its stop."""
    from lamina import _leases

    try:
        lease_id = (vmdir / _RESTARTING).read_text().strip()
    except OSError:
        return False
    return _leases.alive(root, lease_id)


def _holder(cid: str) -> str:
    """The image hold of a container (the process backend's naming: IDs are unique)."""
    return "container:" + cid


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


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else "0001-01-01T00:00:00Z"


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
        self, conn: AgentConnection, session: int, in_fd: int | None, term: int | None
    ) -> None:
        self.conn, self.session, self.in_fd, self.term = conn, session, in_fd, term
        self._size: tuple[int, int] | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(conn.sock, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        if in_fd is not None:
            self._sel.register(in_fd, selectors.EVENT_READ)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _InputForwarder:
        if self.term is not None:
            self._stack.enter_context(raw_terminal(self.term))
            self._stack.enter_context(follow_window_size(self.term, self._on_size))
            self._send_size()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _on_size(self, rows: int, cols: int) -> None:
        self._size = (rows, cols)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def _send_size(self) -> None:
        size, self._size = self._size, None
        if size is not None:
            self.conn.send(Msg.RESIZE, self.session, resize_payload(*size))

    def wait(self, timeout: float) -> builtins.list[Frame]:
        """Wait up to ``timeout`` for output or input, forward the input; the frames
        that arrived."""
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
                data = os.read(self.in_fd, STDIN_CHUNK)
                self.conn.send(Msg.STDIN, self.session, data)  # b"": the end
                if not data:
                    self._sel.unregister(self.in_fd)
        return self.conn.poll(0)


def _started(conn: AgentConnection) -> ExecResult:
    """``exec --detach``: wait until the process started (its failure to start is
    raised as for an attached exec); it then runs on in the guest, its output dropped
    by the supervisor once this client is gone, as Docker drops a detached exec's."""
    from lamina.runtime._exec import exec_failed

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not conn.closed:
        for f in conn.poll(1.0):
            if f.type == Msg.STARTED:
                return ExecResult(0, b"", b"")
            if f.type == Msg.ERROR:
                raise exec_failed(f.payload.decode(errors="replace"))
    raise LaminaError("the container stopped before the exec started")


def _collect_exec(
    conn: AgentConnection, stream: bool, *, in_fd: int | None = None, term: int | None = None
) -> ExecResult:
    """Run an exec session to its EXIT: output passed through (``stream``) or collected,
    the caller's stdin and terminal size forwarded (``_InputForwarder``)."""
    out, err = bytearray(), bytearray()
    error: str | None = None
    with _InputForwarder(conn, WORKLOAD, in_fd, term) as fwd:
        while True:
            for f in fwd.wait(1.0):
                if f.type in (Msg.STDOUT, Msg.STDERR):
                    if stream:
                        sink = sys.stdout if f.type == Msg.STDOUT else sys.stderr
                        sink.buffer.write(f.payload)
                        sink.buffer.flush()
                    else:
                        (out if f.type == Msg.STDOUT else err).extend(f.payload)
                elif f.type == Msg.ERROR:
                    error = f.payload.decode(errors="replace")
                elif f.type == Msg.EXIT:
                    if error is not None:
                        from lamina.runtime._exec import exec_failed

                        raise exec_failed(error)
                    return ExecResult(parse_exit(f.payload).exit_code, bytes(out), bytes(err))
            if conn.closed:
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


def _supervisor_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"lamina.vm._backend" in cmdline


def _qemu_pid(vmdir: Path) -> int:
    try:
        return int((vmdir / "qemu.pid").read_text())
    except (OSError, ValueError):
        return 0


def _kill_qemu(vmdir: Path) -> None:
    pid = _qemu_pid(vmdir)
    if pid:
        try:
            if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, _signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


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


def supervise(root: Path, cid: str) -> int:
    """Boot container ``cid``'s VM and stay with it until its workload exits."""
    from lamina.image import LocalImages
    from lamina.vm._config import NetworkAttachment, VmConfig
    from lamina.vm._run import start_vm

    vmdir = root / "vms" / cid
    db = _sqlite.connect(root / "vms" / "vms.db", SCHEMA)
    row = db.execute("SELECT process, config FROM vms WHERE id = ?", (cid,)).fetchone()
    if row is None:
        print(f"no such container: {cid}", file=sys.stderr)
        return 1
    p = json.loads(row[0])

    def record(**values: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        with _sqlite.transaction(db) as tx:
            tx.execute(f"UPDATE vms SET {cols} WHERE id = ?", (*values.values(), cid))

    local = LocalImages.open(root)
    try:
        nat = p.get("network", "none") == "nat"
        machine = VmConfig(
            vcpus=p["vcpus"],
            memory_mib=p["memory_mib"],
            networks=(NetworkAttachment("nat"),) if nat else (),
            macs=(p["mac"],) if nat and p.get("mac") else (),
        )
        from lamina.vm._mounts import shared_dirs, tmpfs_cmdline

        shares, mount_points = shared_dirs(root, p.get("shares", []))
        if shares:
            machine = dataclasses.replace(machine, shared_dirs=shares)
        if p.get("tmpfs"):
            machine = dataclasses.replace(machine, cmdline=tmpfs_cmdline(p["tmpfs"]))
        published = [PortMapping(**m) for m in p.get("published", [])]
        kernel, base_disk = None, None
        if p.get("base"):
            from lamina.vm._base import base_kernel, resolve_base

            base = resolve_base(local, p["base"]["path"])
            kernel, base_disk = base_kernel(root, base), base.bundle.disk_path
        vm = start_vm(
            local,
            local.require(p["image_id"]),
            machine,
            accel=p.get("accel", "auto"),
            hostname=p["hostname"],
            kernel=kernel,
            base_disk=base_disk,
            forwards=hostfwd_rules(published) if nat else (),
            mount_points=mount_points,
        )
        if vm.restore_error:  # fell back to a cold boot: say why in supervisor.log
            print(f"not restored from a snapshot: {vm.restore_error}", file=sys.stderr)
        if vm.restored_from:
            p["restored_from"] = vm.restored_from
            if vm.spec.macs:  # the guest kept the template's NIC
                p["mac"] = vm.spec.macs[0]
            record(process=json.dumps(p))
    except LaminaError as e:
        record(status="failed", error=str(e), exit_code=125, finished_at=time.time())
        print(str(e), file=sys.stderr)
        return 1
    finally:
        local.close()
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
        settings = json.loads(row[1])
        size = p.get("console_size")  # the attached terminal's, when run/start -a had one
        vm.conn.send(
            Msg.EXEC,
            WORKLOAD,
            exec_payload(p["argv"], p["env"], cwd=p["cwd"], uid=p["uid"], gid=p["gid"],
                         groups=p["groups"], stdin=bool(settings.get("stdin_open")),
                         tty=bool(settings.get("tty")), size=(size[0], size[1]) if size else None),
        )  # fmt: skip
        log = _LogWriter(vmdir / "ctr.log", settings_of(_config_from_dict(settings)))
        tmp = vmdir / "ctl.sock.tmp"
        tmp.unlink(missing_ok=True)
        with _short_path(tmp) as path:
            listener.bind(path)
        listener.listen(16)
        listener.setblocking(False)
        record(status="running", pid=os.getpid(), started_at=time.time(), exit_code=None,
               signaled=0, error="", finished_at=None)  # fmt: skip
        os.rename(tmp, vmdir / "ctl.sock")  # start() waits for this name
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
                            from lamina.runtime._conmon import error_exit_code

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
    except Exception as e:
        if outcome is None:
            outcome = (125, False, f"the VM's monitor failed: {e}")
        raise
    finally:
        # Exit status first: waiters see it as soon as the workload is gone; the VM
        # has nothing to flush (read-only root, tmpfs overlay), so it is killed.
        code, signaled, err = outcome or (137, True, "the VM's monitor failed")
        status = "failed" if code == 125 and err else "exited"
        extra: dict[str, Any] = {}
        if json.loads(row[1]).get("auto_remove") and not _restarting(root, vmdir):
            status, extra["name"] = "removed", cid  # frees the name at once
        record(status=status, exit_code=code, signaled=int(signaled), error=err,
               finished_at=time.time(), **extra)  # fmt: skip
        for client in clients.values():
            with contextlib.suppress(OSError, LaminaError):
                client.poll(0)
            client.close()
        listener.close()
        (vmdir / "ctl.sock").unlink(missing_ok=True)
        vm.close()
        (vmdir / "qemu.pid").unlink(missing_ok=True)
        if status == "removed":  # --rm: its anonymous volumes go with it, as Docker's
            from lamina.vm._mounts import release_volumes

            release_volumes(root, p.get("shares", []))
            with contextlib.closing(LocalImages.open(root)) as images:
                images.images.release(_holder(cid))  # and its image is free for rmi
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), sys.argv[2]))
