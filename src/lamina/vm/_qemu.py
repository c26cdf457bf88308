"""QEMU ``microvm`` command lines, and starting and killing the VMM.

``qemu_command(QemuSpec)`` is a pure function: the machine is ``microvm`` with ACPI on
(Debian's cloud kernel finds virtio-mmio devices only through ACPI: it lacks
``VIRTIO_MMIO_CMDLINE_DEVICES``); for a foreign architecture (``QemuSpec.arch``, see
``_arch``: arm64) it is that architecture's emulator and machine (``virt``, whose
virtio-mmio devices are in the device tree), emulated CPU and serial console, with the
same devices. Then: no default devices, no reboot (a guest reset ends QEMU),
the kernel booted directly as a PVH ELF with the generated initramfs, the serial console
in a log file (or on lamina's stdout), the agent's virtio-serial port on an inherited
socket, the image's root filesystem as a read-only virtio-blk disk (``/dev/vda`` in the
guest), a VM base bundle's disk under it (``/dev/vdb``, ``--vm-base``), and virtio-net
devices: QEMU's user-mode NAT (``lamina.net=nat`` tells the agent to configure it; ``-p``
becomes its ``hostfwd`` rules), a host tap device, or a tap lamina opened in a container's
network namespace (``tap_fds``: ``-netdev tap,fd=N``, no vhost-net; ``_tapnet``). Shared
directories (``VirtiofsShare``) are ``vhost-user-fs-device``s on inherited sockets to their
virtiofsd (``_virtiofs``);
vhost-user needs the guest RAM in shared memory, so such a VM's RAM is a memfd
(``share=on``), and ``lamina.fs=`` tells the agent where to mount each tag.

Kernel command line, chosen for boot time under TCG (measured: see docs/BENCHMARKS.md):

- ``tsc_early_khz`` (x86 guests only): the host's TSC rate. Under TCG the guest TSC runs
  at the host's rate, and without it about a quarter of boots hang calibrating against the PIT;
- not ``nolapic_timer``: it would skip the local APIC timer's fixed 100 ms calibration,
  but with the PIT as clock event device under TCG, timers were seen to never fire
  (a ``sleep 0.1`` still asleep seconds later) when two expired together;
- ``cryptomgr.notests``: no crypto self-tests at boot (a quarter of a second under TCG);
- ``mitigations=off`` under TCG only: an emulated CPU does not speculate guest code, so
  the guest's Spectre/Meltdown mitigations protect nothing there and cost boot patching
  and run time. Under KVM they stay on: there the guest runs on the real CPU;
- ``rcupdate.rcu_expedited=1``, ``audit=0``: fewer waits at boot.

Snapshots (``_snapshot``): a template VM also gets a QMP monitor on an inherited socket
(``control_fd``; ``Qmp`` speaks it) through which its state is migrated into a file, and
``migration.store-global-state=off`` so that a state saved from a stopped VM resumes
running when loaded; a restored VM is the same command line plus ``-incoming fd:N`` on
that file (``incoming_fd``). QEMU 7.2 has no ``file:`` migration URI, hence the fds.

``launch`` starts QEMU with only its sockets (and a state file) inherited; ``kill`` ends
it (SIGKILL: the guest's disks are read-only or scratch, there is nothing to flush).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError
from lamina.vm._arch import Arch, get_arch, host_arch
from lamina.vm._config import BlockDevice, NetworkAttachment

# x86's (and arm64's) COMMAND_LINE_SIZE, the terminating NUL included: the kernel cuts
# what is longer.
MAX_CMDLINE = 2048


@dataclass(frozen=True)
class VirtiofsShare:
    """A shared directory: its virtio-fs tag, the connected vhost-user socket to its
    virtiofsd (inherited by QEMU), and where the agent mounts it in the container
    (None: the tag is only attached; the workload may mount it itself)."""

    tag: str
    fd: int
    mount_point: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class QemuSpec:
    kernel: Path
    initrd: Path
    agent_fd: int  # the guest side of the agent socketpair, inherited by QEMU
    console_log: Path | None  # None: the console goes to lamina's stdout
    accel: str = "tcg"  # "kvm" or "tcg"
    vcpus: int = 1
    memory_mib: int = 512
    root_image: Path | None = None  # read-only raw disk with the container's rootfs
    # read-only raw ext4 disk of a VM base bundle, stacked under the image (--vm-base)
    base_image: Path | None = None
    # VmConfig.block_devices: virtio disks after the root (and base) disk, in order
    disks: Sequence[BlockDevice] = ()
    # QEMU hostfwd rules for the first NAT network, e.g. "tcp:127.0.0.1:8080-:80" (-p)
    forwards: Sequence[str] = ()
    append: Sequence[str] = field(default_factory=tuple)  # extra kernel arguments
    networks: Sequence[NetworkAttachment] = ()
    macs: Sequence[str] = ()  # one per network
    tap_fds: Sequence[int] = ()  # one per "netns" network, in order: inherited by QEMU
    quiet: bool = True  # False when someone reads the boot log
    shares: Sequence[VirtiofsShare] = ()  # virtio-fs directories (RAM becomes a shared memfd)
    control_fd: int | None = None  # a QMP monitor's socket (a snapshot template VM)
    incoming_fd: int | None = None  # a saved VM state to restore instead of booting
    arch: str = field(default_factory=host_arch)  # the guest's (Go name): amd64, arm64


@functools.cache
def host_tsc_khz() -> int:
    """The host's TSC frequency in kHz (what the guest TSC runs at under TCG)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text())
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError, IndexError):
        pass
    return 2_000_000  # a guess beats a hung calibration


def qemu_binary(arch: Arch | None = None) -> str:
    """The QEMU system emulator for ``arch`` (default: the host's)."""
    arch = arch or get_arch()
    path = shutil.which(arch.qemu)
    if path is None:
        what = "micro-VMs" if not arch.foreign else f"{arch.platform} micro-VMs"
        raise LaminaError(f"{what} need {arch.qemu} (apt-get install {arch.qemu_package})")
    return path


def qemu_version(binary: str) -> str:
    """``7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)``: the first line of --version, cut."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("QEMU emulator version ").strip() or "unknown"


def kernel_cmdline(spec: QemuSpec) -> list[str]:
    arch = get_arch(spec.arch)
    args = [f"console={arch.console}", "panic=-1", "cryptomgr.notests"]
    if spec.quiet:
        args.append("quiet")
    args += ["rcupdate.rcu_expedited=1", "audit=0"]
    if spec.accel == "tcg":
        if arch.x86:
            args.append(f"tsc_early_khz={host_tsc_khz()}")
        args.append("mitigations=off")
    if spec.root_image is not None:
        args += ["lamina.root=/dev/vda", "lamina.rootfstype=erofs"]
        if spec.base_image is not None:
            args += ["lamina.base=/dev/vdb", "lamina.basefstype=ext4"]
    if spec.networks and spec.networks[0].kind == "nat":
        args.append("lamina.net=nat")
    if spec.shares:
        args.append("lamina.fs=" + ",".join(_fs_entry(s) for s in spec.shares))
    args += list(spec.append)
    return args


def _fs_entry(share: VirtiofsShare) -> str:
    """``TAG[:DEST[:ro]]``, each field percent-encoded (no space, ',' or ':' is left)."""
    fields = [_percent(share.tag)]
    if share.mount_point is not None:
        fields.append(_percent(share.mount_point))
        if share.read_only:
            fields.append("ro")
    return ":".join(fields)


def _percent(value: str) -> str:
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@="
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in value.encode())


def qemu_command(spec: QemuSpec, binary: str | None = None) -> list[str]:
    """The command line; ``binary`` replaces the architecture's emulator's name."""
    arch = get_arch(spec.arch)
    if spec.accel not in ("kvm", "tcg"):
        raise LaminaError(f"unknown accelerator {spec.accel!r}: expected kvm or tcg")
    if spec.accel == "kvm" and arch.foreign:
        raise LaminaError(
            f"KVM cannot run {arch.platform} guests on this {host_arch()} host: use tcg"
        )
    cpu = "host" if spec.accel == "kvm" else arch.tcg_cpu
    if len(spec.macs) != len(spec.networks):
        raise LaminaError(f"{len(spec.networks)} network(s) need as many MACs")
    if len(spec.tap_fds) != sum(n.kind == "netns" for n in spec.networks):
        raise LaminaError("each network namespace attachment needs its tap's fd")
    append = " ".join(kernel_cmdline(spec))
    if len(append.encode()) >= MAX_CMDLINE:
        raise LaminaError(
            f"the guest kernel command line would be {len(append.encode())} bytes, over the "
            f"kernel's limit of {MAX_CMDLINE - 1}: use fewer or shorter mount points"
        )
    if spec.shares and spec.incoming_fd is not None:
        raise LaminaError("a VM with shared directories cannot be restored from a snapshot")
    machine = arch.machine
    if spec.shares:
        machine += ",memory-backend=mem"
    if spec.console_log is None:
        console = "stdio,id=console"
    else:
        console = f"file,id=console,path={_escape(str(spec.console_log))},append=on"
    cmd = [
        binary or arch.qemu,
        "-machine", machine,
        "-accel", spec.accel,
        "-cpu", cpu,
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-chardev", console,
        "-serial", "chardev:console",
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", append,
        "-chardev", f"socket,id=agent,fd={spec.agent_fd}",
        "-device", "virtio-serial-device,max_ports=2",
        "-device", "virtserialport,chardev=agent,name=lamina.agent",
    ]  # fmt: skip
    tap_fds = iter(spec.tap_fds)
    for i, (net, mac) in enumerate(zip(spec.networks, spec.macs, strict=True)):
        if net.kind == "nat":
            netdev = f"user,id=net{i}"
            if i == 0:
                netdev += "".join(f",hostfwd={_escape(rule)}" for rule in spec.forwards)
        elif net.kind == "netns":
            netdev = f"tap,id=net{i},fd={next(tap_fds)}"
        else:
            netdev = f"tap,id=net{i},ifname={_escape(net.tap or '')},script=no,downscript=no"
        cmd += ["-netdev", netdev, "-device", f"virtio-net-device,netdev=net{i},mac={mac}"]
    if spec.root_image is not None:
        image = _escape(str(spec.root_image))
        cmd += [
            "-drive", f"if=none,id=root,file={image},format=raw,readonly=on",
            "-device", "virtio-blk-device,drive=root",
        ]  # fmt: skip
        if spec.base_image is not None:  # after the root: it is /dev/vdb in the guest
            base = _escape(str(spec.base_image))
            cmd += [
                "-drive", f"if=none,id=base,file={base},format=raw,readonly=on",
                "-device", "virtio-blk-device,drive=base",
            ]  # fmt: skip
    for i, disk in enumerate(spec.disks):  # /dev/vdc... (after vda root, vdb base)
        path = _escape(str(disk.path))
        mode = "readonly=on" if disk.read_only else "readonly=off"
        cmd += [
            "-drive", f"if=none,id=disk{i},file={path},format={disk.format},{mode}",
            "-device", f"virtio-blk-device,drive=disk{i}",
        ]  # fmt: skip
    if spec.shares:  # after the disks: they keep their /dev/vdX names
        cmd += [
            "-object", f"memory-backend-memfd,id=mem,size={spec.memory_mib}M,share=on",
            # virtiofsd (libvhost-user) serves only modern virtio, and microvm's
            # virtio-mmio transport is legacy (version 1) unless told otherwise.
            "-global", "virtio-mmio.force-legacy=false",
        ]  # fmt: skip
    for i, share in enumerate(spec.shares):
        cmd += [
            "-chardev", f"socket,id=fs{i},fd={share.fd}",
            "-device", f"vhost-user-fs-device,chardev=fs{i},tag={_escape(share.tag)}",
        ]  # fmt: skip
    if spec.control_fd is not None:
        cmd += [
            "-chardev", f"socket,id=qmp,fd={spec.control_fd}",
            "-mon", "chardev=qmp,mode=control",
            # Else the saved state says "paused" (it is saved from a stopped VM) and a
            # restored VM would wait for a "cont" on a monitor it does not have.
            "-global", "migration.store-global-state=off",
        ]  # fmt: skip
    if spec.incoming_fd is not None:
        cmd += ["-incoming", f"fd:{spec.incoming_fd}"]
    return cmd


def _escape(value: str) -> str:
    return value.replace(",", ",,")  # QEMU's option syntax doubles commas


def launch(spec: QemuSpec) -> subprocess.Popen[bytes]:
    """Start QEMU; its stderr goes to the console log (QEMU's own errors land there)."""
    cmd = qemu_command(spec, qemu_binary(get_arch(spec.arch)))
    fds = (spec.agent_fd, *(s.fd for s in spec.shares), *spec.tap_fds)
    fds += tuple(fd for fd in (spec.control_fd, spec.incoming_fd) if fd is not None)
    if spec.console_log is None:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, pass_fds=fds, start_new_session=True)
    with open(spec.console_log, "ab") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=fds,
            start_new_session=True,  # a ^C to lamina must not kill the VMM behind its back
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def console_tail(log: Path | None, lines: int = 3) -> str:
    """The last lines of a console log, joined on one line, for error messages."""
    if log is None:
        return ""
    try:
        text = log.read_bytes()[-4096:].decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


class Qmp:
    """A QMP client on the host end of a template VM's monitor socket (``control_fd``).
    Every call waits at most ``timeout`` seconds; QEMU's errors raise LaminaError."""

    def __init__(self, sock: socket.socket, timeout: float = 30.0) -> None:
        sock.settimeout(timeout)
        self.sock = sock
        self._buf = b""
        self._reply()  # the greeting
        self.command("qmp_capabilities")

    def command(
        self, name: str, arguments: dict[str, Any] | None = None, fds: Sequence[int] = ()
    ) -> Any:
        """Run ``name``; its "return" value. ``fds`` travel with it (SCM_RIGHTS), as
        ``getfd`` needs."""
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        data = json.dumps(msg).encode() + b"\n"
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.sendall(data)
            reply = self._reply()
        except OSError as e:
            raise LaminaError(f"QEMU's monitor failed during {name}: {e}") from None
        if "error" in reply:
            desc = reply["error"].get("desc", reply["error"])
            raise LaminaError(f"QEMU refused {name}: {desc}")
        return reply.get("return")

    def _reply(self) -> dict[str, Any]:
        """The next message that is not an asynchronous event."""
        while True:
            while b"\n" not in self._buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise OSError("QEMU closed its monitor")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def close(self) -> None:
        self.sock.close()
