"""Micro-VM boot slice: a busybox image run to completion in QEMU microvm under TCG.

Each boot costs about 2 s under TCG, so each test that boots checks several things
from one run. The lamina root (and with it the cached kernel, agent, initramfs and
root disks) is shared by the module.
"""

from __future__ import annotations

import http.server
import json
import platform
import re
import subprocess
import threading
from pathlib import Path

import pytest
from registry_server import build_image, layer_tar

from lamina.errors import LaminaError
from lamina.image import LocalImages, import_rootfs
from lamina.testing import make_busybox_rootfs
from lamina.vm._agent import Msg, exec_payload, parse_exit
from lamina.vm._config import VmConfig
from lamina.vm._initramfs import module_order
from lamina.vm._kernel import KERNEL_PACKAGE, find_kernel, guest_kernel
from lamina.vm._kvm import kvm_device_usable, kvm_usable
from lamina.vm._qemu import QemuSpec, qemu_command
from lamina.vm._rootfs import image_rootfs
from lamina.vm._run import run_in_vm, start_vm

IMAGE = "vmtest/busybox:latest"
LAYERED = "vmtest/layered:latest"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> LocalImages:
    base = tmp_path_factory.mktemp("vm")
    images = LocalImages.open(base / "root")
    rootfs = make_busybox_rootfs(base / "rootfs")
    import_rootfs(images, rootfs, reference=IMAGE, changes=['CMD ["sh"]'])
    return images


def _layered(local: LocalImages) -> None:
    """Two layers: busybox, then one that deletes a file, adds a user, and sets the
    image's Entrypoint, Cmd, Env, WorkingDir and User."""
    busybox = Path("/bin/busybox").read_bytes()
    applets = ("sh", "cat", "id", "pwd", "echo", "ls")
    files: dict[str, bytes | str | None] = {"bin/busybox": busybox, "etc/doomed": b"x\n"}
    files.update({f"bin/{a}": "busybox" for a in applets})
    files["etc/passwd"] = b"root:x:0:0:root:/root:/bin/sh\n"
    top: dict[str, bytes | str | None] = {
        "etc/.wh.doomed": b"",
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:4321:app:/home/app:/bin/sh\n",
        "etc/group": b"root:x:0:\napp:x:4321:\nextra:x:777:app\n",
        "home/app": None,
    }
    config = {
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ['cat; echo "$GREETING $HOME"; pwd; id; ls /etc'],
            "Env": ["PATH=/bin", "GREETING=hello"],
            "WorkingDir": "/srv/app",
            "User": "app",
        }
    }
    build_image([layer_tar(files), layer_tar(top)], extra_config=config).store(local, LAYERED)


@pytest.mark.slow
def test_streams_exit_code_and_tcg_fallback(local: LocalImages) -> None:
    script = "echo out; echo err >&2; echo w > /bin/new && cat /bin/new; exit 3"
    result = run_in_vm(local, IMAGE, ["sh", "-c", script])
    assert result.exit_code == 3
    assert result.stdout == b"out\nw\n"  # the read-only root disk has a writable overlay
    assert result.stderr == b"err\n"
    # KVM is nested and unusable on this machine: the probe said so, the run used TCG.
    assert result.accel == "tcg"
    probe = json.loads((local.root / "vm" / "kvm-probe.json").read_text())
    assert probe["kvm"] is False and probe["host_kernel"] == platform.release()
    assert probe["reason"]
    for key in ("prepare", "vmm_start", "kernel_boot", "init", "workload", "total"):
        assert result.timings[key] >= 0, key
    assert result.timings["total"] >= result.timings["kernel_boot"]


@pytest.mark.slow
def test_guest_kernel_cpu_and_resources(local: LocalImages) -> None:
    script = 'uname -r; grep -m1 "model name" /proc/cpuinfo; nproc; grep MemTotal /proc/meminfo'
    result = run_in_vm(local, IMAGE, ["sh", "-c", script], vcpus=2, memory_mib=384)
    assert result.exit_code == 0, result.stderr
    release, model, nproc, meminfo = result.stdout.decode().splitlines()
    version, _ = find_kernel()
    assert release == version  # Debian's cloud kernel...
    assert release != platform.release()  # ...not the host's, which runs another kernel
    assert "QEMU" in model
    assert nproc == "2"
    mem_kib = int(re.findall(r"\d+", meminfo)[0])
    assert 0.8 * 384 * 1024 < mem_kib <= 384 * 1024


@pytest.mark.slow
def test_image_config_layers_user_and_stdin(local: LocalImages) -> None:
    _layered(local)
    result = run_in_vm(local, LAYERED, stdin=b"from stdin\n", env=["GREETING=hi"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "from stdin"
    assert lines[1] == "hi /home/app"  # -e overrides the image's Env; HOME from passwd
    assert lines[2] == "/srv/app"  # WorkingDir, created as Docker does
    assert lines[3] == "uid=1234(app) gid=4321(app) groups=777(extra)"
    assert "passwd" in lines[4:] and "doomed" not in lines[4:]  # the upper layer's whiteout


@pytest.mark.slow
def test_command_not_found_is_127(local: LocalImages) -> None:
    with pytest.raises(
        LaminaError, match='exec: "no-such-command": executable file not found'
    ) as e:
        run_in_vm(local, IMAGE, ["no-such-command"])
    assert e.value.exit_code == 127


@pytest.mark.slow
def test_user_mode_nat_etc_files_and_boot_log(local: LocalImages, tmp_path: Path) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    boot_log = tmp_path / "boot.log"
    config = (
        VmConfig.builder()
        .vcpus(1)
        .memory_mib(256)
        .network("nat")
        .boot_log(f"file:{boot_log}")
        .build()
    )
    port = server.server_address[1]
    script = f"wget -qO- http://10.0.2.2:{port}/; cat /etc/resolv.conf /etc/hosts /etc/hostname"
    try:
        result = run_in_vm(local, IMAGE, ["sh", "-c", script], config=config, hostname="vmhost")
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("hello from the host\n")
    assert "nameserver 10.0.2.3" in out
    assert "10.0.2.15\tvmhost" in out and out.endswith("vmhost\n")
    assert "Linux version" in boot_log.read_text(errors="replace")  # not quiet: someone reads it


@pytest.mark.slow
def test_agent_sessions_signals_and_ping(local: LocalImages) -> None:
    """Two processes at once in one VM: SIGTERM reaches a trap, SIGKILL gives 128+9."""
    config = VmConfig(vcpus=1, memory_mib=256, networks=())
    trap = "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.1; done"
    with start_vm(local, local.require(IMAGE), config, accel="tcg") as vm:
        vm.conn.send(Msg.PING, 0, b"hi")
        vm.conn.send(Msg.EXEC, 1, exec_payload(["sh", "-c", trap], ["PATH=/bin"]))
        vm.conn.send(Msg.EXEC, 2, exec_payload(["sleep", "60"], ["PATH=/bin"]))
        seen: list[tuple[int, int, bytes]] = []
        exits: dict[int, int] = {}
        signalled = False
        while len(exits) < 2 and not vm.conn.closed:
            for f in vm.conn.poll(30):
                seen.append((f.type, f.session, f.payload))
                if f.type == Msg.STDOUT and f.payload == b"ready\n" and not signalled:
                    vm.conn.send(Msg.SIGNAL, 1, (15).to_bytes(4, "big"))
                    vm.conn.send(Msg.SIGNAL, 2, (9).to_bytes(4, "big"))
                    signalled = True
                elif f.type == Msg.EXIT:
                    exits[f.session] = parse_exit(f.payload).exit_code
    assert (Msg.PONG, 0, b"hi") in seen
    assert (Msg.STDOUT, 1, b"got TERM\n") in seen
    assert exits == {1: 7, 2: 137}


@pytest.mark.slow
def test_kvm_probe_is_false_here_and_cached(local: LocalImages, tmp_path: Path) -> None:
    kernel = guest_kernel(local.root)
    initrd = next((local.root / "vm" / "initramfs").glob("*.cpio.gz"))
    assert kvm_usable(local.root, kernel, initrd, refresh=True) is False
    assert json.loads((local.root / "vm" / "kvm-probe.json").read_text())["kvm"] is False
    ok, reason = kvm_device_usable(tmp_path / "no-kvm")
    assert not ok and "no-kvm" in reason


@pytest.mark.slow
def test_multi_layer_rootfs_is_merged(local: LocalImages, tmp_path: Path) -> None:
    _layered(local)
    disk = image_rootfs(local, local.require(LAYERED))
    out = tmp_path / "x"
    subprocess.run(["fsck.erofs", f"--extract={out}", str(disk)], check=True, capture_output=True)
    assert (out / "bin" / "busybox").is_file()
    assert not (out / "etc" / "doomed").exists()
    assert b"app:x:1234" in (out / "etc" / "passwd").read_bytes()


def test_missing_kernel_is_a_clear_error(tmp_path: Path, local: LocalImages) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    with pytest.raises(LaminaError, match=f"apt-get install {KERNEL_PACKAGE}"):
        guest_kernel(tmp_path / "root", boot_dir=boot)
    with pytest.raises(LaminaError, match="no guest kernel"):
        run_in_vm(local, IMAGE, ["true"], boot_dir=boot)


def test_module_order_puts_dependencies_first() -> None:
    version, _ = find_kernel()
    order = module_order(Path("/lib/modules") / version, ["virtio_blk", "erofs"])
    names = [Path(p).name for p in order]
    assert names.index("virtio_ring.ko") < names.index("virtio.ko") < names.index("virtio_blk.ko")
    assert names.index("libcrc32c.ko") < names.index("erofs.ko")


def test_qemu_command_line(tmp_path: Path) -> None:
    spec = QemuSpec(
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd",
        agent_fd=5,
        console_log=tmp_path / "console.log",
        vcpus=2,
        memory_mib=768,
        root_image=tmp_path / "root.erofs",
    )
    cmd = qemu_command(spec)
    assert cmd[cmd.index("-machine") + 1] == "microvm,acpi=on"
    assert cmd[cmd.index("-accel") + 1] == "tcg"
    assert cmd[cmd.index("-m") + 1] == "768" and cmd[cmd.index("-smp") + 1] == "2"
    assert "-no-reboot" in cmd and "-nodefaults" in cmd
    append = cmd[cmd.index("-append") + 1]
    assert re.search(r"tsc_early_khz=\d+", append) and "console=ttyS0" in append
    assert "lamina.root=/dev/vda" in append
    assert f"file={tmp_path}/root.erofs,format=raw,readonly=on" in " ".join(cmd)
    assert "socket,id=agent,fd=5" in cmd
