"""``lamina version`` and ``lamina info``."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from lamina.cli._output import FORMAT_OPTION, print_json


@click.command()
@FORMAT_OPTION
def version(fmt: str) -> None:
    """Show the lamina version."""
    from lamina import __version__
    from lamina.image import host_platform

    data = {
        "Version": __version__,
        "Python": platform.python_version(),
        "Os": sys.platform,
        "Arch": host_platform().architecture,
    }
    if fmt == "json":
        print_json(data)
    else:
        for k, v in data.items():
            click.echo(f"{k + ':':<10}{v}")


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


def _micro_vm(root: Path) -> dict[str, Any]:
    """Which accelerator micro-VMs get, and why: the cached KVM probe, run now if no
    VM has started yet (it boots the guest kernel once under KVM, a few seconds)."""
    from lamina.errors import LaminaError

    try:
        from lamina.vm._agent import build_agent
        from lamina.vm._arch import get_arch
        from lamina.vm._initramfs import initramfs
        from lamina.vm._kernel import guest_kernel
        from lamina.vm._kvm import probe_result
        from lamina.vm._qemu import qemu_binary

        qemu_binary()
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


@click.command()
@FORMAT_OPTION
def info(fmt: str) -> None:
    """Show system-wide information."""
    from lamina import __version__
    from lamina.image import host_platform, platform_str

    root = click.get_current_context().find_root().obj.root
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
        blobs = list(local.content.list())
        data["Images"] = len(local.images.list())
        data["Blobs"] = {"Count": len(blobs), "Bytes": sum(b.size for b in blobs)}
        data["Snapshots"] = len(local.snapshots.list())
    else:
        data["Images"] = 0
    data["MicroVM"] = _micro_vm(root)
    if fmt == "json":
        print_json(data)
        return
    _echo_tree(data)


def _echo_tree(data: dict[str, Any], indent: str = "") -> None:
    for k, v in data.items():
        if isinstance(v, dict):
            click.echo(f"{indent}{k}:")
            _echo_tree(v, indent + "  ")
        else:
            click.echo(f"{indent}{k}: {v}")
