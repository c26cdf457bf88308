"""Real runc runs of specs from build_spec: the security defaults as a user meets them.

No lamina backend is involved: each test writes a bundle (a busybox rootfs and
the config.json that build_spec makes) and runs ``runc run`` on it, capturing
the output. Cgroups go under a per-session ``/lamina-test-<random>`` parent and
are removed afterwards, as is runc's state.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lamina.engine._process import merge_process
from lamina.runtime._spec import build_spec
from lamina.runtime._types import ContainerConfig, Mount, Resources, Security, Ulimit

RUNC = shutil.which("runc")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
pytestmark = [
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root"),
]
CGROUP_ROOT = Path("/sys/fs/cgroup")


@pytest.fixture(scope="session")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine busybox rootfs; tests get hardlinked copies of it."""
    root = tmp_path_factory.mktemp("busybox") / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    for d in ("etc", "tmp", "mnt", "proc", "sys", "dev", "root", "home/app"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "app:x:1000:1000:app:/home/app:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (root / "etc" / "group").write_text(
        "root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n"
    )
    return root


@pytest.fixture(scope="session")
def cgroup_parent() -> Iterator[str]:
    parent = f"/lamina-test-{secrets.token_hex(4)}"
    yield parent
    _remove_cgroups(parent)


def _remove_cgroups(rel: str) -> None:
    """rmdir ``rel`` (and what is below it) in every cgroup hierarchy."""
    if not CGROUP_ROOT.is_dir():
        return
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / rel.lstrip("/")
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Runner:
    def __init__(self, tmp: Path, pristine: Path, cgroup_parent: str) -> None:
        self.tmp = tmp
        self.state = tmp / "runc-state"
        self.cgroup_parent = cgroup_parent
        self.rootfs = tmp / "bundle" / "rootfs"
        # Hardlinked copy: cheap, and writes in one test never leak into another.
        shutil.copytree(pristine, self.rootfs, symlinks=True, copy_function=os.link)
        for name, text in (
            ("hostname", "box\n"),
            ("hosts", "127.0.0.1 localhost\n"),
            ("resolv.conf", "nameserver 127.0.0.1\n"),
        ):
            (tmp / name).write_text(text)  # fmt: skip
        self.ids: list[str] = []

    def spec(self, config: ContainerConfig, **kw: Any) -> dict[str, Any]:
        cid = secrets.token_hex(32)
        self.ids.append(cid)
        return build_spec(
            config=config,
            process=merge_process(config, {}, cid),  # as the engine merges it
            rootfs=self.rootfs,
            container_id=cid,
            hostname_file=self.tmp / "hostname",
            hosts_file=self.tmp / "hosts",
            resolv_file=self.tmp / "resolv.conf",
            cgroup_parent=self.cgroup_parent,
            **kw,
        )

    def run_spec(self, spec: dict[str, Any]) -> Result:
        assert RUNC is not None
        bundle = self.rootfs.parent
        (bundle / "config.json").write_text(json.dumps(spec))
        cid = spec["linux"]["cgroupsPath"].rsplit("/", 1)[1]
        p = subprocess.run(
            [RUNC, "--root", str(self.state), "run", "--bundle", str(bundle), cid],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def sh(self, script: str, **config: Any) -> Result:
        config.setdefault("command", ["sh", "-c", script])
        spec_kw = {k: config.pop(k) for k in ("volume_paths",) if k in config}
        return self.run_spec(self.spec(ContainerConfig(image="busybox", **config), **spec_kw))

    def cleanup(self) -> None:
        assert RUNC is not None
        for cid in self.ids:
            subprocess.run(
                [RUNC, "--root", str(self.state), "delete", "-f", cid],
                capture_output=True,
                timeout=30,
            )
            _remove_cgroups(f"{self.cgroup_parent}/{cid}")


@pytest.fixture
def runner(tmp_path: Path, busybox_root: Path, cgroup_parent: str) -> Iterator[Runner]:
    r = Runner(tmp_path, busybox_root, cgroup_parent)
    try:
        yield r
    finally:
        r.cleanup()


PRIVILEGED = Security(privileged=True)


def ok(r: Result) -> str:
    assert r.rc == 0, f"rc={r.rc}\nstdout: {r.out}\nstderr: {r.err}"
    return r.out


# -------------------------------------------------------------- isolation


def test_mount_is_refused_by_default_and_works_privileged(runner: Runner) -> None:
    r = runner.sh("mount -t tmpfs none /mnt")
    assert r.rc != 0
    assert "permission denied" in r.err.lower() or "not permitted" in r.err.lower()
    ok(runner.sh("mount -t tmpfs none /mnt && touch /mnt/x", security=PRIVILEGED))


def test_cap_sys_admin_lifts_the_mount_rules(runner: Runner) -> None:
    ok(
        runner.sh(
            "mount -t tmpfs none /mnt && unshare -m true", security=Security(cap_add=["SYS_ADMIN"])
        )
    )


def test_unshare_is_refused_by_default(runner: Runner) -> None:
    for args in ("unshare -U true", "unshare -m true", "unshare -n true"):
        r = runner.sh(args)
        assert r.rc != 0, args
        assert "Operation not permitted" in r.err, (args, r.err)
    ok(runner.sh("unshare -U true && unshare -m true", security=PRIVILEGED))


def test_default_capabilities(runner: Runner) -> None:
    status = ok(runner.sh("grep ^Cap /proc/self/status"))
    caps = dict(line.split(":\t") for line in status.splitlines())
    assert caps["CapEff"] == "00000000a80425fb"
    assert caps["CapPrm"] == caps["CapBnd"] == "00000000a80425fb"
    assert caps["CapInh"] == caps["CapAmb"] == "0000000000000000"
    dropped = ok(runner.sh("grep ^CapEff /proc/self/status", security=Security(cap_drop=["ALL"])))
    assert dropped.split()[1] == "0000000000000000"
    # chown needs CAP_CHOWN, which is in the default set until dropped.
    ok(runner.sh("touch /tmp/f && chown 1000 /tmp/f"))
    r = runner.sh("touch /tmp/f && chown 1000 /tmp/f", security=Security(cap_drop=["chown"]))
    assert r.rc != 0


def test_non_root_user_has_no_effective_caps(runner: Runner) -> None:
    out = ok(
        runner.sh("grep -E '^Cap(Eff|Bnd)' /proc/self/status; id -u; id -G; echo $HOME", user="app")
    )
    lines = out.split()
    assert lines[1] == "0000000000000000" and lines[3] == "00000000a80425fb"
    assert lines[4:] == ["1000", "1000", "50", "/home/app"]


def test_masked_and_readonly_proc(runner: Runner) -> None:
    # /proc/kcore does not exist on every kernel; /proc/keys and timer_list do.
    out = ok(runner.sh("wc -c < /proc/keys; wc -c < /proc/timer_list; ls -A /sys/firmware | wc -l"))
    assert out.split() == ["0", "0", "0"]
    r = runner.sh("echo lamina > /proc/sys/kernel/domainname")
    assert r.rc != 0 and "Read-only file system" in r.err
    r = runner.sh("echo 1 > /proc/sysrq-trigger")
    assert r.rc != 0
    if Path("/proc/keys").read_text():
        privileged = ok(runner.sh("wc -c < /proc/keys", security=PRIVILEGED))
        assert privileged.strip() != "0"  # privileged: nothing masked


def test_read_only_rootfs(runner: Runner) -> None:
    r = runner.sh(
        "touch /x",
        security=Security(read_only_rootfs=True),
        tmpfs={"/tmp": ""},
    )
    assert r.rc != 0 and "Read-only file system" in r.err
    ok(runner.sh("touch /tmp/x", security=Security(read_only_rootfs=True), tmpfs={"/tmp": ""}))
    # /tmp tmpfs is noexec by default, as Docker's --tmpfs.
    r = runner.sh("cp /bin/busybox /tmp/true && /tmp/true", tmpfs={"/tmp": ""})
    assert r.rc != 0 and "Permission denied" in r.err
    ok(runner.sh("cp /bin/busybox /tmp/true && /tmp/true", tmpfs={"/tmp": "exec"}))


def test_no_new_privileges(runner: Runner) -> None:
    assert "NoNewPrivs:\t1" in ok(runner.sh("grep NoNewPrivs /proc/self/status"))
    out = ok(
        runner.sh("grep NoNewPrivs /proc/self/status", security=Security(no_new_privileges=False))
    )
    assert "NoNewPrivs:\t0" in out


def test_user_nobody(runner: Runner) -> None:
    out = ok(runner.sh("id -u; id -g; echo $HOME", user="nobody"))
    assert out.split() == ["65534", "65534", "/nonexistent"]
    assert ok(runner.sh("id -u; id -g", user="4242:4343")).split() == ["4242", "4343"]


def test_environment_hostname_and_workdir(runner: Runner) -> None:
    script = "echo $PATH; echo $HOSTNAME; hostname; pwd; cat /etc/hostname"
    out = ok(runner.sh(script, hostname="web1", working_dir="/tmp"))
    assert out.split() == [
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "web1", "web1", "/tmp", "box",
    ]  # fmt: skip
    assert ok(runner.sh("echo $GREETING", env=["GREETING=hi"])).strip() == "hi"


def test_rlimit_below_host(runner: Runner) -> None:
    assert ok(runner.sh("ulimit -n", ulimits=[Ulimit("nofile", 100, 100)])).strip() == "100"
    out = ok(runner.sh("ulimit -n; ulimit -Hn", ulimits=[Ulimit("nofile", 50, 200)]))
    assert out.split() == ["50", "200"]


def test_seccomp_allows_docker_personalities_and_plain_fork(runner: Runner) -> None:
    # linux32 is personality(PER_LINUX32), which the profile allows; clone3 answers
    # ENOSYS so the C library's fallback to clone keeps fork and threads working.
    out = ok(runner.sh("linux32 uname -m; (true) & wait; echo forked"))
    assert out.split()[-1] == "forked"


def test_unconfined_seccomp(runner: Runner) -> None:
    # An unprivileged user namespace needs no capability: only seccomp stops it...
    ok(runner.sh("unshare -U true", security=Security(seccomp="unconfined")))
    # ...while a mount namespace still needs CAP_SYS_ADMIN.
    assert runner.sh("unshare -m true", security=Security(seccomp="unconfined")).rc != 0


PROBE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static void show(const char *name, long rc) { printf("%s %d\n", name, rc < 0 ? errno : 0); }
int main(void) {
    char buf[512];
    memset(buf, 0, sizeof buf);
    errno = 0; show("personality_query", syscall(SYS_personality, 0xffffffffUL));
    errno = 0; show("personality_linux32", syscall(SYS_personality, 0x8UL));
    syscall(SYS_personality, 0x0UL);
    errno = 0; show("personality_no_randomize", syscall(SYS_personality, 0x0040000UL));
    errno = 0; show("personality_high_bit", syscall(SYS_personality, 0x80040000UL));
    errno = 0; show("clone3", syscall(SYS_clone3, buf, 0));
    errno = 0; show("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    errno = 0; show("io_uring_setup", syscall(SYS_io_uring_setup, 1, buf));
    return 0;
}
"""


@pytest.fixture(scope="session")
def syscall_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static binary calling what busybox cannot reach; skips without gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the syscall probe")
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(PROBE_C)
    p = subprocess.run(
        [gcc, "-static", "-O1", "-o", str(d / "probe"), str(d / "probe.c")],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        pytest.skip(f"cannot build a static probe: {p.stderr.strip()[:200]}")
    return d / "probe"


def test_seccomp_errnos(runner: Runner, syscall_probe: Path) -> None:
    shutil.copy2(syscall_probe, runner.rootfs / "bin" / "probe")
    results = dict(line.split() for line in ok(runner.sh("probe", command=["probe"])).splitlines())
    assert results == {
        "personality_query": "0",
        "personality_linux32": "0",
        "personality_no_randomize": "1",  # EPERM
        "personality_high_bit": "1",
        "clone3": "38",  # ENOSYS, so the C library falls back to clone
        "keyctl": "1",
        "io_uring_setup": "1",
    }
    unconfined = runner.sh("probe", command=["probe"], security=Security(seccomp="unconfined"))
    results = dict(line.split() for line in ok(unconfined).splitlines())
    assert results["personality_no_randomize"] == "0" and results["clone3"] == "22"


# ----------------------------------------------------------------- cgroups


def test_pids_limit(runner: Runner) -> None:
    script = (
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
        "i=0; fail=0; while [ $i -lt 30 ]; do sleep 1 & [ $? -eq 0 ] || fail=1; i=$((i+1)); done; "
        "wait"
    )
    r = runner.sh(script, resources=Resources(pids_limit=10))
    assert r.out.split()[0] == "10"
    assert "fork" in r.err.lower() or "resource temporarily unavailable" in r.err.lower()


def test_memory_and_cpu_limits(runner: Runner) -> None:
    memory = 64 * 1024 * 1024
    out = ok(
        runner.sh(
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; "
            "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us",
            resources=Resources(memory=memory, cpus=0.5),
        )
    )
    assert out.split() == [str(memory), "50000", "100000"]


def test_namespaced_sysctl(runner: Runner) -> None:
    out = ok(runner.sh("cat /proc/sys/net/ipv4/ip_forward", sysctls={"net.ipv4.ip_forward": "1"}))
    assert out.strip() == "1"


# ------------------------------------------------------------------ devices


def test_devices(runner: Runner) -> None:
    ok(runner.sh("echo x > /dev/null && head -c 4 /dev/urandom | wc -c && test -c /dev/zero"))
    # mknod is allowed (Docker's "c *:* m"), but the device cgroup refuses to open it.
    r = runner.sh("mknod /tmp/sda b 8 0 && head -c 1 /tmp/sda")
    assert r.rc != 0 and "not permitted" in r.err
    host_only = next(
        (
            d
            for d in ("/dev/kvm", "/dev/loop-control", "/dev/fuse", "/dev/mem")
            if os.path.exists(d)
        ),
        None,
    )
    if host_only is None:
        pytest.skip("no host-only device to compare")
    assert runner.sh(f"test -e {host_only}").rc != 0
    ok(runner.sh(f"test -c {host_only}", security=PRIVILEGED))


def test_binds_volumes_and_tmpfs(runner: Runner, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello").write_text("from the host\n")
    vol = tmp_path / "vol"
    vol.mkdir()
    out = ok(
        runner.sh(
            "cat /data/hello; touch /data/x 2>/dev/null || echo ro; echo v > /vol/file; "
            "grep ' /scratch ' /proc/mounts",
            mounts=[
                Mount("bind", "/data", str(src), read_only=True),
                Mount("volume", "/vol", "myvol"),
                Mount("tmpfs", "/scratch", options=["size=1m"]),
            ],
            volume_paths={"/vol": vol},
        )
    )
    lines = out.splitlines()
    assert lines[:2] == ["from the host", "ro"]
    assert "tmpfs" in lines[2] and "size=1024k" in lines[2] and "noexec" in lines[2]
    assert (vol / "file").read_text() == "v\n"
