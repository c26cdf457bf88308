"""Run an image's command to completion in a fresh micro-VM: ``run_in_vm``; and
``start_vm``, the boot step on its own (a ``MicroVm``: the VMM and the agent channel),
which the VM runtime backend builds on.

The steps, each cached where it can be (all under ``<root>/vm``):

1. the image's config gives the command, environment, user and working directory with
   Docker's rules, the same functions the process runtime uses;
2. the guest kernel (``_kernel``), the agent (``_agent``), the initramfs (``_initramfs``),
   the image's EROFS root disk (``_rootfs``) and the accelerator (``_kvm``: KVM when a
   probe shows it works, else TCG);
3. QEMU starts (``_qemu``) with one end of a socketpair as the agent's port; the EXEC is
   queued at once (the agent reads it after its HELLO), stdin follows it;
4. STDOUT/STDERR frames are collected apart until EXIT; the VMM is then killed, as
   nothing in the VM needs flushing (read-only root, tmpfs overlay).

The machine comes from a ``VmConfig`` (``config=``; else one from ``vcpus`` and
``memory_mib``, without a network): vCPUs, memory, networks (user-mode NAT; a tap device
gets its virtio-net device but no guest address yet), extra kernel arguments and the boot
log sink are honoured. Extra block devices, shared directories and a custom kernel or
initrd are refused with a clear error for now.

A command that cannot be started (not found, bad working directory) raises a LaminaError
with Docker's exit code (127 or 126); a VM that dies or a timeout raises a LaminaError
with the tail of the console log. ``VmRunResult.timings`` splits the wall time, in
seconds: ``prepare`` (host-side caches and probes), ``vmm_start`` (QEMU process start
until the guest CPU runs), ``kernel_boot`` (until /init), ``init`` (modules, agent port,
root mounts: until HELLO), ``workload`` (HELLO until EXIT) and ``teardown``; ``total`` is
the whole call. The split uses the guest's TSC, which counts from VM start under TCG
and KVM alike, read by the agent at /init and at HELLO.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
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
from lamina.vm._config import VmConfig
from lamina.vm._initramfs import initramfs
from lamina.vm._kernel import BOOT_DIR, MODULES_ROOT, GuestKernel, guest_kernel
from lamina.vm._kvm import kvm_usable
from lamina.vm._rootfs import image_rootfs, image_user

SESSION = 1


@dataclass
class VmRunResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timings: dict[str, float] = field(default_factory=dict)
    accel: str = "tcg"


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
    boot_dir: Path = BOOT_DIR,
    modules_root: Path = MODULES_ROOT,
) -> VmRunResult:
    """Run ``argv`` (default: the image's Cmd, after its Entrypoint) in a new micro-VM
    booted from ``image_ref``'s layers; stdout and stderr are returned apart. A
    ``config`` replaces ``vcpus`` and ``memory_mib``."""
    from lamina.runtime._spec import DEFAULT_PATH, merge_env, process_args

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

    hello = out.hello
    timings = {"prepare": vm.t_launch - t0}
    timings.update(_boot_timings(hello, out.t_hello - vm.t_launch))
    timings["workload"] = t_exit - out.t_hello
    timings["teardown"] = t_end - t_exit
    timings["total"] = t_end - t0
    return VmRunResult(out.exit_code, bytes(out.stdout), bytes(out.stderr), timings, vm.spec.accel)


@dataclass
class MicroVm:
    """A started VMM and the host end of its agent channel; ``close()`` kills it."""

    proc: subprocess.Popen[bytes]
    conn: AgentConnection
    spec: _qemu.QemuSpec
    run_dir: Path  # scratch (console log unless the boot log goes elsewhere)
    t_launch: float  # perf_counter() when QEMU was started

    def close(self) -> None:
        _qemu.kill(self.proc)
        self.conn.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> MicroVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_vm(
    local: LocalImages,
    record: ImageRecord,
    config: VmConfig,
    *,
    accel: str = "auto",
    hostname: str = "lamina",
    boot_dir: Path = BOOT_DIR,
    modules_root: Path = MODULES_ROOT,
    kernel: GuestKernel | None = None,
    base_disk: Path | None = None,
    forwards: Sequence[str] = (),
) -> MicroVm:
    """Boot a micro-VM on ``record``'s root filesystem. Returns at once: frames sent
    now wait for the agent, whose HELLO comes first on ``conn``.

    ``kernel`` replaces the host's guest kernel (a VM base bundle's, with its modules);
    ``base_disk`` is a bundle's ext4 disk stacked under the image's layers; ``forwards``
    are hostfwd rules for the first NAT network (``_qemu.QemuSpec.forwards``)."""
    _check_supported(config)
    if accel not in ("auto", "kvm", "tcg"):
        raise LaminaError(f"unknown accelerator {accel!r}: expected auto, kvm or tcg")
    cache = local.root / "vm"
    if kernel is None:
        kernel = guest_kernel(local.root, boot_dir=boot_dir, modules_root=modules_root)
    initrd = initramfs(local.root, kernel, build_agent(local.root), busybox=_busybox())
    rootfs = image_rootfs(local, record)
    if accel == "auto":
        accel = "kvm" if kvm_usable(local.root, kernel, initrd) else "tcg"

    (cache / "tmp").mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=cache / "tmp"))
    log = config.boot_log
    console = {"none": run_dir / "console.log", "file": log.path, "stdout": None}[log.kind]
    host, guest = socket.socketpair()
    spec = _qemu.QemuSpec(
        kernel=kernel.vmlinux,
        initrd=initrd,
        agent_fd=guest.fileno(),
        console_log=console,
        accel=accel,
        vcpus=config.vcpus,
        memory_mib=config.memory_mib,
        root_image=rootfs,
        base_image=base_disk,
        forwards=tuple(forwards),
        append=(*config.cmdline, f"lamina.hostname={hostname}"),
        networks=config.networks,
        macs=config.macs,
        quiet=log.kind == "none",
    )
    t_launch = time.perf_counter()
    try:
        proc = _qemu.launch(spec)
    except BaseException:
        host.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        guest.close()
    return MicroVm(proc, AgentConnection(host), spec, run_dir, t_launch)


def _busybox() -> Path | None:
    """The host's static busybox (Debian's busybox-static), put in the initramfs as the
    agent's file tools (EXEC_TOOL, EXEC_HOST: cp, diff, commit, top), when present."""
    path = Path("/bin/busybox")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    # A dynamic busybox would find no libc in the initramfs: its ELF has a PT_INTERP.
    return None if b"/lib64/ld-linux" in head or b"/lib/ld-" in head else path


def _check_supported(config: VmConfig) -> None:
    unsupported = [
        name
        for name, value in (
            ("block devices", config.block_devices),
            ("shared directories", config.shared_dirs),
            ("a custom kernel", config.kernel),
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
                    from lamina.runtime._conmon import StartFailed, error_exit_code

                    raise StartFailed(error, exit_code=error_exit_code(error))
                out.exit_code = parse_exit(f.payload).exit_code
                return out
        if conn.closed:
            # QEMU is exiting: give it a moment to flush the console log we quote.
            time.sleep(0.05)
            tail = _qemu.console_tail(spec.console_log) or "no console output"
            raise LaminaError(f"the VM exited before the command finished: {tail}")


def _boot_timings(hello: Hello | None, boot: float) -> dict[str, float]:
    """Split launch-to-HELLO (``boot``) with the guest's clocks."""
    if hello is None:
        return {"boot": boot}
    khz = _qemu.host_tsc_khz()
    kernel = hello.tsc_init / (khz * 1000.0)
    init = (hello.hello_ns - hello.init_ns) / 1e9
    vmm = boot - hello.tsc_hello / (khz * 1000.0)
    if not 0 <= vmm <= boot:  # a TSC that did not start with the VM: no split
        return {"boot": boot}
    return {"boot": boot, "vmm_start": vmm, "kernel_boot": kernel, "init": init}
