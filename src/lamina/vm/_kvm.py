"""Is KVM usable here? A probe that boots a real guest, cached per host kernel.

``/dev/kvm`` being there and openable is not enough: in a nested VM, KVM guests can
stall in early boot for minutes. So the probe boots the guest kernel and initramfs
under ``-accel kvm`` (no root disk) and waits, at most ``timeout`` seconds, for the
agent's HELLO: a guest that reached its init. A working KVM does that in well under
a second; TCG takes about 1.5 s, so a timeout of 3 s leaves no doubt.

The answer is cached in ``<root>/vm/kvm-probe.json`` with the host's kernel release (and
the guest kernel's version): a new host kernel or guest kernel probes again. A guest
kernel of a foreign architecture (``_arch``) is never probed: KVM cannot run it.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

from lamina._fsutil import atomic_write
from lamina.errors import LaminaError
from lamina.vm import _qemu
from lamina.vm._agent import AgentConnection, Msg
from lamina.vm._arch import get_arch, host_arch
from lamina.vm._kernel import GuestKernel

KVM_DEVICE = Path("/dev/kvm")
PROBE_TIMEOUT = 3.0
_KVM_GET_API_VERSION = 0xAE00


def kvm_device_usable(device: Path = KVM_DEVICE) -> tuple[bool, str]:
    """Whether ``device`` opens read-write and speaks KVM API 12."""
    import fcntl

    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"{device}: {e.strerror}"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as e:
        return False, f"{device}: KVM_GET_API_VERSION: {e.strerror}"
    finally:
        os.close(fd)
    if version != 12:
        return False, f"{device}: KVM API version {version}, expected 12"
    return True, ""


def boot_probe(kernel: GuestKernel, initrd: Path, accel: str, timeout: float) -> tuple[bool, str]:
    """Boot a VM without a root disk; True when its agent says HELLO within ``timeout``."""
    host, guest = socket.socketpair()
    with tempfile.TemporaryDirectory(prefix="lamina-kvm-probe-") as tmp:
        log = Path(tmp) / "console.log"
        spec = _qemu.QemuSpec(
            kernel=kernel.vmlinux,
            initrd=initrd,
            agent_fd=guest.fileno(),
            console_log=log,
            accel=accel,
            memory_mib=256,
            arch=kernel.arch,
        )
        try:
            proc = _qemu.launch(spec)
        finally:
            guest.close()
        conn = AgentConnection(host)
        try:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0 and not conn.closed:
                if any(f.type == Msg.HELLO for f in conn.poll(left)):
                    return True, ""
            tail = _qemu.console_tail(log)
            if conn.closed:
                return False, f"the VM exited during boot: {tail or 'no console output'}"
            return False, f"no guest init within {timeout:g} s"
        finally:
            _qemu.kill(proc)
            conn.close()


def kvm_usable(
    root: Path,
    kernel: GuestKernel,
    initrd: Path,
    *,
    timeout: float = PROBE_TIMEOUT,
    device: Path = KVM_DEVICE,
    refresh: bool = False,
) -> bool:
    """Whether VMs should use KVM; probed once per host kernel and guest kernel."""
    record = probe_result(root, kernel, initrd, timeout=timeout, device=device, refresh=refresh)
    return record["kvm"] is True


def probe_result(
    root: Path,
    kernel: GuestKernel,
    initrd: Path,
    *,
    timeout: float = PROBE_TIMEOUT,
    device: Path = KVM_DEVICE,
    refresh: bool = False,
) -> dict[str, object]:
    """The cached probe record: {"host_kernel", "guest_kernel", "kvm", "reason", "probed_at"}
    (``reason`` says why KVM is not used; `lamina info` can show it)."""
    cache = Path(root) / "vm"
    path = cache / "kvm-probe.json"
    key = {"host_kernel": platform.release(), "guest_kernel": kernel.version}
    arch = get_arch(kernel.arch)
    if arch.foreign:
        why = f"{arch.platform} guests are emulated on this {host_arch()} host"
        return {**key, "kvm": False, "reason": why, "probed_at": time.time()}
    if not refresh:
        try:
            cached = json.loads(path.read_text())
            if isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items()):
                return cached
        except (OSError, ValueError):
            pass
    ok, reason = kvm_device_usable(device)
    if ok:
        try:
            ok, reason = boot_probe(kernel, initrd, "kvm", timeout)
        except LaminaError as e:
            ok, reason = False, str(e)
    record: dict[str, object] = {**key, "kvm": ok, "reason": reason, "probed_at": time.time()}
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(record) + "\n").encode(), sync=False)
    return record
