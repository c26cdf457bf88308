"""lamina.vm: containers in micro-VMs, and VM base bundles shared as OCI artifacts.

Public API (modules are private; names are imported on first use, PEP 562, so that
``import lamina.vm`` costs nothing until something is used)::

    VmConfigBuilder().vcpus(2).memory_mib(512).network("nat").build() -> VmConfig
    VmConfig.to_dict() / VmConfig.from_dict(d)   # keeps machine_id and MACs
    VmConfigError(LaminaError, ValueError)       # .field, .problems
    NetworkAttachment, BlockDevice, SharedDir, BootLog, generate_mac()

    build_base(out, source="image:REF" | "debootstrap:SUITE", local=...) -> Bundle
    validate_bundle(dir, deep=False) -> Bundle / read_bundle(dir) -> Bundle
    push_bundle(local, dir, ref, config=..., progress=...) -> manifest digest
    pull_bundle(local, ref, dest, config=..., progress=...) -> Bundle
    Bundle, BundleFile, BundleError, ARTIFACT_TYPE, LAYER_MEDIA_TYPE

    run_in_vm(local, image_ref, argv, ...) -> VmRunResult   # one command in a micro-VM
    start_vm(local, record, config, ...) -> MicroVm         # the boot step alone
        # both restore a matching snapshot instead of booting (snapshot="auto")
    create_snapshot(local, image_ref, name=..., vcpus=1, memory_mib=512, network="nat")
    list_snapshots(root) / load_snapshot(root, name) / remove_snapshot(root, name)
    prune_snapshots(root) -> names removed (the stale and broken ones)
    snapshot_status(snapshot) -> "ready" | "stale: ..." | "broken: ..."; Snapshot
    VmTasks(root, task_root, images=..., report=...)         # the engine's task backend
    guest_kernel(root, arch=...) -> GuestKernel; kvm_usable(root, ...) -> bool
    image_rootfs(local, record) -> Path                     # EROFS disk of an image
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.vm._backend import VmTasks
    from lamina.vm._bundle import (
        ARTIFACT_TYPE,
        LAYER_MEDIA_TYPE,
        Bundle,
        BundleError,
        BundleFile,
        KernelFiles,
        build_base,
        pack_bundle,
        pull_bundle,
        push_bundle,
        read_bundle,
        unpack_bundle,
        validate_bundle,
    )
    from lamina.vm._config import (
        BlockDevice,
        BootLog,
        NetworkAttachment,
        SharedDir,
        VmConfig,
        VmConfigBuilder,
        VmConfigError,
        generate_mac,
    )
    from lamina.vm._kernel import GuestKernel, guest_kernel
    from lamina.vm._kvm import kvm_usable
    from lamina.vm._rootfs import image_rootfs
    from lamina.vm._run import MicroVm, VmRunResult, run_in_vm, start_vm
    from lamina.vm._snapshot import (
        Snapshot,
        create_snapshot,
        list_snapshots,
        load_snapshot,
        prune_snapshots,
        remove_snapshot,
        snapshot_status,
    )

_LAZY: dict[str, str] = {
    "VmTasks": "lamina.vm._backend",
    "GuestKernel": "lamina.vm._kernel",
    "guest_kernel": "lamina.vm._kernel",
    "kvm_usable": "lamina.vm._kvm",
    "image_rootfs": "lamina.vm._rootfs",
    "MicroVm": "lamina.vm._run",
    "VmRunResult": "lamina.vm._run",
    "run_in_vm": "lamina.vm._run",
    "start_vm": "lamina.vm._run",
    "Snapshot": "lamina.vm._snapshot",
    "create_snapshot": "lamina.vm._snapshot",
    "list_snapshots": "lamina.vm._snapshot",
    "load_snapshot": "lamina.vm._snapshot",
    "prune_snapshots": "lamina.vm._snapshot",
    "remove_snapshot": "lamina.vm._snapshot",
    "snapshot_status": "lamina.vm._snapshot",
    "ARTIFACT_TYPE": "lamina.vm._bundle",
    "LAYER_MEDIA_TYPE": "lamina.vm._bundle",
    "BlockDevice": "lamina.vm._config",
    "BootLog": "lamina.vm._config",
    "Bundle": "lamina.vm._bundle",
    "BundleError": "lamina.vm._bundle",
    "BundleFile": "lamina.vm._bundle",
    "KernelFiles": "lamina.vm._bundle",
    "NetworkAttachment": "lamina.vm._config",
    "SharedDir": "lamina.vm._config",
    "VmConfig": "lamina.vm._config",
    "VmConfigBuilder": "lamina.vm._config",
    "VmConfigError": "lamina.vm._config",
    "build_base": "lamina.vm._bundle",
    "generate_mac": "lamina.vm._config",
    "pack_bundle": "lamina.vm._bundle",
    "pull_bundle": "lamina.vm._bundle",
    "push_bundle": "lamina.vm._bundle",
    "read_bundle": "lamina.vm._bundle",
    "unpack_bundle": "lamina.vm._bundle",
    "validate_bundle": "lamina.vm._bundle",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina.vm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ARTIFACT_TYPE",
    "LAYER_MEDIA_TYPE",
    "BlockDevice",
    "BootLog",
    "Bundle",
    "BundleError",
    "BundleFile",
    "GuestKernel",
    "KernelFiles",
    "MicroVm",
    "NetworkAttachment",
    "SharedDir",
    "Snapshot",
    "VmConfig",
    "VmConfigBuilder",
    "VmConfigError",
    "VmRunResult",
    "VmTasks",
    "build_base",
    "create_snapshot",
    "generate_mac",
    "guest_kernel",
    "image_rootfs",
    "kvm_usable",
    "list_snapshots",
    "load_snapshot",
    "pack_bundle",
    "prune_snapshots",
    "pull_bundle",
    "push_bundle",
    "read_bundle",
    "remove_snapshot",
    "run_in_vm",
    "snapshot_status",
    "start_vm",
    "unpack_bundle",
    "validate_bundle",
]
