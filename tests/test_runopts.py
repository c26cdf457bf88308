"""Unit tests of run/create flag parsing (lamina.engine._options): Docker's rules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lamina.engine._options import (
    InvalidOption,
    ParsedRun,
    RunOptions,
    apply_isolation,
    build_config,
    parse_cpus,
    parse_duration,
    parse_env,
    parse_env_file,
    parse_labels,
    parse_memory,
    parse_mount,
    parse_network,
    parse_publish,
    parse_resources,
    parse_time,
    parse_tmpfs,
    parse_ulimit,
    parse_volume,
)
from lamina.runtime import Mount, Security
from lamina.runtime._types import PortMapping


def _build(**kw: object) -> ParsedRun:
    command = kw.pop("command", None)
    return build_config(
        RunOptions(**kw),  # type: ignore[arg-type]
        image="sha256:" + "a" * 64,
        image_ref="busybox",
        command=command,  # type: ignore[arg-type]
        environ={"HOSTVAR": "from-host"},
        cpu_count=4,
    )


# -- memory and cpus


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1024", 1024),
        ("1024b", 1024),
        ("10k", 10 * 1024),
        ("10K", 10 * 1024),
        ("512m", 512 * 1024**2),
        ("512MB", 512 * 1024**2),
        ("2g", 2 * 1024**3),
        ("2GiB", 2 * 1024**3),
        ("1.5g", int(1.5 * 1024**3)),
        ("1t", 1024**4),
    ],
)
def test_memory_units(value: str, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["", "m", "12x", "-5m", "1.2.3g", "ten"])
def test_memory_refuses_garbage(value: str) -> None:
    with pytest.raises(InvalidOption, match="--memory"):
        parse_memory(value)


def test_memory_floor_and_swap_rules() -> None:
    with pytest.raises(InvalidOption, match="minimum is 6m"):
        parse_resources(memory="4m")
    with pytest.raises(InvalidOption, match="needs --memory"):
        parse_resources(memory_swap="1g")
    with pytest.raises(InvalidOption, match="at least --memory"):
        parse_resources(memory="1g", memory_swap="512m")
    res = parse_resources(memory="512m", memory_swap="-1")
    assert (res.memory, res.memory_swap) == (512 * 1024**2, -1)
    # update: the runtime checks against the limits already in place
    assert parse_resources(memory_swap="1g", for_update=True).memory_swap == 1024**3


def test_cpus() -> None:
    assert parse_cpus("1.5") == 1.5
    assert parse_cpus("0.01") == 0.01
    for bad in ("0", "-1", "abc", "nan"):
        with pytest.raises(InvalidOption, match="--cpus"):
            parse_cpus(bad)
    with pytest.raises(InvalidOption, match="only 4 CPUs"):
        parse_cpus("8", cpu_count=4)


def test_other_resources() -> None:
    res = parse_resources(cpu_shares=512, cpuset_cpus="0-1,3", pids_limit=100)
    assert (res.cpu_shares, res.cpuset_cpus, res.pids_limit) == (512, "0-1,3", 100)
    assert parse_resources(pids_limit=-1).pids_limit == -1
    for bad in ("a", "1-", "3-1", "0,,1"):
        with pytest.raises(InvalidOption, match="--cpuset-cpus"):
            parse_resources(cpuset_cpus=bad)


# -- -v and --mount


def test_volume_bind(tmp_path: Path) -> None:
    m = parse_volume("/srv/data:/data")
    assert m == Mount(type="bind", source="/srv/data", target="/data")
    m = parse_volume("/srv/data:/data:ro")
    assert (m.type, m.read_only) == ("bind", True)
    m = parse_volume("/srv/data:/data:rw,rshared,z")
    assert (m.read_only, m.options) == (False, ["rshared"])


def test_volume_relative_bind_is_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_volume("./sub:/x").source == f"{tmp_path}/sub"


def test_volume_named_and_anonymous() -> None:
    named = Mount(type="volume", source="cache", target="/var/cache")
    assert parse_volume("cache:/var/cache") == named
    assert parse_volume("cache:/var/cache:ro").read_only
    assert parse_volume("/scratch") == Mount(type="volume", source="", target="/scratch")
    assert parse_volume("/scratch:ro") == Mount(type="volume", target="/scratch", read_only=True)
    assert parse_volume("/a/b/../c/").target == "/a/c"


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("relative", "not an absolute path"),
        ("vol:ctr", "not an absolute path"),
        ("/h:/c:bogus", "unknown option"),
        ("a:b:c:d", "too many"),
        ("bad name!:/c", "neither an absolute host path nor a valid volume name"),
    ],
)
def test_volume_refused(spec: str, why: str) -> None:
    with pytest.raises(InvalidOption, match=why):
        parse_volume(spec)


def test_mount_forms(tmp_path: Path) -> None:
    m = parse_mount(f"type=bind,source={tmp_path},target=/in,readonly")
    assert m == Mount(type="bind", source=str(tmp_path), target="/in", read_only=True)
    m = parse_mount(f"type=bind,src={tmp_path},dst=/in,ro=false,bind-propagation=rslave")
    assert (m.read_only, m.options) == (False, ["rslave"])
    m = parse_mount("type=volume,source=v1,target=/v")
    assert m == Mount(type="volume", source="v1", target="/v")
    assert parse_mount("target=/anon") == Mount(type="volume", target="/anon")  # volume by default
    m = parse_mount("type=tmpfs,destination=/t,tmpfs-size=64m,tmpfs-mode=1777")
    assert m == Mount(type="tmpfs", target="/t", options=[f"size={64 * 1024**2}", "mode=1777"])
    # CSV quoting, as Docker's encoding/csv: a comma inside a quoted field
    m = parse_mount(f'type=bind,"source={tmp_path}",target=/x')
    assert m.source == str(tmp_path)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("type=bind,source=/definitely/not/here,target=/x", "does not exist"),
        ("type=bind,target=/x", "source is required"),
        ("type=volume,source=v", "target is required"),
        ("type=nfs,target=/x", "type must be"),
        ("type=tmpfs,source=x,target=/t", "takes no source"),
        ("type=volume,target=rel", "not an absolute path"),
        ("type=volume,target=/x,colour=blue", "unknown field"),
        ("type=volume,target=/x,readonly=maybe", "not true or false"),
        ("type=tmpfs,target=/t,tmpfs-mode=999", "not octal"),
    ],
)
def test_mount_refused(spec: str, why: str) -> None:
    with pytest.raises(InvalidOption, match=why):
        parse_mount(spec)


def test_tmpfs() -> None:
    assert parse_tmpfs("/run") == ("/run", "")
    opts = "rw,noexec,size=64m,mode=1777"
    assert parse_tmpfs(f"/run:{opts}") == ("/run", opts)
    with pytest.raises(InvalidOption, match="absolute"):
        parse_tmpfs("run")
    with pytest.raises(InvalidOption, match="size"):
        parse_tmpfs("/run:size=lots")


# -- environment


def test_env_file(tmp_path: Path) -> None:
    f = tmp_path / "env"
    f.write_text(
        "\ufeff# a comment\n"
        "\n"
        "A=1\n"
        "  B=two words  \n"
        'C="quoted"\n'
        "EMPTY=\n"
        "HOSTVAR\n"
        "UNSETVAR\n"
        "    # indented comment\n"
        "D=x=y\n"
    )
    env = parse_env_file(str(f), {"HOSTVAR": "from-host"})
    assert env == ["A=1", "B=two words  ", 'C="quoted"', "EMPTY=", "HOSTVAR=from-host", "D=x=y"]


def test_env_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "env"
    f.write_text("BAD KEY=1\n")
    with pytest.raises(InvalidOption, match="line 1: variable 'BAD KEY' contains whitespace"):
        parse_env_file(str(f), {})
    f.write_text("=1\n")
    with pytest.raises(InvalidOption, match="no variable name"):
        parse_env_file(str(f), {})
    with pytest.raises(InvalidOption, match="cannot read --env-file"):
        parse_env_file(str(f) + ".missing", {})


def test_env_flags_and_precedence(tmp_path: Path) -> None:
    env = parse_env(["A=1", "HOSTVAR", "NOPE", "B="], {"HOSTVAR": "h"})
    assert env == ["A=1", "HOSTVAR=h", "B="]
    with pytest.raises(InvalidOption, match="no name"):
        parse_env(["=x"], {})
    f = tmp_path / "env"
    f.write_text("A=file\nB=file\n")
    cfg = _build(env_files=[str(f)], env=["A=flag"]).config
    # -e comes after the file, so it wins when the runtime applies them in order
    assert cfg.env == ["A=file", "B=file", "A=flag"]


def test_labels(tmp_path: Path) -> None:
    f = tmp_path / "labels"
    f.write_text("# c\nteam=core\nbare\n")
    assert parse_labels(["a=1", "flag", "team=cli"], [str(f)]) == {
        "team": "cli",
        "bare": "",
        "a": "1",
        "flag": "",
    }


# -- limits and security


def test_ulimit() -> None:
    u = parse_ulimit("nofile=1024:2048")
    assert (u.name, u.soft, u.hard) == ("nofile", 1024, 2048)
    u = parse_ulimit("nproc=512")
    assert (u.soft, u.hard) == (512, 512)
    u = parse_ulimit("core=-1")
    assert u.soft == u.hard == 2**64 - 1
    assert parse_ulimit("memlock=unlimited").hard == 2**64 - 1
    for bad, why in (
        ("nofile", "NAME=SOFT"),
        ("bogus=1", "unknown limit"),
        ("nofile=2048:1024", "soft limit 2048 is above hard 1024"),
        ("nofile=many", "not a number"),
    ):
        with pytest.raises(InvalidOption, match=why):
            parse_ulimit(bad)


def _security(*opts: str) -> Security:
    cfg = _build(security_opt=list(opts)).config
    sec: Security = cfg.security
    return sec


def test_security_opt(tmp_path: Path) -> None:
    assert _security("seccomp=unconfined").seccomp == "unconfined"
    profile = tmp_path / "p.json"
    profile.write_text("{}")
    assert _security(f"seccomp={profile}").seccomp == str(profile)
    assert _security("no-new-privileges").no_new_privileges is True
    assert _security("no-new-privileges:false").no_new_privileges is False
    assert _security("no-new-privileges=true").no_new_privileges is True
    assert _security("label=disable").seccomp is None  # a no-op here
    with pytest.raises(InvalidOption, match="no seccomp profile"):
        _security("seccomp=/no/such/profile.json")
    with pytest.raises(InvalidOption, match="not supported"):
        _security("apparmor=docker-default")
    with pytest.raises(InvalidOption, match="--security-opt"):
        _security("whatever")


def test_capabilities_and_privileged() -> None:
    cfg = _build(cap_add=["net_admin", "CAP_SYS_TIME"], cap_drop=["all"], privileged=True).config
    assert cfg.security.cap_add == ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
    assert cfg.security.cap_drop == ["ALL"]
    assert cfg.security.privileged
    with pytest.raises(InvalidOption, match="unknown capability"):
        _build(cap_add=["FLY"])


def test_sysctls() -> None:
    cfg = _build(sysctls=["net.ipv4.ip_forward=1", "kernel.shmmax=1000"]).config
    assert cfg.sysctls == {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000"}
    with pytest.raises(InvalidOption, match="not namespaced"):
        _build(sysctls=["vm.swappiness=1"])
    with pytest.raises(InvalidOption, match="--network host"):
        _build(sysctls=["net.ipv4.ip_forward=1"], network="host")


# -- network, isolation, whole config


def test_network() -> None:
    assert parse_network("none") == "none"
    assert parse_network("host") == "host"
    assert parse_network("container:abc") == "container:abc"
    # Docker's names of the default bridge are lamina's default network.
    assert parse_network("bridge") == parse_network("default") == "lamina"
    assert parse_network("mynet") == "mynet"  # whether it exists is create's question
    with pytest.raises(InvalidOption, match="not a network name"):
        parse_network("my net")


def test_networks_and_their_options() -> None:
    cfg = _build(
        network=["front", "back"], network_aliases=["www"], ip="10.9.0.5",
        mac_address="92:D0:C6:0A:29:33", add_hosts=["db:10.1.1.1", "gw:host-gateway"],
        dns=["9.9.9.9"], dns_search=["example.org"], dns_options=["ndots:2"],
        publish_all=True, expose=["8000-8001/udp"],
    ).config  # fmt: skip
    assert cfg.network == "front"
    assert [(n.name, n.aliases, n.ip, n.mac) for n in cfg.networks] == [
        ("front", ["www"], "10.9.0.5", "92:d0:c6:0a:29:33"),
        ("back", [], "", ""),
    ]
    assert cfg.extra_hosts == ["db:10.1.1.1", "gw:host-gateway"]
    assert (cfg.dns, cfg.dns_search, cfg.dns_options) == (["9.9.9.9"], ["example.org"], ["ndots:2"])
    assert cfg.publish_all and cfg.expose == ["8000/udp", "8001/udp"]
    # No --network: the default bridge, with the options given.
    default = _build(ip="10.9.0.5").config
    assert [(n.name, n.ip) for n in default.networks] == [("lamina", "10.9.0.5")]
    for kw, why in (
        ({"network": ["none", "front"]}, "conflicting options"),
        ({"network": "host", "network_aliases": ["a"]}, "need a bridge network"),
        ({"ip": "10.1.1"}, "not an IP address"),
        ({"ip": "fd00::1"}, "not an IPv4 address"),
        ({"mac_address": "01:00:00:00:00:01"}, "multicast"),
        ({"add_hosts": ["nohost"]}, "expected NAME:IP"),
        ({"add_hosts": ["h:1.2.3"]}, "not an IP address"),
        ({"dns": ["resolver"]}, "not an IP address"),
        ({"expose": ["80/sctp"]}, "tcp or udp"),
        ({"network": "none", "publish": ["80"]}, "port publishing"),
    ):
        with pytest.raises(InvalidOption, match=why):
            _build(**kw)


def test_isolation() -> None:
    assert _build(isolation="").config.isolation == "process"
    assert _build(isolation="auto").config.isolation == "auto"
    assert _build(isolation="VM").config.isolation == "vm"
    with pytest.raises(InvalidOption, match="expected process, vm or auto"):
        _build(isolation="hyperv")


def test_build_config_whole() -> None:
    parsed = _build(
        name="web",
        entrypoint="",
        command=["sh", "-c", "true"],
        workdir="/srv",
        user="1000:1000",
        hostname="box",
        interactive=True,
        tty=True,
        volumes=["/definitely/not/here:/data", "named:/n", "/anon"],
        tmpfs=["/run:size=1m"],
        memory="64m",
        cpus="0.5",
        read_only=True,
        init=True,
        stop_signal="SIGINT",
        stop_timeout=3,
        labels=["a=b"],
        auto_remove=True,
    )
    cfg = parsed.config
    assert cfg.name == "web"
    assert cfg.entrypoint == []  # --entrypoint "" clears the image's
    assert cfg.command == ["sh", "-c", "true"]
    assert (cfg.working_dir, cfg.user, cfg.hostname) == ("/srv", "1000:1000", "box")
    assert cfg.tty and cfg.stdin_open and cfg.init and cfg.auto_remove
    assert [m.type for m in cfg.mounts] == ["bind", "volume", "volume"]
    assert cfg.tmpfs == {"/run": "size=1m"}
    assert cfg.resources.memory == 64 * 1024**2 and cfg.resources.cpus == 0.5
    assert cfg.security.read_only_rootfs
    assert (cfg.stop_signal, cfg.stop_timeout, cfg.labels) == ("SIGINT", 3, {"a": "b"})
    assert cfg.network == "lamina"  # the default bridge, as Docker's ``bridge``
    assert parsed.bind_dirs_to_create == ["/definitely/not/here"]
    assert _build(entrypoint="/bin/sh -c").config.entrypoint == ["/bin/sh -c"]
    assert _build().config.entrypoint is None


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"name": "bad name"}, "invalid container name"),
        ({"workdir": "relative"}, "absolute path"),
        ({"volumes": ["/a:/x", "vol:/x"]}, "duplicate mount point: /x"),
        ({"volumes": ["/a:/x"], "tmpfs": ["/x"]}, "duplicate mount point"),
        ({"publish": ["80:80"], "network": "container:abc"}, "port publishing"),
        ({"hostname": "h", "network": "container:abc"}, "conflicting options"),
        ({"stop_timeout": -5}, "--stop-timeout"),
    ],
)
def test_build_config_refused(kw: dict[str, object], why: str) -> None:
    with pytest.raises(InvalidOption, match=why) as exc:
        _build(**kw)
    assert exc.value.exit_code == 125
    assert "\n" not in str(exc.value)


def test_publish_with_host_network_warns() -> None:
    parsed = _build(publish=["80:80"], network="host")
    assert parsed.warnings
    assert parsed.config.ports == []  # discarded, as Docker does


def test_parse_publish() -> None:
    assert parse_publish("8080:80") == [PortMapping(80, "tcp", "", 8080)]
    assert parse_publish("127.0.0.1:8080:80/udp") == [PortMapping(80, "udp", "127.0.0.1", 8080)]
    assert parse_publish("0.0.0.0:8080:80") == [PortMapping(80, "tcp", "", 8080)]
    assert parse_publish("80") == [PortMapping(80, "tcp", "", 0)]  # a free host port
    assert parse_publish("127.0.0.1::80") == [PortMapping(80, "tcp", "127.0.0.1", 0)]
    assert parse_publish("8000-8001:80-81/TCP") == [
        PortMapping(80, "tcp", "", 8000),
        PortMapping(81, "tcp", "", 8001),
    ]
    assert str(PortMapping(80, "tcp", "", 8080)) == "0.0.0.0:8080->80/tcp"
    for bad, why in (
        ("", "expected"),
        ("1:2:3:4", "expected"),
        ("0:80", "out of range"),
        ("80-79:80-79", "out of range"),
        ("x:80", "not a port number"),
        ("999.1.1.1:80:80", "IPv4"),
        ("80/sctp", "tcp or udp"),
        ("8000-8005:80", "differ in length"),
    ):
        with pytest.raises(InvalidOption, match=why) as exc:
            parse_publish(bad)
        assert "\n" not in str(exc.value)


def test_network_follows_the_isolation() -> None:
    vm = _build(isolation="vm", publish=["8080:80", "81"]).config
    # VMs: the default bridge too, as process containers; NAT when asked for.
    assert vm.network == "lamina" and [n.name for n in vm.networks] == ["lamina"]
    assert len(vm.ports) == 2
    assert _build(isolation="vm", network="nat").config.networks == []
    assert _build(isolation="vm", network="none").config.network == "none"
    assert _build(isolation="vm", network="front").config.network == "front"
    assert _build().config.network == "lamina"  # process containers: the default bridge
    for kw, why in (
        ({"isolation": "vm", "network": "host"}, "not supported for VM containers"),
        ({"isolation": "vm", "network": "container:abc"}, "not supported for VM containers"),
        ({"isolation": "vm", "network": "none", "publish": ["80"]}, "--network none"),
        ({"isolation": "vm", "network": "nat", "publish_all": True}, "needs a bridge network"),
        ({"network": "nat"}, "for VM containers"),
        ({"vm_base": "./bundle"}, "--vm-base needs --isolation vm"),
        ({"isolation": "vm", "publish": ["80:80", "127.0.0.1:80:81"]}, "published twice"),
    ):
        with pytest.raises(InvalidOption, match=why):
            _build(**kw)
    # auto: the rules wait for the isolation the image gets.
    parsed = _build(isolation="auto", publish=["80"])
    assert parsed.config.isolation == "auto"
    apply_isolation(parsed, "vm")
    assert (parsed.config.isolation, parsed.config.network) == ("vm", "lamina")
    process = _build(isolation="auto", publish=["80"])
    apply_isolation(process, "process")
    assert process.config.network == "lamina" and process.config.ports


# -- times for logs --since/--until


def test_durations() -> None:
    assert parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("300ms") == pytest.approx(0.3)
    for bad in ("", "10", "10x", "m", "1h 30m"):
        with pytest.raises(InvalidOption):
            parse_duration(bad)


def test_times() -> None:
    now = 1_700_000_000.0
    assert parse_time("10m", now) == now - 600
    assert parse_time("1700000000", now) == 1_700_000_000
    assert parse_time("1700000000.5", now) == 1_700_000_000.5
    assert parse_time("2023-11-14T22:13:20Z", now) == 1_700_000_000
    assert parse_time("2023-11-14T23:13:20+01:00", now) == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20.123456789Z", now) == pytest.approx(1_700_000_000.123456)
    local = time.mktime((2023, 11, 14, 0, 0, 0, 0, 0, -1))
    assert parse_time("2023-11-14", now) == local  # no zone: local time, as Docker
    with pytest.raises(InvalidOption, match="--until"):
        parse_time("yesterday", now, "--until")
