"""The micro-VM caches a user can see: the cached EROFS disks go with their images
(``rmi``, ``image prune``), and ``lamina info`` says which accelerator VMs get and why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.image import LocalImages, import_rootfs
from lamina.testing import make_busybox_rootfs
from lamina.vm._rootfs import image_rootfs

CLI = [sys.executable, "-m", "lamina.cli.main"]
needs_erofs = pytest.mark.skipif(shutil.which("mkfs.erofs") is None, reason="needs erofs-utils")


def _lamina(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--root", str(root), *args], capture_output=True, text=True, timeout=120
    )


@needs_erofs
def test_removed_images_take_their_vm_disks_along(tmp_path: Path) -> None:
    root = tmp_path / "root"
    local = LocalImages.open(root)
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    import_rootfs(local, rootfs, reference="keep:1")
    (rootfs / "extra").write_text("other image\n")
    import_rootfs(local, rootfs, reference="gone:1")
    kept = image_rootfs(local, local.require("keep:1"))
    gone = image_rootfs(local, local.require("gone:1"))
    cache = kept.parent
    dead = cache / f".{gone.name}.999999999.tmp"  # left by a build that died
    live = cache / f".{kept.name}.{os.getpid()}.tmp"  # a build still running
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    local.close()

    r = _lamina(root, "rmi", "gone:1")
    assert r.returncode == 0, r.stderr
    assert kept.is_file() and live.is_file()
    assert not gone.exists() and not dead.exists()

    r = _lamina(root, "image", "prune", "-a", "-f")
    assert r.returncode == 0, r.stderr
    assert not kept.exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None
    or not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")),
    reason="needs qemu-system-x86 and linux-image-cloud-amd64",
)
def test_info_says_which_accelerator_and_why(tmp_path: Path) -> None:
    r = _lamina(tmp_path / "root", "info", "--format", "json")
    assert r.returncode == 0, r.stderr
    vm = json.loads(r.stdout)["MicroVM"]
    assert vm["Available"] is True and vm["GuestKernel"]
    assert vm["Accelerator"] in ("kvm", "tcg")
    if vm["Accelerator"] == "tcg":  # this machine: nested KVM that does not boot a guest
        assert vm["Reason"].startswith("KVM is not usable: ")
    # cached: the second call does not probe again, and says the same
    probe = tmp_path / "root" / "vm" / "kvm-probe.json"
    stamp = probe.stat().st_mtime_ns
    again = json.loads(_lamina(tmp_path / "root", "info", "--format", "json").stdout)
    assert again["MicroVM"] == vm and probe.stat().st_mtime_ns == stamp
    text = _lamina(tmp_path / "root", "info").stdout
    assert f"Accelerator: {vm['Accelerator']}" in text
    # foreign architectures: ready, or what they lack, named
    assert set(vm["Emulated"]) == {"linux/arm64"}
    r = subprocess.run(
        [*CLI, "--root", str(tmp_path / "root"), "info", "--format", "json"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "LAMINA_GUEST_DIR": str(tmp_path / "none")},
    )  # fmt: skip
    lacking = json.loads(r.stdout)["MicroVM"]["Emulated"]["linux/arm64"]
    assert "arm64 guest kernel" in lacking and "scripts/guest-kernel arm64" in lacking


@pytest.mark.slow
@pytest.mark.timeout(180)
@needs_erofs
@pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None
    or not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")),
    reason="needs qemu-system-x86 and linux-image-cloud-amd64",
)
def test_rmi_drops_the_snapshots_of_the_image(tmp_path: Path) -> None:
    root = tmp_path / "root"
    local = LocalImages.open(root)
    import_rootfs(local, make_busybox_rootfs(tmp_path / "rootfs"), reference="snap:1")
    local.close()
    r = _lamina(root, "vm", "snapshot", "create", "snap:1", "--name", "warm")
    assert r.returncode == 0, r.stderr
    assert _lamina(root, "vm", "snapshot", "ls", "-q").stdout.split() == ["warm"]
    assert _lamina(root, "rmi", "snap:1").returncode == 0
    assert _lamina(root, "vm", "snapshot", "ls", "-q").stdout.split() == []
