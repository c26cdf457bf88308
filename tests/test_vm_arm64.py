"""arm64 images on this amd64 host: emulated micro-VMs (qemu-system-aarch64 under TCG,
QEMU's ``virt`` machine) booting Debian's arm64 cloud kernel from the guest directory
``scripts/guest-kernel arm64`` fills, with the agent cross-compiled for aarch64.

The image is made offline: the busybox rootfs of ``lamina.testing`` with Debian's arm64
busybox-static from that guest directory, imported with ``lamina import --platform
linux/arm64`` as a user would. Each boot costs about 1.5 s (more on a busy host), so each
test checks several things of one VM.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_fixtures import lamina_cli, remove_all_containers
from runtime_fixtures import lamina_ok as ok

from lamina.errors import LaminaError
from lamina.image import LocalImages
from lamina.testing import make_busybox_rootfs
from lamina.vm._arch import get_arch, host_arch, missing
from lamina.vm._qemu import QemuSpec, kernel_cmdline, qemu_command

ARM = "example.com/test/arm64-busybox:latest"


def _not_ready() -> str:
    """Why arm64 VMs cannot run here ("" when they can)."""
    if host_arch() != "amd64":
        return f"tests arm64 emulation on an amd64 host, this one is {host_arch()}"
    gaps = missing(get_arch("arm64"))
    return "needs " + "; ".join(gaps) if gaps else ""


needs_arm64 = pytest.mark.skipif(bool(_not_ready()), reason=_not_ready() or "ready")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if _not_ready():
        pytest.skip(_not_ready())
    base = tmp_path_factory.mktemp("arm64")
    # The applet links from the host's busybox (the arm64 one cannot run here: same
    # Debian version, same applets), then the arm64 binary in its place.
    rootfs = make_busybox_rootfs(base / "rootfs")
    (rootfs / "bin" / "busybox").unlink()
    busybox = get_arch("arm64").busybox()
    assert busybox is not None
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    (rootfs / "etc" / "motd").write_text("from the image\n")
    root = base / "root"
    ok(root, "import", "--platform", "linux/arm64", str(rootfs), ARM)
    assert json.loads(ok(root, "image", "inspect", ARM))[0]["Architecture"] == "arm64"
    return root


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


@needs_arm64
def test_auto_runs_an_arm64_image_in_an_emulated_vm(root: Path) -> None:
    r = lamina_cli(root, "run", "--rm", "--isolation", "auto", ARM, "uname", "-m", timeout=180)
    assert (r.returncode, r.stdout, r.stderr) == (0, "aarch64\n", "")
    assert ok(root, "ps", "-a", "-q") == ""  # --rm removed it

    script = "echo out; echo err >&2; cat /etc/motd > /tmp/copy; sleep 60"
    ok(root, "run", "-d", "--name", "arm", "--isolation", "auto", ARM, "sh", "-c", script)
    r = lamina_cli(root, "exec", "arm", "sh", "-c", "uname -m; echo e2 >&2; exit 7", timeout=180)
    assert (r.returncode, r.stdout, r.stderr) == (7, "aarch64\n", "e2\n")
    logs = lamina_cli(root, "logs", "arm")
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
    # The guest's busybox file tools are arm64 ones too: cp out of the overlay works.
    ok(root, "cp", "arm:/tmp/copy", str(root.parent / "copy"))
    assert (root.parent / "copy").read_text() == "from the image\n"

    info = json.loads(ok(root, "inspect", "arm"))[0]
    assert info["Isolation"] == "vm"
    assert info["IsolationReason"] == (
        "--isolation auto: image platform linux/arm64 differs from the host's linux/amd64"
    )
    vm = info["VM"]
    assert (vm["Architecture"], vm["Emulated"], vm["Accel"]) == ("arm64", True, "tcg")
    ok(root, "kill", "arm")
    assert ok(root, "wait", "arm").strip() == "137"


@needs_arm64
def test_vm_run_streams_exit_code_and_boot_timing(root: Path) -> None:
    script = "uname -m; uname -r; echo to-stderr >&2; exit 3"
    r = lamina_cli(root, "vm", "run", ARM, "sh", "-c", script, timeout=180)
    assert r.returncode == 3, r.stderr
    machine, kernel = r.stdout.split()
    assert machine == "aarch64" and kernel.endswith("-cloud-arm64")
    assert r.stderr == "to-stderr\n"

    from lamina.vm._run import run_in_vm

    local = LocalImages.open(root)
    try:
        result = run_in_vm(local, ARM, ["true"], snapshot="none", accel="auto")
    finally:
        local.close()
    assert result.exit_code == 0 and result.accel == "tcg"  # never a KVM probe
    # No TSC on arm64: the boot is not split into VMM, kernel and init.
    assert "boot" in result.timings and "kernel_boot" not in result.timings
    with pytest.raises(LaminaError, match="KVM cannot run linux/arm64 guests"):
        local = LocalImages.open(root)
        try:
            run_in_vm(local, ARM, ["true"], accel="kvm")
        finally:
            local.close()


@needs_arm64
def test_snapshot_of_an_arm64_vm_restores(root: Path) -> None:
    out = ok(root, "vm", "snapshot", "create", "--network", "none", "--name", "arm", ARM)
    assert "tcg" in out
    try:
        from lamina.vm._run import run_in_vm

        local = LocalImages.open(root)
        try:
            result = run_in_vm(local, ARM, ["uname", "-m"], snapshot="auto")
        finally:
            local.close()
        assert result.restored_from == "arm", result.restore_error
        assert (result.exit_code, result.stdout) == (0, b"aarch64\n")
    finally:
        ok(root, "vm", "snapshot", "rm", "arm")


@needs_arm64
def test_missing_guest_kernel_is_one_line(root: Path, tmp_path: Path) -> None:
    env = {"LAMINA_GUEST_DIR": str(tmp_path)}  # no arm64/ in it
    run = ("run", "--rm", "--isolation", "auto", ARM, "true")
    for args, code in ((run, 125), (("vm", "run", ARM, "true"), 1)):
        r = lamina_cli(root, *args, env=env)
        assert r.returncode == code, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"arm64 guest kernel and its modules in {tmp_path}/arm64" in r.stderr
        assert "scripts/guest-kernel arm64" in r.stderr
    assert ok(root, "ps", "-a", "-q") == ""  # nothing was created


def test_arm64_qemu_command_line(tmp_path: Path) -> None:
    spec = QemuSpec(
        kernel=tmp_path / "Image",
        initrd=tmp_path / "initrd",
        agent_fd=5,
        console_log=tmp_path / "console.log",
        root_image=tmp_path / "root.erofs",
        arch="arm64",
    )
    cmd = qemu_command(spec)
    assert cmd[0] == "qemu-system-aarch64"
    assert cmd[cmd.index("-machine") + 1] == "virt,gic-version=3"
    assert cmd[cmd.index("-cpu") + 1] == "cortex-a72"
    append = cmd[cmd.index("-append") + 1]
    assert "console=ttyAMA0" in append and "mitigations=off" in append
    assert "tsc_early_khz" not in append  # no TSC on arm64
    assert "virtio-blk-device,drive=root" in cmd
    with pytest.raises(LaminaError, match="KVM cannot run linux/arm64 guests"):
        qemu_command(QemuSpec(**{**spec.__dict__, "accel": "kvm"}))
    # The host's own architecture is unchanged: microvm, the TSC rate.
    amd64 = QemuSpec(**{**spec.__dict__, "arch": "amd64"})
    assert qemu_command(amd64)[:3] == ["qemu-system-x86_64", "-machine", "microvm,acpi=on"]
    assert any(re.fullmatch(r"tsc_early_khz=\d+", a) for a in kernel_cmdline(amd64))
    with pytest.raises(LaminaError, match="micro-VMs run linux/amd64 and linux/arm64 images"):
        get_arch("riscv64")
