"""The micro-VM runtime backend through the CLI: ``--isolation vm|auto`` containers that
run attached or detached, are listed with process containers, and take exec, logs,
stop, kill, wait, inspect and rm. Under TCG here: each boot is about 2 s, so each test
checks several things of one VM.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_server import build_image, layer_tar
from runtime_fixtures import IMAGE_REF, cli_image_root, lamina_cli, remove_all_containers, until
from runtime_fixtures import lamina_ok as ok

from lamina.image import LocalImages
from lamina.runtime import ContainerConfig, Resources
from lamina.vm._backend import vm_shape

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

IMAGE = IMAGE_REF
ARM_IMAGE = "example.com/test/arm64:latest"
LOOP = "trap 'echo got TERM; exit 0' TERM; echo started; while true; do sleep 0.2; done"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    root = cli_image_root(tmp_path_factory, "cli-vm")
    local = LocalImages.open(root)
    try:
        build_image([layer_tar({"etc/hostname": b"x\n"})], platform="linux/arm64").store(
            local, ARM_IMAGE
        )
    finally:
        local.close()
    return root


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


def test_run_attached_exit_code_streams_and_guest_kernel(root: Path) -> None:
    script = "echo out; echo err >&2; uname -r; grep -c ^processor /proc/cpuinfo; exit 3"
    r = lamina_cli(root, "run", "--rm", "--isolation", "vm", "--cpus", "2", IMAGE, "sh", "-c",
                   script)  # fmt: skip
    assert r.returncode == 3, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "out" and r.stderr == "err\n"
    assert out[1] != platform.release()  # the guest's own kernel
    assert out[2] == "2"  # --cpus 2 -> two vCPUs
    assert ok(root, "ps", "-a", "-q") == ""  # --rm removed it

    r = lamina_cli(root, "run", "--rm", "--isolation", "vm", IMAGE, "no-such-command")
    assert r.returncode == 127, r.stderr
    assert "executable file not found" in r.stderr


def test_detached_lifecycle(root: Path) -> None:
    cid = ok(root, "run", "-d", "--isolation", "vm", "--name", "vmbox", "--memory", "64m",
             IMAGE, "sh", "-c", LOOP).strip()  # fmt: skip
    assert len(cid) == 64
    # A process container next to it: `ps` lists both backends.
    pid = ok(root, "run", "-d", "--name", "procbox", IMAGE, "sleep", "30").strip()
    listed = ok(root, "ps", "-q", "--no-trunc").split()
    assert cid in listed and pid in listed
    rows = [json.loads(line) for line in ok(root, "ps", "--format", "json").splitlines()]
    assert {r["Names"]: r["Isolation"] for r in rows} == {"vmbox": "vm", "procbox": "process"}

    r = lamina_cli(root, "exec", "vmbox", "sh", "-c", "grep MemTotal /proc/meminfo; exit 4")
    assert r.returncode == 4, r.stderr
    mem_kib = int(r.stdout.split()[1])
    assert 64 * 1024 < mem_kib <= 128 * 1024  # --memory 64m -> the 128 MiB floor
    until(lambda: "started" in ok(root, "logs", "vmbox"))

    info = json.loads(ok(root, "inspect", "vmbox"))[0]
    assert info["Isolation"] == "vm" and info["IsolationReason"] == "--isolation vm"
    assert info["State"]["Running"] is True
    proc_info = json.loads(ok(root, "inspect", "procbox"))[0]
    assert proc_info["Isolation"] == "process"

    ok(root, "stop", "vmbox")
    assert "got TERM" in ok(root, "logs", "vmbox")
    assert ok(root, "wait", "vmbox").strip() == "0"
    assert "Exited (0)" in ok(root, "ps", "-a", "--filter", "name=vmbox")
    ok(root, "rm", "vmbox")
    assert cid not in ok(root, "ps", "-a", "-q", "--no-trunc")
    assert not (root / "vms" / cid).exists()


def test_kill_signal_forwarded_and_stop_escalates(root: Path) -> None:
    script = "trap 'echo got USR1' USR1; trap '' TERM; while true; do sleep 0.2; done"
    ok(root, "run", "-d", "--isolation", "vm", "--name", "stubborn", IMAGE, "sh", "-c", script)
    r = lamina_cli(root, "exec", "stubborn", "true")  # waits for the boot
    assert r.returncode == 0, r.stderr
    ok(root, "kill", "-s", "USR1", "stubborn")
    until(lambda: "got USR1" in ok(root, "logs", "stubborn"))

    t0 = time.monotonic()
    ok(root, "stop", "-t", "1", "stubborn")  # TERM is ignored: SIGKILL after 1 s
    assert time.monotonic() - t0 < 15
    assert ok(root, "wait", "stubborn").strip() == "137"
    r = lamina_cli(root, "exec", "stubborn", "true")
    assert r.returncode != 0 and "not running" in r.stderr


def test_auto_isolation(root: Path) -> None:
    ok(root, "run", "--isolation", "auto", "--name", "native", IMAGE, "true")
    info = json.loads(ok(root, "inspect", "native"))[0]
    assert info["Isolation"] == "process"
    assert "matches the host" in info["IsolationReason"]

    # arm64 images run emulated when an arm64 guest kernel is there (tests/test_vm_arm64.py);
    # without one, auto fails naming it
    r = lamina_cli(root, "run", "--rm", "--isolation", "auto", ARM_IMAGE, "true",
                   env={"LAMINA_GUEST_DIR": str(root.parent / "no-guests")})  # fmt: skip
    assert r.returncode == 125
    assert "arm64 guest kernel" in r.stderr and "scripts/guest-kernel arm64" in r.stderr
    r = lamina_cli(root, "run", "--isolation", "hyperv", IMAGE, "true")
    assert r.returncode == 125 and "invalid --isolation" in r.stderr


def test_resources_map_to_the_vm() -> None:
    def shape(cpus: float | None, memory: int | None) -> tuple[int, int]:
        return vm_shape(ContainerConfig(image="x", resources=Resources(cpus=cpus, memory=memory)))

    assert shape(None, None) == (1, 512)
    assert shape(1.5, 1 << 30) == (2, 1024)
    assert shape(0.5, 16 << 20) == (1, 128)


def test_detached_auto_remove_and_shared_names(root: Path) -> None:
    ok(root, "run", "-d", "--name", "taken", IMAGE, "sleep", "30")
    r = lamina_cli(root, "run", "--isolation", "vm", "--name", "taken", IMAGE, "true")
    assert r.returncode == 125 and "already in use" in r.stderr

    cid = ok(root, "run", "-d", "--rm", "--isolation", "vm", "--name", "brief", IMAGE,
             "sh", "-c", "exit 5").strip()  # fmt: skip
    assert ok(root, "wait", cid).strip() == "5"  # read from its tombstone once it is gone
    until(lambda: cid not in ok(root, "ps", "-a", "-q", "--no-trunc"))
    # Its name is free again at once.
    r = lamina_cli(root, "run", "--rm", "--isolation", "vm", "--name", "brief", IMAGE, "true")
    assert r.returncode == 0, r.stderr
