"""``--vm-base``: a VM base bundle built from a local image, pushed to a real registry,
pulled into a fresh root's cache by ``lamina run`` and booted: its disk under the
image's layers, its kernel running. Also the guest kernel of a bundle whose kernel the
host lacks: a bzImage made bootable and modules taken from the bundle's disk (one more
boot), and one line for every bundle that cannot be used.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from registry_server import RegistryServer, build_image, layer_tar
from runtime_fixtures import lamina_cli

from lamina.errors import LaminaError
from lamina.image import LocalImages, import_rootfs
from lamina.testing import make_busybox_rootfs
from lamina.vm import Bundle, build_base, push_bundle
from lamina.vm._agent import Msg, exec_payload
from lamina.vm._base import VmBase, base_kernel, has_pvh_note, resolve_base
from lamina.vm._config import NetworkAttachment, VmConfig
from lamina.vm._initramfs import BASE_MODULES, NET_MODULES, VIRTIOFS_MODULES, module_order
from lamina.vm._kernel import find_kernel
from lamina.vm._run import start_vm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None
        or not list(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
        or shutil.which("mkfs.ext4") is None
        or shutil.which("debugfs") is None,
        reason="needs qemu-system-x86, linux-image-cloud-amd64 and e2fsprogs",
    ),
]

APP = "example.com/test/app:1"  # one file, no shell: the base gives it busybox
MARKER = "from-the-base-disk\n"


@dataclass(frozen=True)
class KernelOnly:
    """A kernel asset with only a bzImage (``lamina.vm.KernelFiles``)."""

    version: str
    vmlinux: Path | None
    vmlinuz: Path | None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalImages, Bundle]:
    """A bundle (ELF kernel, 1 GiB minimum: above the VM default) from busybox plus
    /marker."""
    base = tmp_path_factory.mktemp("vm-base")
    local = LocalImages.open(base / "build")
    rootfs = make_busybox_rootfs(base / "rootfs")
    (rootfs / "marker").write_text(MARKER)
    import_rootfs(local, rootfs, reference="base:src")
    bundle = build_base(
        base / "bundle", source="image:base:src", local=local, disk_size_gib=1, memory_mib=1024
    )
    return local, bundle


def fresh_root(path: Path) -> Path:
    local = LocalImages.open(path)
    try:
        build_image([layer_tar({"app.txt": b"from-the-app\n"})]).store(local, APP)
    finally:
        local.close()
    return path


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 125, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_run_on_a_pulled_base(
    built: tuple[LocalImages, Bundle],
    registry_factory: Callable[..., RegistryServer],
    tmp_path: Path,
) -> None:
    local, bundle = built
    registry = registry_factory()
    ref = f"{registry.host}/vm/base:1"
    digest = push_bundle(local, bundle.path, ref)
    root = fresh_root(tmp_path / "root")

    r = lamina_cli(root, "run", "--rm", "--isolation", "vm", "--vm-base", ref, APP,
                   "sh", "-c", "cat /marker /app.txt; uname -r; grep MemTotal /proc/meminfo",
                   timeout=180)  # fmt: skip
    assert r.returncode == 0, r.stderr
    # the download shows its progress, as an image pull does
    assert ": downloading " in r.stderr and f"{digest}: pulled to " in r.stderr
    marker, app, kernel, mem = r.stdout.splitlines()
    assert marker + "\n" == MARKER and app == "from-the-app"  # base under the image
    assert kernel == bundle.kernel_version
    assert int(mem.split()[1]) > 900 * 1024  # the 512 MiB default, raised to 1 GiB
    bases = root / "vm" / "bases"
    assert sorted(p.name for p in bases.iterdir()) == ["refs", digest.replace(":", "-")]
    assert (bases / digest.replace(":", "-") / "bundle.json").is_file()
    assert not any(bases.glob(".*"))  # no temp dir left

    # Bad references, each one line; the registry is still up.
    line = one_line(lamina_cli(root, "create", "--isolation", "vm", "--vm-base",
                               f"{registry.host}/vm/base:nope", APP, "true"))  # fmt: skip
    assert "vm/base:nope" in line
    line = one_line(lamina_cli(root, "create", "--isolation", "vm", "--vm-base",
                               str(tmp_path / "no-such-dir"), APP, "true"))  # fmt: skip
    assert "no such bundle directory" in line
    line = one_line(lamina_cli(root, "create", "--isolation", "vm", "--vm-base", ref,
                               "--memory", "512m", APP, "true"))  # fmt: skip
    assert "at least 1024 MiB" in line
    assert "--isolation vm" in one_line(lamina_cli(root, "create", "--vm-base", ref, APP, "true"))

    # A re-run finds the bundle in the cache: the registry is not needed any more.
    registry.stop()
    cid = lamina_cli(root, "create", "--isolation", "vm", "--vm-base", ref, APP, "true")
    assert cid.returncode == 0, cid.stderr
    info = json.loads(lamina_cli(root, "inspect", cid.stdout.strip()).stdout)[0]
    assert info["VM"]["Base"]["Reference"] == ref
    assert info["VM"]["Base"]["Digest"] == digest
    assert info["VM"]["Base"]["KernelVersion"] == bundle.kernel_version
    assert info["VM"]["MemoryMiB"] == 1024
    lamina_cli(root, "rm", "-f", cid.stdout.strip())


def test_bzimage_kernel_with_modules_from_the_disk(
    built: tuple[LocalImages, Bundle], tmp_path: Path
) -> None:
    """A bundle whose kernel the host lacks: nothing in modules_root, so the modules
    come out of the bundle's disk; its bzImage is turned into a PVH ELF once."""
    local, _ = built
    version, vmlinuz = find_kernel()
    host_modules = Path("/lib/modules") / version
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    mods = rootfs / "lib" / "modules" / version
    wanted = (*BASE_MODULES, *NET_MODULES, *VIRTIOFS_MODULES)
    lists = ["modules.dep", "modules.softdep", "modules.builtin"]
    for rel in lists + module_order(host_modules, wanted):
        (mods / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host_modules / rel, mods / rel)
    import_rootfs(local, rootfs, reference="base:modules")
    bundle = build_base(tmp_path / "bundle", source="image:base:modules", local=local,
                        disk_size_gib=1, kernel=KernelOnly(version, None, vmlinuz))  # fmt: skip
    assert bundle.kernel.format == "bzImage"
    root = tmp_path / "root"
    no_modules = tmp_path / "no-modules"
    no_modules.mkdir()
    base = VmBase(str(bundle.path), bundle)

    kernel = base_kernel(root, base, modules_root=no_modules)
    assert kernel.version == version
    assert has_pvh_note(kernel.vmlinux) and kernel.vmlinux != bundle.kernel_path
    assert kernel.modules.is_relative_to(root / "vm" / "bases" / "modules")
    stamp = (kernel.modules / "modules.dep").stat().st_mtime_ns
    again = base_kernel(root, base, modules_root=no_modules)  # cached: no second debugfs
    assert again == kernel and (again.modules / "modules.dep").stat().st_mtime_ns == stamp

    record = local.require("base:modules")
    machine = VmConfig(vcpus=1, memory_mib=256, networks=(NetworkAttachment(),))
    with start_vm(local, record, machine, accel="tcg", kernel=kernel) as vm:
        script = "uname -r; ls /sys/class/net"
        vm.conn.send(Msg.EXEC, 1, exec_payload(["sh", "-c", script], ["PATH=/bin"], cwd="/",
                                               uid=0, gid=0, groups=[]))  # fmt: skip
        out = b""
        while True:
            frames = vm.conn.poll(120)
            assert frames or not vm.conn.closed, "the VM died"
            out += b"".join(f.payload for f in frames if f.type == Msg.STDOUT and f.session == 1)
            if any(f.type == Msg.EXIT and f.session == 1 for f in frames):
                break
    assert out.decode().split() == [version, "eth0", "lo"]  # virtio_net from the disk


def test_unusable_bundles_fail_in_one_line(
    built: tuple[LocalImages, Bundle], tmp_path: Path
) -> None:
    local, bundle = built
    no_modules = tmp_path / "no-modules"
    no_modules.mkdir()
    root = tmp_path / "root"

    # Debian's initrd has modules, but not all the agent needs (no virtio_console).
    base = VmBase(str(bundle.path), bundle)
    with pytest.raises(LaminaError, match=r"virtio_console.*neither in the bundle's initrd\.img"):
        base_kernel(root, base, modules_root=no_modules)

    # Without an initrd there is nowhere else to look.
    bare = tmp_path / "bare"
    subprocess.run(["cp", "-r", "--sparse=always", str(bundle.path), str(bare)], check=True)
    doc = json.loads((bare / "bundle.json").read_text())
    del doc["files"]["initrd"]
    (bare / "bundle.json").write_text(json.dumps(doc))
    (bare / "initrd.img").unlink()
    bare_base = resolve_base(local, str(bare))
    with pytest.raises(LaminaError, match=f"no modules for kernel {bundle.kernel_version}") as e:
        base_kernel(root, bare_base, modules_root=no_modules)
    assert "\n" not in str(e.value)
    assert not list((root / "vm" / "bases" / "modules").iterdir())  # nothing half-written

    # A bundle of another architecture, and a corrupt one.
    doc["architecture"] = "arm64"
    (bare / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(LaminaError, match="kernel"):
        resolve_base(local, str(bare))  # the kernel is amd64: validation says so first
    with pytest.raises(LaminaError, match="neither a bundle directory nor a reference"):
        resolve_base(local, "Not A Ref")
