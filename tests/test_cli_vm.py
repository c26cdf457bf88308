"""``lamina vm run``: one command of an image in a micro-VM, through the real CLI
(QEMU microvm under TCG here, Debian's cloud kernel)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.image import LocalImages, import_rootfs
from lamina.testing import make_busybox_rootfs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None
        or not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")),
        reason="needs qemu-system-x86 and linux-image-cloud-amd64",
    ),
]
CLI = [sys.executable, "-m", "lamina.cli.main"]


def test_vm_run_exit_code_streams_and_guest_kernel(tmp_path: Path) -> None:
    root = tmp_path / "root"
    local = LocalImages.open(root)
    import_rootfs(local, make_busybox_rootfs(tmp_path / "rootfs"), reference="bb:1")
    local.close()
    r = subprocess.run(
        [
            *CLI,
            "--root",
            str(root),
            "vm",
            "run",
            "--cpus",
            "2",
            "-m",
            "256",
            "bb:1",
            "sh",
            "-c",
            "uname -r; nproc; echo to-stderr >&2; exit 5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 5, r.stderr
    kernel, cpus = r.stdout.split()
    assert kernel.endswith("-cloud-amd64")
    assert kernel != platform.release()  # a guest kernel, not the host's
    assert cpus == "2"
    assert r.stderr.strip() == "to-stderr"
    assert sorted(os.listdir(tmp_path)) == ["root", "rootfs"]  # nothing left in the cwd


def test_vm_run_unknown_image_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [*CLI, "--root", str(tmp_path / "root"), "vm", "run", "nothing:here", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_vm_run_attaches_disks(tmp_path: Path) -> None:
    """``--disk`` images are the VM's next virtio disks: the guest reads and writes a
    raw image; ``:ro`` is a read-only disk; a missing file is one line, no VM."""
    root = tmp_path / "root"
    local = LocalImages.open(root)
    import_rootfs(local, make_busybox_rootfs(tmp_path / "rootfs"), reference="bb:1")
    local.close()
    data = tmp_path / "data.img"
    data.write_bytes(b"written by the host".ljust(4096, b"\0"))
    ro = tmp_path / "ro.img"
    ro.write_bytes(b"\0" * 4096)
    script = (
        "head -c 19 /dev/vdb; echo; echo from-the-guest | dd of=/dev/vdb bs=512 seek=1 "
        "conv=notrunc 2>/dev/null; sync; echo x | dd of=/dev/vdc 2>/dev/null || echo ro-refused"
    )
    r = subprocess.run(
        [*CLI, "--root", str(root), "vm", "run", "--disk", str(data), "--disk", f"{ro}:ro",
         "bb:1", "sh", "-c", script],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["written", "by", "the", "host", "ro-refused"]
    assert data.read_bytes()[512:527] == b"from-the-guest\n"
    assert ro.read_bytes() == b"\0" * 4096

    r = subprocess.run(
        [*CLI, "--root", str(root), "vm", "run", "--disk", str(tmp_path / "nope.img"),
         "bb:1", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "nope.img" in r.stderr and "Traceback" not in r.stderr
