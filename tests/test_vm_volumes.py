"""Bind mounts and volumes of micro-VM containers, over virtio-fs (one virtiofsd per
shared directory), through the CLI as a user runs them. Real QEMU under TCG: each boot
costs about 2 s, so each booting test checks several things of its VMs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from registry_server import build_image, layer_tar
from runtime_fixtures import IMAGE_REF, busybox_rootfs, cli_image_root, lamina_cli

from lamina.errors import LaminaError
from lamina.image import LocalImages, import_rootfs
from lamina.vm._qemu import MAX_CMDLINE, QemuSpec, VirtiofsShare, kernel_cmdline, qemu_command

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

IMAGE = IMAGE_REF
SEEDED = "example.com/test/seeded:latest"  # has VOLUME /seed, with a file in it
LAYERED = "example.com/test/layered:latest"  # two layers under VOLUME /data


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    if not os.path.exists("/usr/lib/qemu/virtiofsd"):
        pytest.skip("needs virtiofsd (qemu-system-common)")
    root = cli_image_root(tmp_path_factory, "vm-volumes")
    rootfs = busybox_rootfs(tmp_path_factory.mktemp("seeded") / "rootfs")
    (rootfs / "seed").mkdir()
    (rootfs / "seed" / "greeting").write_text("from the image\n")
    local = LocalImages.open(root)
    try:
        import_rootfs(local, rootfs, reference=SEEDED, changes=["VOLUME /seed"])
        lower = layer_tar({"data/a": b"lower\n", "data/gone": b"x"})
        upper = layer_tar({"data/.wh.gone": b"", "data/b": b"upper\n"})
        volumes = {"config": {"Cmd": ["true"], "Volumes": {"/data": {}}}}
        build_image([lower, upper], extra_config=volumes).store(local, LAYERED)
    finally:
        local.close()
    yield root
    ids = lamina_cli(root, "ps", "-a", "-q", "--no-trunc").stdout.split()
    if ids:
        lamina_cli(root, "rm", "-f", "-v", *ids)


def ok(root: Path, *args: str, timeout: float = 120) -> str:
    r = lamina_cli(root, *args, timeout=timeout)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    return r.stdout


def daemons_serving(under: Path) -> list[str]:
    """Command lines of live virtiofsd processes sharing something under ``under``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if "virtiofsd" in cmd and str(under) in cmd and state != "Z":
            found.append(cmd)
    return found


def until(check: Callable[[], bool], timeout: float = 20) -> None:
    """The supervisor records the exit before it stops the VM and its daemons and
    removes anonymous volumes: wait for what follows."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def until_gone(under: Path) -> None:
    until(lambda: not daemons_serving(under))


def volume_dirs(root: Path) -> set[str]:
    vols = root / "volumes"
    if not vols.is_dir():
        return set()
    return {p.name for p in vols.iterdir() if not p.name.startswith(".")}


def test_bind_mounts_both_ways_read_only_and_anonymous_volume(root: Path, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (rw / "fromhost").write_text("written on the host\n")
    (ro / "config").write_text("read-only config\n")
    before = volume_dirs(root)
    script = (
        "cat /data/fromhost; mkdir -p /data/sub; echo 'written in the VM' > /data/sub/out;"
        "cat /etc/app/config; echo x > /etc/app/new 2>/dev/null || echo ro-refused;"
        # root in the guest may remount, but the host serves a read-only mount
        "mount -o remount,rw /etc/app && { echo y > /etc/app/again || echo host-refused; };"
        "echo scratch > /scratch/f && echo anon-ok"
    )
    r = lamina_cli(root, "run", "--rm", "--isolation", "vm", "-v", f"{rw}:/data",
                   "-v", f"{ro}:/etc/app:ro", "-v", "/scratch", IMAGE, "sh", "-c", script,
                   timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "written on the host",
        "read-only config",
        "ro-refused",
        "host-refused",
        "anon-ok",
    ], r.stdout + r.stderr
    assert (rw / "sub" / "out").read_text() == "written in the VM\n"
    assert sorted(os.listdir(ro)) == ["config"]
    until_gone(tmp_path)
    until(lambda: volume_dirs(root) == before)  # --rm removed the anonymous volume


def test_named_volume_persists_image_volume_is_seeded_and_rm_f(root: Path) -> None:
    ok(root, "run", "--rm", "--isolation", "vm", "-v", "keep:/store", IMAGE, "sh", "-c",
       "echo persisted > /store/f")  # fmt: skip
    vols = root / "volumes"
    assert (vols / "keep" / "_data" / "f").read_text() == "persisted\n"
    before = volume_dirs(root)

    cid = ok(root, "run", "-d", "--isolation", "vm", "-v", "keep:/store", SEEDED, "sh", "-c",
             "cat /store/f /seed/greeting; echo ready; sleep 600").strip()  # fmt: skip
    deadline = time.monotonic() + 60
    while "ready" not in ok(root, "logs", cid):
        assert time.monotonic() < deadline, ok(root, "logs", cid)
        time.sleep(0.2)
    assert ok(root, "logs", cid).splitlines() == ["persisted", "from the image", "ready"]
    anonymous = volume_dirs(root) - before  # the image's VOLUME /seed, filled from it
    assert len(anonymous) == 1
    # One daemon (a parent and its sandboxed child) per shared directory, while it runs.
    sources = {c.split("source=")[1].split(",")[0] for c in daemons_serving(vols)}
    assert sources == {str(vols / "keep" / "_data"), str(vols / anonymous.pop() / "_data")}

    ok(root, "rm", "-f", "-v", cid)
    until_gone(vols)
    assert volume_dirs(root) == before  # -v: the anonymous volume went, "keep" stayed


def test_unsupported_and_bad_mounts_fail_in_one_line(root: Path, tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    cases = [
        (["-v", f"{afile}:/x"], "cannot bind-mount the file"),
        (["-v", "rel/dir:/x"], "invalid volume specification"),
        (["-v", f"{tmp_path}:rel:ro"], "is not an absolute path"),
        (["--tmpfs", "/t:bogus"], "invalid tmpfs option 'bogus' for /t"),
        (["--tmpfs", "/t", "-v", f"{tmp_path}:/t"], "duplicate mount point: /t"),
    ]
    for flags, message in cases:
        r = lamina_cli(root, "run", "--rm", "--isolation", "vm", *flags, IMAGE, "true")
        assert r.returncode == 125, (flags, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lamina: error: "), lines
        assert message in lines[0], lines
    assert ok(root, "ps", "-a", "-q") == ""

    # Created, never started: the image's VOLUME is an anonymous volume filled from
    # the merged layers at create; `rm -v` removes it.
    before = volume_dirs(root)
    cid = ok(root, "create", "--isolation", "vm", LAYERED).strip()
    (anonymous,) = volume_dirs(root) - before
    data = root / "volumes" / anonymous / "_data"
    assert sorted(os.listdir(data)) == ["a", "b"]
    assert (data / "b").read_text() == "upper\n"
    ok(root, "rm", "-v", cid)
    assert volume_dirs(root) == before


def test_mount_points_on_the_kernel_command_line(tmp_path: Path) -> None:
    base = QemuSpec(kernel=tmp_path / "k", initrd=tmp_path / "i", agent_fd=3, console_log=None)
    spec = QemuSpec(**{**base.__dict__, "shares": (
        VirtiofsShare("lamina0", 5, "/data dir,x:y", read_only=True),
        VirtiofsShare("tag1", 6),
    )})  # fmt: skip
    assert "lamina.fs=lamina0:/data%20dir%2Cx%3Ay:ro,tag1" in kernel_cmdline(spec)
    cmd = qemu_command(spec)
    assert "microvm,acpi=on,memory-backend=mem" in cmd
    assert "vhost-user-fs-device,chardev=fs1,tag=tag1" in cmd
    many = tuple(VirtiofsShare(f"t{i}", 10 + i, "/" + "d" * 60) for i in range(40))
    with pytest.raises(LaminaError, match=f"limit of {MAX_CMDLINE - 1}"):
        qemu_command(QemuSpec(**{**base.__dict__, "shares": many}))


def test_no_daemon_outlives_a_killed_supervisor(root: Path, tmp_path: Path) -> None:
    cid = ok(root, "run", "-d", "--isolation", "vm", "-v", f"{tmp_path}:/shared", IMAGE,
             "sh", "-c", "touch /shared/up; sleep 600").strip()  # fmt: skip
    deadline = time.monotonic() + 60
    while not (tmp_path / "up").exists():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert daemons_serving(tmp_path)
    supervisor = json.loads(ok(root, "inspect", cid))[0]["State"]["Pid"]
    os.kill(supervisor, signal.SIGKILL)
    until_gone(tmp_path)  # the daemon's parent-death signal
    assert "Exited (137)" in ok(root, "ps", "-a")
    ok(root, "rm", cid)


def test_tmpfs_mounts_are_the_guests_own(root: Path) -> None:
    """``--tmpfs`` and ``--mount type=tmpfs`` with Docker's defaults (noexec, nosuid,
    nodev) unless the options say otherwise; size= reaches the kernel."""
    script = (
        "grep -E ' /(run|cache|ro) ' /proc/mounts | cut -d' ' -f2-4;"
        "echo x > /run/f && echo run-writable; echo y > /ro/f 2>/dev/null || echo ro-refused"
    )
    out = ok(root, "run", "--rm", "--isolation", "vm", "--tmpfs", "/run:size=1m,mode=0700",
             "--tmpfs", "/cache:exec", "--mount", "type=tmpfs,destination=/ro,readonly",
             IMAGE, "sh", "-c", script)  # fmt: skip
    mounts = {line.split()[0]: line.split()[2].split(",") for line in out.splitlines()[:3]}
    assert set(mounts) == {"/run", "/cache", "/ro"}, out
    assert {"rw", "nosuid", "nodev", "noexec", "size=1024k", "mode=700"} <= set(mounts["/run"])
    assert "noexec" not in mounts["/cache"] and "nosuid" in mounts["/cache"]
    assert "ro" in mounts["/ro"]
    assert out.splitlines()[3:] == ["run-writable", "ro-refused"], out
