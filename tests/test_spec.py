"""Unit tests for the OCI spec builder, signals and the image user database.

Pure: no runc here (tests/test_security.py runs the specs for real).
"""

from __future__ import annotations

import json
import os
import re
import resource
from pathlib import Path
from typing import Any

import pytest

from lamina.engine._process import merge_process
from lamina.errors import LaminaError
from lamina.runtime._signals import parse_signal, signal_from_exit_code, signal_name
from lamina.runtime._spec import (
    DEFAULT_CAPABILITIES,
    MASKED_PATHS,
    READONLY_PATHS,
    RLIM_INFINITY,
    build_spec,
    cgroup_path,
    resolve_capabilities,
    seccomp_for,
)
from lamina.runtime._types import (
    ContainerConfig,
    Mount,
    ProcessSpec,
    Resources,
    Security,
    Ulimit,
)
from lamina.runtime._userdb import resolve_user, secure_join
from lamina.runtime.common import DEFAULT_PATH

CID = "c0ffee" + "0" * 58
HOST_HARD = 20000


def fake_host_rlimits(res: int) -> tuple[int, int]:
    return (1024, HOST_HARD) if res == resource.RLIMIT_NOFILE else (-1, -1)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "# a comment\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "app:x:1000:1000:App:/home/app:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    (root / "etc" / "group").write_text(
        "root:x:0:\n"
        "daemon:x:1:\n"
        "tty:x:5:app\n"
        "app:x:1000:\n"
        "staff:x:50:daemon,app\n"
        "nogroup:x:65534:\n"
    )
    return root


def spec_for(rootfs: Path, image_config: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """The spec of a container of ``kw`` from an image of ``image_config`` (the whole
    config or its ``config`` object), its process merged as the engine merges it."""
    kw.setdefault("command", ["sh"])
    files = rootfs.parent
    config = ContainerConfig(image="sha256:x", **kw)
    image = image_config or {}
    inner = image.get("config") if isinstance(image.get("config"), dict) else image
    return build_spec(
        config=config,
        process=merge_process(config, inner, CID),
        rootfs=rootfs,
        container_id=CID,
        hostname_file=files / "hostname",
        hosts_file=files / "hosts",
        resolv_file=files / "resolv.conf",
        host_rlimits=fake_host_rlimits,
    )


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in spec["process"]["env"])


# ------------------------------------------------------------------ signals


@pytest.mark.parametrize(
    ("text", "num"),
    [("KILL", 9), ("SIGKILL", 9), ("sigkill", 9), ("9", 9), (9, 9), ("TERM", 15),
     ("SIGRTMIN", 34), ("SIGRTMIN+3", 37), ("rtmax-1", 63), ("SIGRTMAX", 64),
     ("IOT", 6), ("SIGCLD", 17), ("  hup ", 1)],
)  # fmt: skip
def test_parse_signal(text: str | int, num: int) -> None:
    assert parse_signal(text) == num


@pytest.mark.parametrize("bad", ["FOO", "SIG", "0", "65", "-9", "SIGRTMIN+31", "RTMAX+1", "", 0])
def test_parse_signal_refuses(bad: str | int) -> None:
    with pytest.raises(LaminaError) as e:
        parse_signal(bad)
    assert str(e.value) == f"invalid signal: {bad!r}"


def test_signal_names_and_exit_codes() -> None:
    assert signal_name(15) == "SIGTERM"
    assert signal_name(6) == "SIGABRT"
    assert signal_name(37) == "SIGRTMIN+3"
    assert signal_name(63) == "SIGRTMAX-1"
    assert all(parse_signal(signal_name(n)) == n for n in [*range(1, 32), *range(34, 65)])
    assert signal_from_exit_code(137) == "SIGKILL"
    assert signal_from_exit_code(143) == "SIGTERM"
    assert signal_from_exit_code(128) is None
    assert signal_from_exit_code(1) is None
    assert signal_from_exit_code(255) is None


# ------------------------------------------------------------------- userdb


def test_user_forms(rootfs: Path) -> None:
    assert resolve_user(rootfs, None).uid == 0
    root = resolve_user(rootfs, "")
    assert (root.uid, root.gid, root.home) == (0, 0, "/root")
    app = resolve_user(rootfs, "app")
    assert (app.uid, app.gid, app.home) == (1000, 1000, "/home/app")
    assert app.additional_gids == (5, 50)  # tty and staff list app as a member
    by_uid = resolve_user(rootfs, "1000")
    assert (by_uid.uid, by_uid.gid, by_uid.additional_gids) == (1000, 1000, (5, 50))
    named_group = resolve_user(rootfs, "app:staff")
    assert (named_group.uid, named_group.gid) == (1000, 50)
    assert named_group.additional_gids == ()  # explicit group: no supplementary ones (runc)
    uid_group = resolve_user(rootfs, "1:nogroup")
    assert (uid_group.uid, uid_group.gid, uid_group.home) == (1, 65534, "/usr/sbin")
    assert resolve_user(rootfs, "nobody").uid == 65534


def test_numeric_user_not_in_passwd(rootfs: Path) -> None:
    u = resolve_user(rootfs, "4242")
    assert (u.uid, u.gid, u.home, u.additional_gids) == (4242, 0, "/", ())
    u = resolve_user(rootfs, "4242:4343")
    assert (u.uid, u.gid) == (4242, 4343)


def test_unknown_names(rootfs: Path) -> None:
    with pytest.raises(LaminaError, match=r"^unable to find user bob: no matching entries"):
        resolve_user(rootfs, "bob")
    with pytest.raises(LaminaError, match=r"^unable to find group wheel: no matching entries"):
        resolve_user(rootfs, "app:wheel")
    with pytest.raises(LaminaError, match="out of range"):
        resolve_user(rootfs, "99999999999")


def test_no_passwd_file(tmp_path: Path) -> None:
    assert resolve_user(tmp_path, "123").uid == 123
    with pytest.raises(LaminaError, match="unable to find user app"):
        resolve_user(tmp_path, "app")


def test_passwd_symlink_stays_in_rootfs(tmp_path: Path) -> None:
    outside = tmp_path / "host-etc"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0::/evil:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "inner").mkdir()
    (root / "inner" / "passwd").write_text("good:x:7:7::/good:/bin/sh\n")
    # An absolute link and a ../ escape both resolve inside the rootfs.
    (root / "etc" / "passwd").symlink_to(str(outside / "passwd"))
    with pytest.raises(LaminaError, match="unable to find user evil"):
        resolve_user(root, "evil")
    (root / "etc" / "passwd").unlink()
    (root / "etc" / "passwd").symlink_to("../../../../../../inner/passwd")
    assert resolve_user(root, "good").home == "/good"
    assert secure_join(root, "/etc/passwd") == root / "inner" / "passwd"
    (root / "loop").symlink_to("/loop")
    with pytest.raises(LaminaError, match="too many levels"):
        secure_join(root, "/loop/x")


def test_passwd_fifo_does_not_hang(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    os.mkfifo(root / "etc" / "passwd")
    with pytest.raises(LaminaError, match="not a regular file"):
        resolve_user(root, "app")


# ---------------------------------------------------------- process and env


def test_command_precedence(rootfs: Path) -> None:
    image = {"config": {"Entrypoint": ["/entry"], "Cmd": ["default"]}}
    assert spec_for(rootfs, image, command=None)["process"]["args"] == ["/entry", "default"]
    assert spec_for(rootfs, image, command=["x"])["process"]["args"] == ["/entry", "x"]
    # A user entrypoint drops the image's CMD; a user command still follows it.
    args = spec_for(rootfs, image, command=None, entrypoint=["/bin/sh"])["process"]["args"]
    assert args == ["/bin/sh"]
    args = spec_for(rootfs, image, command=["-c", "x"], entrypoint=["/bin/sh"])
    assert args["process"]["args"] == ["/bin/sh", "-c", "x"]
    assert spec_for(rootfs, image, command=["ls"], entrypoint=[])["process"]["args"] == ["ls"]
    with pytest.raises(LaminaError, match=r"^no command specified$"):
        spec_for(rootfs, image, command=None, entrypoint=[])
    with pytest.raises(LaminaError, match=r"^no command specified$"):
        spec_for(rootfs, {"config": {"Cmd": None}}, command=None)
    # The bare config object (no "config" wrapper) is accepted too.
    assert spec_for(rootfs, {"Cmd": ["top"]}, command=None)["process"]["args"] == ["top"]


def test_env(rootfs: Path) -> None:
    image = {"config": {"Env": ["PATH=/image/bin", "A=image", "B=image"]}}
    spec = spec_for(rootfs, image, env=["B=user", "C=x=y", "A"], hostname="web")
    env = env_of(spec)
    assert env == {
        "PATH": "/image/bin", "HOSTNAME": "web", "B": "user", "C": "x=y", "HOME": "/root",
    }  # fmt: skip
    assert spec["process"]["env"][0] == "PATH=/image/bin"
    plain = env_of(spec_for(rootfs, tty=True, user="app"))
    assert plain == {
        "PATH": DEFAULT_PATH, "HOSTNAME": CID[:12], "TERM": "xterm", "HOME": "/home/app",
    }  # fmt: skip
    assert env_of(spec_for(rootfs, user="4242"))["HOME"] == "/"
    assert env_of(spec_for(rootfs, env=["HOME=/mine"]))["HOME"] == "/mine"
    with pytest.raises(LaminaError, match="invalid environment variable"):
        spec_for(rootfs, env=["=oops"])


def test_workdir_user_and_hostname(rootfs: Path) -> None:
    image = {"config": {"WorkingDir": "/srv/app/", "User": "app"}}
    spec = spec_for(rootfs, image)
    assert spec["process"]["cwd"] == "/srv/app"
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [5, 50]}
    assert spec["hostname"] == CID[:12]
    spec = spec_for(rootfs, image, working_dir="/tmp", user="nobody", hostname="h1")
    assert spec["process"]["cwd"] == "/tmp"
    assert spec["process"]["user"] == {"uid": 65534, "gid": 65534}
    assert spec["hostname"] == "h1"
    assert spec_for(rootfs)["process"]["cwd"] == "/"
    with pytest.raises(LaminaError, match="needs to be an absolute path"):
        spec_for(rootfs, working_dir="relative")
    with pytest.raises(LaminaError, match="unable to find user ghost"):
        spec_for(rootfs, user="ghost")


# ----------------------------------------------------------- capabilities


def test_default_capabilities(rootfs: Path) -> None:
    caps = spec_for(rootfs)["process"]["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}  # no inheritable/ambient
    assert set(caps["bounding"]) == set(DEFAULT_CAPABILITIES)
    assert caps["effective"] == caps["permitted"] == caps["bounding"]
    mask = sum(1 << n for n in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31))
    assert mask == 0xA80425FB
    # A non-root user keeps the bounding set only, as after a plain execve.
    assert set(spec_for(rootfs, user="app")["process"]["capabilities"]) == {"bounding"}


def test_cap_add_drop() -> None:
    caps = resolve_capabilities(["net_admin", "CAP_SYS_PTRACE"], ["MKNOD", "cap_chown"])
    assert "CAP_NET_ADMIN" in caps and "CAP_SYS_PTRACE" in caps
    assert "CAP_MKNOD" not in caps and "CAP_CHOWN" not in caps
    assert resolve_capabilities([], ["ALL"]) == []
    assert resolve_capabilities(["kill"], ["all"]) == ["CAP_KILL"]
    everything = resolve_capabilities(["ALL"], ["SYS_ADMIN"])
    assert "CAP_SYS_ADMIN" not in everything and "CAP_NET_ADMIN" in everything
    with pytest.raises(LaminaError, match=r"^unknown capability: 'FLY'$"):
        resolve_capabilities(["FLY"])
    with pytest.raises(LaminaError, match="unknown capability"):
        resolve_capabilities([], ["CAP_NOPE"])


def test_privileged(rootfs: Path) -> None:
    spec = spec_for(rootfs, security=Security(privileged=True))
    linux = spec["linux"]
    assert "seccomp" not in linux
    assert "maskedPaths" not in linux and "readonlyPaths" not in linux
    assert linux["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert any(d["path"] == "/dev/null" for d in linux["devices"])
    assert len(spec["process"]["capabilities"]["bounding"]) > 30
    sysfs = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert "rw" in sysfs["options"]


def test_unavailable_capability_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from lamina.runtime import _spec

    monkeypatch.setattr(
        _spec, "_host_capabilities", lambda: frozenset(_spec.CAPABILITIES) - {"CAP_SYS_RESOURCE"}
    )
    with pytest.raises(LaminaError, match="CAP_SYS_RESOURCE is not available on this host"):
        resolve_capabilities(["SYS_RESOURCE"])
    assert "CAP_SYS_RESOURCE" not in resolve_capabilities(["ALL"])
    assert "CAP_SYS_RESOURCE" not in resolve_capabilities(privileged=True)


# ------------------------------------------------------- masked paths etc


def test_masked_and_readonly_paths(rootfs: Path) -> None:
    linux = spec_for(rootfs)["linux"]
    assert linux["maskedPaths"] == [
        "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
        "/sys/firmware", "/sys/devices/virtual/powercap",
    ]  # fmt: skip
    assert linux["readonlyPaths"] == list(READONLY_PATHS) == [
        "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
    ]  # fmt: skip
    assert tuple(linux["maskedPaths"]) == MASKED_PATHS
    devices = linux["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in devices


def test_sysctls(rootfs: Path) -> None:
    ok = {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000", "fs.mqueue.msg_max": "20"}
    assert spec_for(rootfs, sysctls=ok)["linux"]["sysctl"] == ok
    with pytest.raises(LaminaError, match=r"sysctl 'vm.swappiness' is not allowed: it is not"):
        spec_for(rootfs, sysctls={"vm.swappiness": "1"})
    with pytest.raises(LaminaError, match=r"kernel\.hostname"):
        spec_for(rootfs, sysctls={"kernel.hostname": "x"})
    with pytest.raises(LaminaError, match="not allowed with --network host"):
        spec_for(rootfs, sysctls={"net.core.somaxconn": "1"}, network="host")


# ------------------------------------------------------------------ ulimits


def rlimits(spec: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {r["type"]: (r["soft"], r["hard"]) for r in spec["process"]["rlimits"]}


def test_ulimits(rootfs: Path) -> None:
    # Default: the host's own nofile, nothing else.
    assert rlimits(spec_for(rootfs)) == {"RLIMIT_NOFILE": (1024, HOST_HARD)}
    spec = spec_for(rootfs, ulimits=[Ulimit("nofile", 100, 200), Ulimit("core", -1, -1)])
    assert rlimits(spec) == {
        "RLIMIT_NOFILE": (100, 200), "RLIMIT_CORE": (RLIM_INFINITY, RLIM_INFINITY),
    }  # fmt: skip


def test_ulimit_above_host_is_refused(rootfs: Path) -> None:
    with pytest.raises(LaminaError) as e:
        spec_for(rootfs, ulimits=[Ulimit("nofile", 1048576, 1048576)])
    assert str(e.value) == "ulimit nofile=1048576:1048576 exceeds the host's hard limit 20000"
    with pytest.raises(LaminaError, match="soft limit exceeds the hard limit"):
        spec_for(rootfs, ulimits=[Ulimit("nproc", 10, 5)])
    with pytest.raises(LaminaError, match="unknown ulimit name 'bogus'"):
        spec_for(rootfs, ulimits=[Ulimit("bogus", 1, 1)])


def test_default_nofile_clamped_to_real_host(rootfs: Path) -> None:
    spec = build_spec(
        config=ContainerConfig(image="x", command=["sh"]),
        process=ProcessSpec(["sh"], []),
        rootfs=rootfs,
        container_id=CID,
        hostname_file=rootfs / "h",
        hosts_file=rootfs / "h",
        resolv_file=rootfs / "h",
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want_hard = RLIM_INFINITY if hard < 0 else hard
    assert rlimits(spec)["RLIMIT_NOFILE"] == (RLIM_INFINITY if soft < 0 else soft, want_hard)


# ------------------------------------------------------------------- mounts


def mounts_by_dest(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["destination"]: m for m in spec["mounts"]}


def test_default_mounts(rootfs: Path) -> None:
    spec = spec_for(rootfs)
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests[:7] == [
        "/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup", "/dev/mqueue", "/dev/shm",
    ]  # fmt: skip
    m = mounts_by_dest(spec)
    assert "size=65536k" in m["/dev"]["options"] and "mode=755" in m["/dev"]["options"]
    assert {"newinstance", "ptmxmode=0666", "gid=5"} <= set(m["/dev/pts"]["options"])
    assert "size=67108864" in m["/dev/shm"]["options"]
    assert "ro" in m["/sys"]["options"] and "ro" in m["/sys/fs/cgroup"]["options"]
    for f, name in (("/etc/hostname", "hostname"), ("/etc/hosts", "hosts")):
        assert m[f]["source"] == str(rootfs.parent / name)
        assert m[f]["options"] == ["rbind", "rprivate", "rw"]
    assert m["/etc/resolv.conf"]["type"] == "bind"
    assert spec["root"] == {"path": str(rootfs), "readonly": False}


def test_user_mounts(rootfs: Path, tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.mkdir()
    vol = tmp_path / "vol"
    spec = build_spec(
        config=ContainerConfig(
            image="x",
            command=["sh"],
            mounts=[
                Mount("bind", "/data/sub", str(src), read_only=True, options=["rshared", "z"]),
                Mount("volume", "/data", "cache"),
                Mount("tmpfs", "/dev/shm", options=["size=1m"]),
                Mount("tmpfs", "/run", options=["exec,mode=755"], read_only=True),
            ],
            tmpfs={"/tmp": "size=64m,mode=1777"},
            security=Security(read_only_rootfs=True),
        ),
        process=ProcessSpec(["sh"], []),
        rootfs=rootfs,
        container_id=CID,
        hostname_file=tmp_path / "h",
        hosts_file=tmp_path / "hs",
        resolv_file=tmp_path / "r",
        volume_paths={"/data": vol},
        host_rlimits=fake_host_rlimits,
    )
    m = mounts_by_dest(spec)
    assert spec["root"]["readonly"] is True
    assert m["/data/sub"] == {
        "destination": "/data/sub", "type": "bind", "source": str(src),
        "options": ["rbind", "rshared", "ro"],
    }  # fmt: skip
    assert m["/data"]["source"] == str(vol) and "rw" in m["/data"]["options"]
    assert m["/tmp"]["options"] == ["noexec", "nosuid", "nodev", "size=64m", "mode=1777"]
    assert m["/run"]["options"] == ["nosuid", "nodev", "exec", "mode=755", "ro"]
    # The user's /dev/shm replaces the default one; parents mount before children.
    assert m["/dev/shm"]["options"] == ["noexec", "nosuid", "nodev", "size=1m"]
    assert [x["destination"] for x in spec["mounts"]].count("/dev/shm") == 1
    dests = [x["destination"] for x in spec["mounts"]]
    assert dests.index("/data") < dests.index("/data/sub")
    # With a read-only rootfs, the network files are read-only too (Docker).
    assert m["/etc/hosts"]["options"][-1] == "ro"


def test_mount_errors(rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(LaminaError, match="bind source path does not exist: /nope"):
        spec_for(rootfs, mounts=[Mount("bind", "/x", "/nope")])
    with pytest.raises(LaminaError, match="must be an absolute path"):
        spec_for(rootfs, mounts=[Mount("bind", "x", str(tmp_path))])
    with pytest.raises(LaminaError, match="cannot be the root"):
        spec_for(rootfs, tmpfs={"/": ""})
    with pytest.raises(LaminaError, match="duplicate mount point: /x"):
        spec_for(rootfs, mounts=[Mount("tmpfs", "/x")], tmpfs={"/x": ""})
    with pytest.raises(LaminaError, match="no volume directory prepared for /v"):
        spec_for(rootfs, mounts=[Mount("volume", "/v", "name")])


# --------------------------------------------------------- linux section


def test_namespaces_and_cgroups(rootfs: Path) -> None:
    linux = spec_for(rootfs)["linux"]
    types = [n["type"] for n in linux["namespaces"]]
    assert {"pid", "ipc", "uts", "mount", "network"} <= set(types)
    assert linux["cgroupsPath"] == f"/lamina/{CID}"
    assert cgroup_path("abc") == "/lamina/abc"
    assert cgroup_path("abc", "lamina-test/") == "/lamina-test/abc"
    host = [n["type"] for n in spec_for(rootfs, network="host")["linux"]["namespaces"]]
    assert "network" not in host
    spec = build_spec(
        config=ContainerConfig(image="x", command=["sh"], network="container:abc"),
        process=ProcessSpec(["sh"], []),
        rootfs=rootfs,
        container_id=CID,
        hostname_file=rootfs / "h",
        hosts_file=rootfs / "h",
        resolv_file=rootfs / "h",
        netns_path="/proc/42/ns/net",
        pidns_path="/proc/42/ns/pid",
        host_rlimits=fake_host_rlimits,
    )
    ns = {n["type"]: n for n in spec["linux"]["namespaces"]}
    assert ns["network"]["path"] == "/proc/42/ns/net"
    assert ns["pid"]["path"] == "/proc/42/ns/pid"
    with pytest.raises(LaminaError, match="network namespace is unknown"):
        spec_for(rootfs, network="container:abc")


def test_resources(rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lamina.runtime import _spec

    monkeypatch.setattr(_spec, "_swap_accounting", lambda: True)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    res = spec_for(
        rootfs,
        resources=Resources(
            cpus=1.5, cpu_shares=512, cpuset_cpus="0-1,3", memory=64 << 20, pids_limit=50
        ),
    )["linux"]["resources"]
    assert res["cpu"] == {"quota": 150000, "period": 100000, "shares": 512, "cpus": "0-1,3"}
    assert res["memory"] == {"limit": 64 << 20, "swap": 128 << 20}  # docker: 2x by default
    assert res["pids"] == {"limit": 50}
    mem = spec_for(rootfs, resources=Resources(memory=64 << 20, memory_swap=-1))
    assert mem["linux"]["resources"]["memory"] == {"limit": 64 << 20, "swap": -1}
    monkeypatch.setattr(_spec, "_swap_accounting", lambda: False)
    mem = spec_for(rootfs, resources=Resources(memory=64 << 20, memory_swap=100 << 20))
    assert mem["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    assert "pids" not in spec_for(rootfs, resources=Resources(pids_limit=-1))["linux"]["resources"]
    for bad, msg in [
        (Resources(cpus=8), "only 4 CPUs available"),
        (Resources(cpus=0), "range is from 0.01"),
        (Resources(cpuset_cpus="0-9"), "requested CPUs are not available"),
        (Resources(cpuset_cpus="a"), "invalid --cpuset-cpus"),
        (Resources(memory=1000), "minimum memory limit allowed is 6MB"),
        (Resources(memory=64 << 20, memory_swap=32 << 20), "must be at least --memory"),
        (Resources(memory_swap=1 << 30), "needs --memory"),
    ]:
        with pytest.raises(LaminaError, match=msg):
            spec_for(rootfs, resources=bad)


# ------------------------------------------------------------------ seccomp


def syscall_rules(seccomp: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in seccomp["syscalls"] if name in r["names"]]


def test_default_seccomp(rootfs: Path) -> None:
    sec = spec_for(rootfs)["linux"]["seccomp"]
    assert sec["defaultAction"] == "SCMP_ACT_ALLOW"
    assert sec["architectures"][0] in ("SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64")
    for name in (
        "mount",
        "umount2",
        "unshare",
        "setns",
        "keyctl",
        "bpf",
        "kexec_load",
        "init_module",
        "reboot",
        "settimeofday",
        "open_by_handle_at",
        "pivot_root",
    ):
        (rule,) = syscall_rules(sec, name)
        assert (rule["action"], rule["errnoRet"]) == ("SCMP_ACT_ERRNO", 1), name
    assert syscall_rules(sec, "clone3")[0]["errnoRet"] == 38  # ENOSYS: libc falls back
    clone_flags = {r["args"][0]["value"] for r in syscall_rules(sec, "clone")}
    assert 0x10000000 in clone_flags and 0x20000 in clone_flags  # NEWUSER, NEWNS
    assert not syscall_rules(sec, "ptrace")  # allowed on kernels >= 4.8, as Docker
    # Only the OCI fields reach the spec.
    assert all(set(r) <= {"names", "action", "errnoRet", "args"} for r in sec["syscalls"])
    json.dumps(sec)


def test_seccomp_follows_capabilities(rootfs: Path) -> None:
    sec = spec_for(rootfs, security=Security(cap_add=["SYS_ADMIN"]))["linux"]["seccomp"]
    for name in ("mount", "unshare", "setns", "clone", "clone3", "bpf"):
        assert not syscall_rules(sec, name), name
    assert syscall_rules(sec, "keyctl")  # never allowed
    sec = spec_for(rootfs, security=Security(cap_add=["SYS_TIME", "SYS_MODULE"]))["linux"]
    assert not syscall_rules(sec["seccomp"], "settimeofday")
    assert not syscall_rules(sec["seccomp"], "init_module")
    assert syscall_rules(sec["seccomp"], "mount")
    sec = spec_for(rootfs, security=Security(cap_drop=["SYS_CHROOT"]))["linux"]["seccomp"]
    assert syscall_rules(sec, "chroot")


def test_seccomp_is_a_fresh_copy(rootfs: Path) -> None:
    a = spec_for(rootfs)["linux"]["seccomp"]
    a["syscalls"].clear()
    assert spec_for(rootfs)["linux"]["seccomp"]["syscalls"]


def _rule_matches(arg: dict[str, Any], x: int) -> bool:
    if arg["op"] == "SCMP_CMP_MASKED_EQ":
        return bool(x & arg["value"] == arg["valueTwo"])
    if arg["op"] == "SCMP_CMP_GT":
        return bool(x > arg["value"])
    raise AssertionError(arg["op"])


def test_seccomp_personality_allows_only_docker_values(rootfs: Path) -> None:
    rules = syscall_rules(spec_for(rootfs)["linux"]["seccomp"], "personality")

    def denied(x: int) -> bool:  # one condition per rule; the rules OR together
        return any(_rule_matches(r["args"][0], x) for r in rules)

    allowed = {0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}
    samples = set(allowed)
    samples |= {1 << b for b in range(40)}
    samples |= {0xFFFFFFFF ^ (1 << b) for b in range(32)}
    samples |= {0x0040000, 0x0400000, 0x0040008, 0x80000000, 0x7FFFFFFF, 0x1_0000_0000}
    samples |= {(i * 2654435761) & 0xFFFFFFFF for i in range(2000)}
    for x in samples:
        assert denied(x) == (x not in allowed), hex(x)


def test_seccomp_options(rootfs: Path, tmp_path: Path) -> None:
    assert "seccomp" not in spec_for(rootfs, security=Security(seccomp="unconfined"))["linux"]
    prof = tmp_path / "p.json"
    prof.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                    {"name": "mount", "action": "SCMP_ACT_ALLOW",
                     "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                ],
            }
        )
    )  # fmt: skip
    sec = spec_for(rootfs, security=Security(seccomp=str(prof)))["linux"]["seccomp"]
    assert sec == {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}],
    }
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(LaminaError, match=re.escape(f"seccomp profile {bad}: invalid JSON")):
        seccomp_for(str(bad), [], privileged=False)
    bad.write_text("[]")
    with pytest.raises(LaminaError, match=re.escape(f"seccomp profile {bad}: not a JSON object")):
        seccomp_for(str(bad), [], privileged=False)
    with pytest.raises(LaminaError, match=r"seccomp profile /nonexistent\.json: No such file"):
        seccomp_for("/nonexistent.json", [], privileged=False)


def test_spec_is_json_and_fast(rootfs: Path) -> None:
    import time

    spec_for(rootfs)
    start = time.perf_counter()
    for _ in range(50):
        json.dumps(spec_for(rootfs))
    per_call = (time.perf_counter() - start) / 50
    assert per_call < 0.005, f"build_spec took {per_call * 1000:.2f} ms"
