"""Run an image's command to completion in a fresh micro-VM: ``run_in_vm``; and
``start_vm``, the boot step on its own (a ``MicroVm``: the VMM and the agent channel),
which the VM runtime backend builds on.

The steps, each cached where it can be (all under ``<root>/vm``):

1. the image's config gives the command, environment, user and working directory with
   Docker's rules, the same functions the process runtime uses;
2. the image's architecture (``_arch``: its config's), then the guest kernel
   (``_kernel``), the agent (``_agent``), the initramfs (``_initramfs``) for it, the
   image's EROFS root disk (``_rootfs``) and the accelerator (``_kvm``: KVM when a probe
   shows it works, else TCG; a foreign architecture, e.g. arm64 on an amd64 host, is
   always emulated: TCG on its own QEMU machine, never a KVM probe);
3. QEMU starts (``_qemu``) with one end of a socketpair as the agent's port; the EXEC is
   queued at once (the agent reads it after its HELLO), stdin follows it;
4. STDOUT/STDERR frames are collected apart until EXIT; the VMM is then killed, as
   nothing in the VM needs flushing (read-only root, tmpfs overlay).

Step 3 is a restore instead of a boot when a snapshot (``_snapshot``) was made for
exactly this machine (``start_vm(snapshot="auto")``, the default): QEMU loads the saved
state of a booted VM whose agent waits for frames, and the agent gets a fresh clock,
hostname and random seed (CONFIGURE) before the caller sees the channel. A snapshot
that fails to restore is never the run's failure: the VM boots cold instead.

The machine comes from a ``VmConfig`` (``config=``; else one from ``vcpus`` and
``memory_mib``, without a network): vCPUs, memory, networks (user-mode NAT; links of a
network namespace, taken over through taps (``_tapnet``) and configured by the agent's
NETWORK frame, sent before anything else; a host tap device gets its virtio-net device but
no guest address yet), extra kernel arguments and the boot log sink are honoured, and
shared directories (a virtiofsd each, ``_virtiofs``; mounted in the container where
``start_vm``'s ``mount_points`` say, else only attached). Extra block devices become
virtio disks after the root (``/dev/vdb`` on, or ``/dev/vdc`` with a base disk); a
custom kernel or initrd is refused with a clear error (``--vm-base`` boots another kernel).

A command that cannot be started (not found, bad working directory) raises a LaminaError
with Docker's exit code (127 or 126); a VM that dies or a timeout raises a LaminaError
with the tail of the console log. ``VmRunResult.timings`` splits the wall time, in
seconds: ``prepare`` (host-side caches and probes), ``vmm_start`` (QEMU process start
until the guest CPU runs), ``kernel_boot`` (until /init), ``init`` (modules, agent port,
root mounts: until HELLO), ``workload`` (HELLO until EXIT) and ``teardown``; ``total`` is
the whole call, and ``boot`` is QEMU's start until HELLO. The split uses the guest's
TSC, which counts from VM start under TCG and KVM alike, read by the agent at /init and
at HELLO; x86 only (an arm64 guest's counter runs at another rate: its boot is one
``boot``). A restored VM has ``restore`` (QEMU's start until the guest runs again: the
state loaded) and ``configure`` (until the agent's HELLO after CONFIGURE) instead of
``vmm_start``, ``kernel_boot`` and ``init``.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lamina.errors import LaminaError
from lamina.image import ImageRecord, LocalImages
from lamina.vm import _qemu
from lamina.vm._agent import (
    AgentConnection,
    Hello,
    Msg,
    build_agent,
    exec_payload,
    parse_exit,
    parse_hello,
)
from lamina.vm._arch import Arch, host_arch, image_arch, require
from lamina.vm._config import VmConfig
from lamina.vm._initramfs import initramfs
from lamina.vm._kernel import GuestKernel, guest_kernel
from lamina.vm._kvm import kvm_usable
from lamina.vm._rootfs import image_rootfs, image_user
from lamina.vm._tapnet import GuestNetwork
from lamina.vm._virtiofs import (
    VirtiofsDaemon,
    close_qemu_ends,
    start_daemons,
    stop_daemons,
)

SESSION = 1


@dataclass
class VmRunResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timings: dict[str, float] = field(default_factory=dict)
    accel: str = "tcg"
    restored_from: str | None = None  # the snapshot the VM was restored from
    restore_error: str | None = None  # why a matching snapshot was not used


def run_in_vm(
    local: LocalImages,
    image_ref: str,
    argv: Sequence[str] | None = None,
    *,
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    vcpus: int = 1,
    memory_mib: int = 512,
    config: VmConfig | None = None,
    accel: str = "auto",
    timeout: float | None = None,
    stdin: bytes | None = None,
    hostname: str | None = None,
    boot_dir: Path | None = None,
    modules_root: Path | None = None,
    snapshot: str | None = "auto",
) -> VmRunResult:
    """Run ``argv`` (default: the image's Cmd, after its Entrypoint) in a new micro-VM
    booted from ``image_ref``'s layers; stdout and stderr are returned apart. A
    ``config`` replaces ``vcpus`` and ``memory_mib``; ``snapshot`` is ``start_vm``'s."""
    from lamina.runtime.common import DEFAULT_PATH, merge_env, process_args

    t0 = time.perf_counter()
    if config is None:
        config = VmConfig(vcpus=vcpus, memory_mib=memory_mib, networks=())
    _check_supported(config)
    if accel not in ("auto", "kvm", "tcg"):
        raise LaminaError(f"unknown accelerator {accel!r}: expected auto, kvm or tcg")
    record = local.require(image_ref)
    img = local.config(record).get("config") or {}
    args = process_args(
        list(entrypoint) if entrypoint is not None else None,
        list(argv) if argv is not None else None,
        img.get("Entrypoint"),
        img.get("Cmd"),
    )
    if workdir and not workdir.startswith("/"):
        raise LaminaError(
            f"the working directory {workdir!r} is invalid: it needs to be an absolute path"
        )
    cwd = posixpath.normpath(posixpath.join("/", workdir or img.get("WorkingDir") or "/"))
    hostname = hostname or os.urandom(6).hex()
    uid, gid, groups, home = image_user(local, record, user or img.get("User"))
    environ = merge_env(merge_env([f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"],
                                  img.get("Env") or []), env)  # fmt: skip
    if not any(e.startswith("HOME=") for e in environ):
        environ.append(f"HOME={home or '/'}")
    payload = exec_payload(
        args, environ, cwd=cwd, uid=uid, gid=gid, groups=groups, stdin=stdin is not None
    )

    vm = start_vm(
        local,
        record,
        config,
        accel=accel,
        hostname=hostname,
        boot_dir=boot_dir,
        modules_root=modules_root,
        snapshot=snapshot,
    )
    try:
        vm.conn.send(Msg.EXEC, SESSION, payload)
        if stdin is not None:
            vm.conn.send_stdin(SESSION, stdin)
        out = _collect(vm.conn, vm.spec, timeout, t0)
        t_exit = time.perf_counter()
    finally:
        vm.close()
    t_end = time.perf_counter()

    timings = {"prepare": vm.t_launch - t0}
    if vm.t_ready is not None and vm.t_resumed is not None:  # restored from a snapshot
        out.t_hello = vm.t_ready
        timings["boot"] = vm.t_ready - vm.t_launch
        timings["restore"] = vm.t_resumed - vm.t_launch
        timings["configure"] = vm.t_ready - vm.t_resumed
    else:
        timings.update(_boot_timings(out.hello, out.t_hello - vm.t_launch, vm.spec.arch))
    timings["workload"] = t_exit - out.t_hello
    timings["teardown"] = t_end - t_exit
    timings["total"] = t_end - t0
    return VmRunResult(
        out.exit_code,
        bytes(out.stdout),
        bytes(out.stderr),
        timings,
        vm.spec.accel,
        vm.restored_from,
        vm.restore_error,
    )


@dataclass
class MicroVm:
    """A started VMM and the host end of its agent channel; ``close()`` kills it."""

    proc: subprocess.Popen[bytes]
    conn: AgentConnection
    spec: _qemu.QemuSpec
    run_dir: Path  # scratch (console log unless the boot log goes elsewhere)
    t_launch: float  # perf_counter() when QEMU was started
    daemons: list[VirtiofsDaemon] = field(default_factory=list)  # one per shared dir
    restored_from: str | None = None  # the snapshot's name, when restored from one
    restore_error: str | None = None  # why a matching snapshot was not used (cold boot)
    t_resumed: float | None = None  # restored: perf_counter() when the guest ran again
    t_ready: float | None = None  # restored: when the configured agent said HELLO

    def close(self) -> None:
        _qemu.kill(self.proc)
        stop_daemons(self.daemons)  # after QEMU: they exit on its disconnect anyway
        self.conn.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> MicroVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class VmPlan:
    """A VM resolved before any VMM starts: its files built (kernel, agent, initramfs,
    root disk), its accelerator chosen. What its runs share; a snapshot is used only
    for a plan that matches it (``_snapshot.machine_key``)."""

    cache: Path  # <root>/vm
    record: ImageRecord
    config: VmConfig
    arch: Arch  # the image's
    kernel: GuestKernel
    agent: Path
    initrd: Path
    rootfs: Path
    base_disk: Path | None
    accel: str  # "kvm" or "tcg"
    forwards: tuple[str, ...]
    mount_points: Mapping[str, str]


def plan_vm(
    local: LocalImages,
    record: ImageRecord,
    config: VmConfig,
    *,
    accel: str = "auto",
    boot_dir: Path | None = None,
    modules_root: Path | None = None,
    kernel: GuestKernel | None = None,
    base_disk: Path | None = None,
    forwards: Sequence[str] = (),
    mount_points: Mapping[str, str] = {},
) -> VmPlan:
    """Check ``config`` and build (or find cached) what booting it needs. ``boot_dir``
    and ``modules_root`` replace where the image architecture's kernel is."""
    _check_supported(config)
    unknown = set(mount_points) - {sd.tag for sd in config.shared_dirs}
    if unknown:
        raise LaminaError(f"no shared directory has the tag {sorted(unknown)[0]!r}")
    if accel not in ("auto", "kvm", "tcg"):
        raise LaminaError(f"unknown accelerator {accel!r}: expected auto, kvm or tcg")
    arch = image_arch(local.config(record))
    if arch.foreign:
        if kernel is not None or base_disk is not None:
            raise LaminaError(
                f"VM base bundles run linux/{host_arch()} images only, not {arch.platform} ones"
            )
        if accel == "kvm":
            raise LaminaError(f"KVM cannot run {arch.platform} guests on this {host_arch()} host")
        require(arch)  # one line naming all that is missing, before building anything
    if kernel is None:
        kernel = guest_kernel(local.root, arch=arch, boot_dir=boot_dir, modules_root=modules_root)
    agent = build_agent(local.root, arch)
    initrd = initramfs(local.root, kernel, agent, busybox=arch.busybox())
    rootfs = image_rootfs(local, record)
    if accel == "auto":
        if arch.foreign:  # emulated whatever KVM can do: no probe
            accel = "tcg"
        else:
            accel = "kvm" if kvm_usable(local.root, kernel, initrd) else "tcg"
    return VmPlan(
        local.root / "vm", record, config, arch, kernel, agent, initrd, rootfs, base_disk,
        accel, tuple(forwards), dict(mount_points),
    )  # fmt: skip


def launch_vm(
    plan: VmPlan,
    *,
    hostname: str,
    macs: Sequence[str] | None = None,
    control_fd: int | None = None,
    incoming_fd: int | None = None,
    guest_files: Mapping[str, str] = {},
) -> MicroVm:
    """Start QEMU for ``plan`` (its virtiofsd first, if any). Returns at once.
    ``macs`` replace the config's (a snapshot's devices); ``control_fd`` and
    ``incoming_fd`` are ``QemuSpec``'s (a snapshot's template, a restore). Links of a
    network namespace are taken over (their MACs replace the config's) and, with
    ``guest_files`` (the container's /etc: ``hostname``, ``hosts``, ``resolv.conf``),
    sent to the agent as the first frame."""
    config = plan.config
    links = [n for n in config.networks if n.kind == "netns"]
    guest_net = None
    if links:
        from lamina.vm._tapnet import take_over

        guest_net = take_over(links[0].netns or "", [n.link or "" for n in links])
    taken = iter(guest_net.nics if guest_net is not None else ())
    macs = [
        next(taken).mac if net.kind == "netns" else mac
        for net, mac in zip(config.networks, config.macs if macs is None else macs, strict=True)
    ]
    (plan.cache / "tmp").mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=plan.cache / "tmp"))
    log = config.boot_log
    console = {"none": run_dir / "console.log", "file": log.path, "stdout": None}[log.kind]
    try:
        daemons = start_daemons(config.shared_dirs, run_dir, console)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        if guest_net is not None:
            guest_net.close()
        raise
    shares = tuple(
        _qemu.VirtiofsShare(d.tag, d.qemu_fd, plan.mount_points.get(d.tag), d.read_only)
        for d in daemons
    )
    host, guest = socket.socketpair()
    spec = _qemu.QemuSpec(
        kernel=plan.kernel.vmlinux,
        initrd=plan.initrd,
        agent_fd=guest.fileno(),
        console_log=console,
        accel=plan.accel,
        vcpus=config.vcpus,
        memory_mib=config.memory_mib,
        root_image=plan.rootfs,
        base_image=plan.base_disk,
        disks=config.block_devices,
        forwards=plan.forwards,
        append=(*config.cmdline, f"lamina.hostname={hostname}"),
        networks=config.networks,
        macs=tuple(macs),
        tap_fds=tuple(n.tap_fd for n in guest_net.nics) if guest_net is not None else (),
        quiet=log.kind == "none",
        shares=shares,
        control_fd=control_fd,
        incoming_fd=incoming_fd,
        arch=plan.arch.name,
    )
    t_launch = time.perf_counter()
    try:
        proc = _qemu.launch(spec)
    except BaseException:
        host.close()
        stop_daemons(daemons)
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        guest.close()
        close_qemu_ends(daemons)  # QEMU holds its own copies
        if guest_net is not None:
            guest_net.close()  # QEMU's copies keep the taps; they die with it
    conn = AgentConnection(host)
    if guest_net is not None or guest_files:  # before any EXEC: frames are read in order
        payload = (guest_net or GuestNetwork()).agent_payload(guest_files)
        conn.send(Msg.NETWORK, 0, payload)
    return MicroVm(proc, conn, spec, run_dir, t_launch, daemons)


def start_vm(
    local: LocalImages,
    record: ImageRecord,
    config: VmConfig,
    *,
    accel: str = "auto",
    hostname: str = "lamina",
    boot_dir: Path | None = None,
    modules_root: Path | None = None,
    kernel: GuestKernel | None = None,
    base_disk: Path | None = None,
    forwards: Sequence[str] = (),
    mount_points: Mapping[str, str] = {},
    snapshot: str | None = "auto",
    guest_files: Mapping[str, str] = {},
) -> MicroVm:
    """Boot a micro-VM on ``record``'s root filesystem. Returns at once: frames sent
    now wait for the agent, whose HELLO comes first on ``conn``.

    ``kernel`` replaces the host's guest kernel (a VM base bundle's, with its modules);
    ``base_disk`` is a bundle's ext4 disk stacked under the image's layers; ``forwards``
    are hostfwd rules for the first NAT network (``_qemu.QemuSpec.forwards``);
    ``mount_points`` maps tags of ``config.shared_dirs`` to absolute container paths
    where the agent mounts them (a shared dir without one is only attached). A VM
    with shared dirs must never be snapshotted: vhost-user devices do not migrate.
    ``guest_files``: the container's ``hostname``, ``hosts`` and ``resolv.conf``
    (``launch_vm``); a VM on a network namespace's links is never restored from a
    snapshot (its NICs are configured at boot).

    ``snapshot``: "auto" restores the newest snapshot made for exactly this machine
    (``_snapshot``) instead of booting, when there is one; a name requires that one
    (LaminaError when it is missing or made for another machine); None or "none"
    always boots. A restore returns once the agent is configured (``restored_from``
    names the snapshot); one that fails boots cold (``restore_error`` says why)."""
    plan = plan_vm(
        local, record, config, accel=accel, boot_dir=boot_dir, modules_root=modules_root,
        kernel=kernel, base_disk=base_disk, forwards=forwards, mount_points=mount_points,
    )  # fmt: skip
    restore_error = None
    if snapshot not in (None, "none"):
        from lamina.vm import _snapshot

        chosen = _snapshot.choose_snapshot(plan, snapshot)
        if chosen is not None:
            try:
                restored = _snapshot.restore(plan, chosen, hostname)
                if guest_files:
                    payload = GuestNetwork().agent_payload(guest_files)
                    restored.conn.send(Msg.NETWORK, 0, payload)
                return restored
            except _snapshot.RestoreFailed as e:
                restore_error = str(e)
    vm = launch_vm(plan, hostname=hostname, guest_files=guest_files)
    vm.restore_error = restore_error
    return vm


def _check_supported(config: VmConfig) -> None:
    unsupported = [
        name
        for name, value in (
            ("a custom kernel (boot one with --vm-base)", config.kernel),
            ("a custom initrd", config.initrd),
            ("an init block", config.init_block),
        )
        if value
    ]
    if unsupported:
        raise LaminaError(f"run_in_vm does not support {', '.join(unsupported)} yet")


@dataclass
class _Outcome:
    hello: Hello | None = None
    t_hello: float = 0.0
    exit_code: int = -1
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)


def _collect(
    conn: AgentConnection, spec: _qemu.QemuSpec, timeout: float | None, t0: float
) -> _Outcome:
    out = _Outcome()
    error: str | None = None
    deadline = None if timeout is None else t0 + timeout
    while True:
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            raise LaminaError(f"the VM command did not finish within {timeout:g} s")
        for f in conn.poll(left):
            if f.type == Msg.HELLO:
                out.hello, out.t_hello = parse_hello(f.payload), time.perf_counter()
            elif f.session == 0 and f.type == Msg.ERROR:
                raise LaminaError(f"the VM failed to boot: {f.payload.decode(errors='replace')}")
            elif f.session != SESSION:
                continue
            elif f.type == Msg.STDOUT:
                out.stdout += f.payload
            elif f.type == Msg.STDERR:
                out.stderr += f.payload
            elif f.type == Msg.ERROR:
                error = f.payload.decode(errors="replace")
            elif f.type == Msg.EXIT:
                if error is not None:
                    from lamina.runtime.common import StartFailed, error_exit_code

                    raise StartFailed(error, exit_code=error_exit_code(error))
                out.exit_code = parse_exit(f.payload).exit_code
                return out
        if conn.closed:
            # QEMU is exiting: give it a moment to flush the console log we quote.
            time.sleep(0.05)
            tail = _qemu.console_tail(spec.console_log) or "no console output"
            raise LaminaError(f"the VM exited before the command finished: {tail}")


def _boot_timings(hello: Hello | None, boot: float, arch: str) -> dict[str, float]:
    """Split launch-to-HELLO (``boot``) with the guest's clocks (an x86 guest's TSC)."""
    if hello is None or arch != "amd64":
        return {"boot": boot}
    khz = _qemu.host_tsc_khz()
    kernel = hello.tsc_init / (khz * 1000.0)
    init = (hello.hello_ns - hello.init_ns) / 1e9
    vmm = boot - hello.tsc_hello / (khz * 1000.0)
    if not 0 <= vmm <= boot:  # a TSC that did not start with the VM: no split
        return {"boot": boot}
    return {"boot": boot, "vmm_start": vmm, "kernel_boot": kernel, "init": init}
