"""What ``version`` and ``info`` report, for every front end (the CLI prints it, the
daemon serves it): Docker's fields where lamina has them (``Server.Version``,
``NCPU``, ...) and lamina's own (runtimes, the micro-VM accelerator)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any


def version_info(context: str = "default") -> dict[str, Any]:
    """Docker's shape: the client, and the engine it talks to."""
    from lamina import __version__
    from lamina.image import host_platform

    arch = host_platform().architecture
    details = {
        "Os": sys.platform,
        "Arch": arch,
        "KernelVersion": platform.release(),
        "PythonVersion": platform.python_version(),
    }
    return {
        "Client": {
            "Version": __version__,
            "PythonVersion": platform.python_version(),
            "Os": sys.platform,
            "Arch": arch,
            "Context": context,
        },
        "Server": {
            "Platform": {"Name": "lamina"},
            "Version": __version__,
            "Os": sys.platform,
            "Arch": arch,
            "KernelVersion": platform.release(),
            "Components": [{"Name": "Engine", "Version": __version__, "Details": details}],
        },
    }


def system_info(root: Path, oci_runtime: str, *, probe_vm: bool = True) -> dict[str, Any]:
    """``info``'s data. ``probe_vm``: find out which accelerator micro-VMs get, booting
    the guest kernel once when no VM has started yet (seconds); without it, what the
    cached probe says."""
    from lamina import __version__
    from lamina.image import host_platform, platform_str

    data: dict[str, Any] = {
        "Version": __version__,
        "Root": str(root),
        "Platform": platform_str(host_platform()),
        "Kernel": platform.release(),
        "CgroupVersion": _cgroup_mode(),
        "Runtimes": _runtimes(),
        "Monitor": shutil.which("conmon"),
    }
    if (root / "images.db").exists():
        from lamina.image import LocalImages

        local = LocalImages.open(root)
        try:
            blobs = list(local.content.list())
            data["Images"] = len(local.images.list())
            data["Blobs"] = {"Count": len(blobs), "Bytes": sum(b.size for b in blobs)}
            data["Snapshots"] = len(local.snapshots.list())
        finally:
            local.close()
    else:
        data["Images"] = 0
    data["MicroVM"] = _micro_vm(root, probe=probe_vm)
    data.update(
        _container_counts(root),
        ServerVersion=__version__,
        DockerRootDir=str(root),
        KernelVersion=platform.release(),
        OperatingSystem=_os_name(),
        OSType=platform.system().lower(),
        Architecture=platform.machine(),
        NCPU=os.cpu_count() or 1,
        MemTotal=_mem_total(),
        Name=platform.node(),
        Driver="overlay",
        CgroupDriver="cgroupfs",
        DefaultRuntime=oci_runtime,
    )
    return data


def _cgroup_mode() -> str:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "hybrid"
    return "v1"


def _runtimes() -> dict[str, str]:
    """Each known OCI runtime: its path, or why lamina cannot use it here."""
    from lamina.errors import LaminaError
    from lamina.runtime._conmon import find_oci_runtime

    out = {}
    for name in ("runc", "crun"):
        try:
            out[name] = find_oci_runtime(name)
        except LaminaError as e:
            out[name] = f"unusable: {e}"
    return out


def _micro_vm(root: Path, *, probe: bool) -> dict[str, Any]:
    """Which accelerator micro-VMs get, and why: the cached KVM probe, run now if no
    VM has started yet and ``probe`` (it boots the guest kernel once under KVM)."""
    from lamina.errors import LaminaError

    try:
        from lamina.vm._agent import build_agent
        from lamina.vm._arch import get_arch
        from lamina.vm._initramfs import initramfs
        from lamina.vm._kernel import guest_kernel
        from lamina.vm._kvm import probe_result
        from lamina.vm._qemu import qemu_binary

        qemu_binary()
        if not probe:
            return {"Available": True, "Accelerator": "unknown until a VM starts"}
        kernel = guest_kernel(root)
        # The initramfs VMs boot (plan_vm's): built once, whoever needs it first.
        initrd = initramfs(root, kernel, build_agent(root), busybox=get_arch().busybox())
        record = probe_result(root, kernel, initrd)
    except LaminaError as e:
        return {"Available": False, "Reason": str(e)}
    out: dict[str, Any] = {"Available": True, "Accelerator": "kvm"}
    if record["kvm"] is not True:
        out.update(Accelerator="tcg", Reason=f"KVM is not usable: {record['reason']}")
    out["GuestKernel"] = kernel.version
    out["Emulated"] = _foreign_arches()
    return out


def _foreign_arches() -> dict[str, str]:
    """Each foreign architecture micro-VMs emulate: "ready", or what it lacks."""
    from lamina.vm._arch import ARCHES, host_arch, missing

    return {
        f"linux/{name}": "; ".join(missing(arch)) or "ready"
        for name, arch in ARCHES.items()
        if name != host_arch()
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition("=")
                if key == "PRETTY_NAME":
                    return value.strip('"')
    except OSError:
        pass
    return platform.system()


def _mem_total() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _container_counts(root: Path) -> dict[str, int]:
    """Docker's container counts; a root without containers has no database to open."""
    counts = {"Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0,
              "ContainersStopped": 0}  # fmt: skip
    if not (root / "containers.db").exists():
        return counts
    from lamina.engine import open_engine

    with open_engine(root, oci_runtime=None) as engine:
        containers = engine.list(all=True)
    for c in containers:
        status = str(c.state.status)
        counts["Containers"] += 1
        if status == "running":
            counts["ContainersRunning"] += 1
        elif status == "paused":
            counts["ContainersPaused"] += 1
        else:
            counts["ContainersStopped"] += 1
    return counts
