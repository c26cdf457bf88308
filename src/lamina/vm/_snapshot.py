"""Snapshots of booted micro-VMs: a container starts from a saved state, not a cold boot.

Lifecycle:

- ``create_snapshot`` boots a **template** VM for an image (``_run.launch_vm``, with a
  QMP monitor), waits for the agent's HELLO (booted, root mounted, agent idle, no
  workload yet), stops the VM and migrates its whole state through QMP into a file
  (``migrate fd:``: QEMU 7.2 has no ``file:`` URI). Everything goes into a temporary
  directory renamed to ``<root>/vm/snapshots/<name>/`` when complete: ``state`` (the
  migration stream) and ``snapshot.json`` (what restoring needs, and the match key).
- ``start_vm`` (``_run``) asks ``choose_snapshot`` for one whose key equals its own
  machine's (``machine_key``: image and root disk, architecture, vCPUs, memory,
  accelerator, network kinds, base disk, kernel, initramfs, agent, QEMU binary, kernel
  command line, boot log) and ``restore``s it: the template's QEMU command line (its
  MACs and hostname argument: the devices must be the same) plus ``-incoming fd:N``,
  with this run's hostfwd rules (they are host sockets, not guest state) and a fresh
  agent socketpair.
  The host then sends PING, and once PONG says the guest runs, CONFIGURE (clock,
  hostname, random seed: docs/VM_AGENT.md); the agent's HELLO ends the restore and is
  handed on to the caller.
- A restore that fails raises ``RestoreFailed`` and ``start_vm`` boots cold: a run
  never fails because of a snapshot. A state file whose size or mtime changed since it
  was saved is not even tried; one that QEMU rejects marks the snapshot broken (a
  ``broken`` file with the reason), and "auto" no longer picks it.
- ``list_snapshots``, ``load_snapshot``, ``snapshot_status``, ``remove_snapshot``
  (rename away, then delete: a restore in progress keeps its open state file) and
  ``prune_snapshots`` (the stale and broken ones: a removed image, a new kernel or
  QEMU leave their snapshots stale).

Not snapshotted: VMs with shared directories (vhost-user devices do not migrate) or tap
networks (the clones would share one MAC on one link). With user-mode NAT every VM has
its own, so sharing the template's MAC is harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lamina._fsutil import atomic_write, fsync_dir
from lamina.errors import AlreadyExists, LaminaError, NotFound
from lamina.image import LocalImages
from lamina.vm import _qemu
from lamina.vm._agent import (
    SEED_BYTES,
    Frame,
    Msg,
    agent_path,
    configure_payload,
    parse_hello,
)
from lamina.vm._arch import get_arch
from lamina.vm._config import NetworkAttachment, VmConfig, generate_mac
from lamina.vm._run import MicroVm, VmPlan, launch_vm, plan_vm

FORMAT = 1
STATE = "state"
META = "snapshot.json"
BROKEN = "broken"
TEMPLATE_HOSTNAME = "lamina"
# What `lamina run --isolation vm --network nat IMAGE` gives a container without
# --cpus/--memory (``_backend.vm_shape``): a template made with the defaults must serve
# such containers. One on bridge networks (the default) is never restored: its NICs are
# the taps of its own namespace, configured at boot.
CONTAINER_VCPUS = 1
CONTAINER_MEMORY_MIB = 512
CONTAINER_NETWORK = "nat"
RESTORE_TIMEOUT = 30.0  # seconds until a restored agent answers (TCG on a busy host)
TEMPLATE_TIMEOUT = 180.0  # boot, then save
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class RestoreFailed(LaminaError):
    """A snapshot could not be restored; the caller boots cold instead."""


@dataclass
class Snapshot:
    """A saved VM state and what it was made for (``snapshot.json``)."""

    name: str
    path: Path
    image: str  # the reference it was created from
    image_id: str
    vcpus: int
    memory_mib: int
    accel: str
    networks: list[str]  # kinds
    macs: list[str]  # the template's: a restored VM keeps its devices
    hostname: str  # the template's lamina.hostname= argument
    kernel_version: str
    qemu_version: str
    created: float
    state_size: int
    state_mtime_ns: int
    boot_seconds: float  # the template's cold boot, QEMU start to HELLO
    save_seconds: float
    key: dict[str, Any] = field(default_factory=dict)
    key_digest: str = ""
    broken: str | None = None  # why a restore failed for good
    arch: str = "amd64"  # the guest's (Go name); older snapshots were all amd64

    @property
    def state(self) -> Path:
        return self.path / STATE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def snapshots_dir(root: Path) -> Path:
    return Path(root) / "vm" / "snapshots"


def _file_id(path: Path | str) -> dict[str, Any]:
    """A file as the key sees it: path, size and mtime (a rebuilt file differs)."""
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def machine_key(plan: VmPlan) -> dict[str, Any] | None:
    """What a snapshot must have been made for to restore as ``plan``'s VM; None when
    such a VM is never snapshotted (shared directories, block devices, a tap network)."""
    config = plan.config
    tap = any(n.kind != "nat" for n in config.networks)
    if config.shared_dirs or config.block_devices or tap:
        return None
    quiet = config.boot_log.kind == "none"
    cmdline = _qemu.kernel_cmdline(
        _qemu.QemuSpec(
            kernel=plan.kernel.vmlinux, initrd=plan.initrd, agent_fd=-1, console_log=None,
            accel=plan.accel, root_image=plan.rootfs, base_image=plan.base_disk,
            append=tuple(config.cmdline), networks=config.networks, quiet=quiet,
            arch=plan.arch.name,
        )
    )  # fmt: skip
    return {
        "format": FORMAT,
        "image_id": plan.record.id,
        "rootfs": _file_id(plan.rootfs),
        "arch": plan.arch.name,
        "vcpus": config.vcpus,
        "memory_mib": config.memory_mib,
        "accel": plan.accel,
        "networks": [n.kind for n in config.networks],
        "kernel": {"version": plan.kernel.version, "vmlinux": _file_id(plan.kernel.vmlinux)},
        # Both paths name their content (a hash of it): a rebuilt copy is still a match.
        "initrd": {"path": str(plan.initrd)},
        "agent": {"path": str(plan.agent)},
        "base_disk": None if plan.base_disk is None else _file_id(plan.base_disk),
        "qemu": _file_id(_qemu.qemu_binary(plan.arch)),
        "cmdline": cmdline,
        "boot_log": config.boot_log.kind,
    }


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _differences(want: dict[str, Any], have: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))


# -- the store ---------------------------------------------------------------------


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise LaminaError(
            f"invalid snapshot name {name!r}: use letters, digits, '_', '.' and '-' "
            "(starting with a letter or digit), at most 128 characters"
        )
    return name


def default_name(image_ref: str) -> str:
    """``vmtest/busybox:latest`` -> ``vmtest-busybox-latest``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", image_ref.split("@")[0]).strip("-._")
    return name[:128] or "snapshot"


def _read(path: Path) -> Snapshot | None:
    try:
        d = json.loads((path / META).read_text())
        d.pop("path", None)
        d["broken"] = None
        snap = Snapshot(path=path, **d)
    except (OSError, ValueError, TypeError):
        return None
    try:
        snap.broken = (path / BROKEN).read_text().strip() or "broken"
    except OSError:
        pass
    return snap


def load_snapshot(root: Path, name: str) -> Snapshot:
    check_name(name)
    path = snapshots_dir(root) / name
    snap = _read(path)
    if snap is None:
        if path.is_dir():
            raise LaminaError(f"snapshot {name} is unreadable: remove it (lamina vm snapshot rm)")
        raise NotFound(f"no such snapshot: {name}")
    return snap


def list_snapshots(root: Path) -> list[Snapshot]:
    """Every complete snapshot, oldest first."""
    base = snapshots_dir(root)
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    found = [s for n in names if not n.startswith(".") and (s := _read(base / n)) is not None]
    return sorted(found, key=lambda s: (s.created, s.name))


def remove_snapshot(root: Path, name: str) -> None:
    check_name(name)
    base = snapshots_dir(root)
    path = base / name
    gone = base / f".rm-{name}-{os.urandom(4).hex()}"
    try:
        os.rename(path, gone)
    except FileNotFoundError:
        raise NotFound(f"no such snapshot: {name}") from None
    shutil.rmtree(gone, ignore_errors=True)


def prune_snapshots(root: Path) -> list[str]:
    """Remove every snapshot that is not ready (stale or broken); their names."""
    removed = []
    for snap in list_snapshots(root):
        if snapshot_status(snap) != "ready":
            with contextlib.suppress(NotFound):  # someone else removed it meanwhile
                remove_snapshot(root, snap.name)
                removed.append(snap.name)
    return removed


def snapshot_status(snap: Snapshot) -> str:
    """Either "ready", "broken: WHY" (a restore failed for good), or "stale: WHAT changed"
    (a file it was made with was rebuilt or removed: no VM matches it any more)."""
    if snap.broken:
        return f"broken: {snap.broken}"
    try:
        st = snap.state.stat()
    except OSError:
        return "broken: its state file is missing"
    if (st.st_size, st.st_mtime_ns) != (snap.state_size, snap.state_mtime_ns):
        return "broken: its state file changed since it was saved"
    key = snap.key
    files = {
        "root disk": key.get("rootfs"),
        "kernel": (key.get("kernel") or {}).get("vmlinux"),
        "initramfs": key.get("initrd"),
        "agent": key.get("agent"),
        "base disk": key.get("base_disk"),
        "QEMU": key.get("qemu"),
    }
    changed = []
    for what, recorded in files.items():
        if recorded is None:
            continue
        try:
            now = _file_id(recorded["path"])
        except OSError:
            changed.append(what)
            continue
        if any(now[k] != v for k, v in recorded.items()):
            changed.append(what)
    agent = (key.get("agent") or {}).get("path")
    root = snap.path.parents[2]  # <root>/vm/snapshots/<name>
    with contextlib.suppress(LaminaError):  # an architecture this host cannot run
        if agent and "agent" not in changed and agent != str(agent_path(root, get_arch(snap.arch))):
            changed.append("agent")  # lamina was updated: VMs boot a newer one
    return f"stale: {', '.join(changed)} changed" if changed else "ready"


# -- creating ----------------------------------------------------------------------


def create_snapshot(
    local: LocalImages,
    image_ref: str,
    *,
    name: str | None = None,
    vcpus: int = CONTAINER_VCPUS,
    memory_mib: int = CONTAINER_MEMORY_MIB,
    network: str = CONTAINER_NETWORK,
    accel: str = "auto",
    boot_dir: Path | None = None,
    modules_root: Path | None = None,
    timeout: float = TEMPLATE_TIMEOUT,
) -> Snapshot:
    """Boot ``image_ref`` in a template VM and save its state as snapshot ``name``
    (default: from the reference). Runs of the same machine then restore it."""
    name = check_name(name or default_name(image_ref))
    base = snapshots_dir(local.root)
    if (base / name).exists():
        raise AlreadyExists(f"snapshot {name} already exists (lamina vm snapshot rm {name})")
    if network not in ("nat", "none"):
        raise LaminaError(f"unknown network {network!r} for a snapshot: expected nat or none")
    record = local.require(image_ref)
    nat = network == "nat"
    config = VmConfig(
        vcpus=vcpus,
        memory_mib=memory_mib,
        networks=(NetworkAttachment("nat"),) if nat else (),
        macs=(generate_mac(),) if nat else (),
    )
    plan = plan_vm(local, record, config, accel=accel, boot_dir=boot_dir, modules_root=modules_root)
    key = machine_key(plan)
    assert key is not None  # nat or nothing, no shared directories
    qemu_version = _qemu.qemu_version(_qemu.qemu_binary(plan.arch))
    base.mkdir(parents=True, exist_ok=True)
    _sweep(base)
    tmp = base / f".tmp-{name}-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        boot_seconds, save_seconds = _save_template(plan, tmp / STATE, timeout)
        st = (tmp / STATE).stat()
        snap = Snapshot(
            name=name, path=base / name, image=image_ref, image_id=record.id,
            vcpus=vcpus, memory_mib=memory_mib, accel=plan.accel,
            networks=[n.kind for n in config.networks], macs=list(config.macs),
            hostname=TEMPLATE_HOSTNAME, kernel_version=plan.kernel.version,
            qemu_version=qemu_version, created=time.time(), state_size=st.st_size,
            state_mtime_ns=st.st_mtime_ns, boot_seconds=round(boot_seconds, 3),
            save_seconds=round(save_seconds, 3), key=key, key_digest=key_digest(key),
            arch=plan.arch.name,
        )  # fmt: skip
        meta = snap.to_dict()
        del meta["path"], meta["broken"]
        atomic_write(tmp / META, (json.dumps(meta, indent=2) + "\n").encode())
        try:
            os.rename(tmp, base / name)  # a non-empty directory there: refused
        except OSError:
            raise AlreadyExists(f"snapshot {name} already exists") from None
        fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return snap


def _sweep(base: Path) -> None:
    """Remove what crashed creations and removals left behind (an hour old or more)."""
    for entry in base.iterdir():
        if entry.name.startswith((".tmp-", ".rm-")):
            try:
                if time.time() - entry.stat().st_mtime > 3600:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                pass


def _save_template(plan: VmPlan, state: Path, timeout: float) -> tuple[float, float]:
    """Boot the template, save its state into ``state``: (boot, save) seconds."""
    control, qemu_end = socket.socketpair()
    try:
        vm = launch_vm(plan, hostname=TEMPLATE_HOSTNAME, control_fd=qemu_end.fileno())
    except BaseException:
        control.close()
        raise
    finally:
        qemu_end.close()
    deadline = time.perf_counter() + timeout
    with vm, contextlib.closing(control):
        try:
            _await(vm, Msg.HELLO, deadline, "the template VM")
        except RestoreFailed as e:
            raise LaminaError(str(e)) from None
        t_booted = time.perf_counter()
        qmp = _qemu.Qmp(control, timeout=max(1.0, deadline - t_booted))
        try:
            qmp.command("stop")
            # QEMU's default cap is 32 MiB/s: a file takes what it gets.
            qmp.command("migrate-set-parameters", {"max-bandwidth": 1 << 40})
            with open(state, "wb") as f:
                qmp.command("getfd", {"fdname": "state"}, fds=[f.fileno()])
                qmp.command("migrate", {"uri": "fd:state"})
                while True:
                    info = qmp.command("query-migrate") or {}
                    status = info.get("status")
                    if status == "completed":
                        break
                    if status in ("failed", "cancelled"):
                        why = info.get("error-desc", status)
                        raise LaminaError(f"saving the VM state failed: {why}")
                    if time.perf_counter() > deadline:
                        raise LaminaError(f"saving the VM state took over {timeout:g} s")
                    time.sleep(0.01)
                f.flush()
                os.fsync(f.fileno())
        finally:
            qmp.close()
        return t_booted - vm.t_launch, time.perf_counter() - t_booted


# -- restoring ---------------------------------------------------------------------


def choose_snapshot(plan: VmPlan, wanted: str) -> Snapshot | None:
    """The snapshot ``plan``'s VM restores: for "auto" the newest match that is not
    broken (or None); a name must exist and match, else LaminaError."""
    root = plan.cache.parent
    key = machine_key(plan)
    if wanted == "auto":
        if key is None:
            return None
        digest = key_digest(key)
        found = [s for s in list_snapshots(root) if s.key_digest == digest and not s.broken]
        return found[-1] if found else None
    snap = load_snapshot(root, wanted)
    if key is None:
        raise LaminaError(
            f"snapshot {wanted}: a VM with shared directories or a tap network cannot "
            "start from a snapshot"
        )
    if snap.key_digest != key_digest(key):
        fields = ", ".join(_differences(key, snap.key))
        raise LaminaError(f"snapshot {wanted} was made for another machine (differs in: {fields})")
    return snap


def restore(plan: VmPlan, snap: Snapshot, hostname: str) -> MicroVm:
    """Start ``plan``'s VM from ``snap``; returns once its agent is configured for
    ``hostname`` and alive, with its HELLO put back on the connection."""
    if snap.broken:
        raise RestoreFailed(f"snapshot {snap.name} is broken ({snap.broken})")
    try:
        fd = os.open(snap.state, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise RestoreFailed(f"snapshot {snap.name}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (snap.state_size, snap.state_mtime_ns):
            raise RestoreFailed(f"snapshot {snap.name}: its state file changed since it was saved")
        vm = launch_vm(plan, hostname=snap.hostname, macs=snap.macs, incoming_fd=fd)
    finally:
        os.close(fd)
    deadline = vm.t_launch + RESTORE_TIMEOUT
    try:
        try:
            vm.conn.send(Msg.PING, 0, b"restore")
            _await(vm, Msg.PONG, deadline, f"snapshot {snap.name}")
            vm.t_resumed = time.perf_counter()
            seed = os.urandom(SEED_BYTES)
            vm.conn.send(Msg.CONFIGURE, 0, configure_payload(time.time_ns(), hostname, seed))
            hello = _await(vm, Msg.HELLO, deadline, f"snapshot {snap.name}")
            vm.t_ready = time.perf_counter()
        except RestoreFailed as e:
            if vm.conn.closed and "migration" in str(e):  # QEMU rejected the state
                _mark_broken(snap, str(e))
            raise
    except BaseException:
        vm.close()
        raise
    vm.conn.unread([hello])
    vm.restored_from = snap.name
    return vm


def _mark_broken(snap: Snapshot, why: str) -> None:
    try:
        atomic_write(snap.path / BROKEN, (why + "\n").encode(), sync=False)
    except OSError:
        pass  # a read-only store: every run tries again, and boots cold


def _await(vm: MicroVm, kind: Msg, deadline: float, what: str) -> Frame:
    """The agent's next ``kind`` frame for session 0; RestoreFailed if the VM exits,
    reports an error or is not there by ``deadline``."""
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise RestoreFailed(f"{what}: the agent did not answer in time")
        for f in vm.conn.poll(left):
            if f.session != 0:
                continue
            if f.type == kind:
                if kind == Msg.HELLO:
                    parse_hello(f.payload)  # a malformed one fails here, not later
                return f
            if f.type == Msg.ERROR:
                raise RestoreFailed(f"{what}: {f.payload.decode(errors='replace')}")
        if vm.conn.closed:
            try:
                vm.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.05)  # let QEMU's last words reach the console log
            tail = _qemu.console_tail(vm.spec.console_log) or "no console output"
            raise RestoreFailed(f"{what}: QEMU exited: {tail}")
