"""Build the OCI runtime spec (``config.json``, runtime-spec 1.0.2) for a container.

``build_spec`` is a pure function of a ContainerConfig, the process the engine merged
from the image config and run options (``ProcessSpec``: Docker's rules for command,
environment and working directory), and paths the caller has prepared (rootfs, whose
``/etc/passwd`` resolves the user, the /etc/hostname, /etc/hosts and /etc/resolv.conf
files, volume directories). It applies Docker's security defaults: the default
capability set, masked and read-only /proc paths, a device allow-list and a seccomp
profile (``seccomp_default.json``: allow everything except what Docker's default
profile blocks). Every invalid input raises a
LaminaError with one line naming it, before anything runs.

It is on the ``lamina run`` hot path: no subprocesses, and the host facts it
needs (capabilities, kernel version, cgroup layout, the seccomp data) are read
once per process and cached.

no_new_privileges: set by default, stricter than Docker (whose default leaves it off):
a setuid or file-capability binary in the image never gains privileges, so a non-root
container user cannot become root through one. ``--privileged`` lifts it, as it lifts
the other defaults; ``--security-opt no-new-privileges=false`` lifts it alone and
``--security-opt no-new-privileges`` keeps it even with ``--privileged`` (the flags are
read into ``Security.no_new_privileges`` by the CLI; this module applies that value).

rlimits: the runtime cannot raise a limit above the host's current hard limit
(no CAP_SYS_RESOURCE on some hosts), so an explicit ``--ulimit`` above it is
refused with a clear message, and defaults are taken from the host (clamped).
"""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError
from lamina.runtime._types import ContainerConfig, Mount, ProcessSpec, Ulimit
from lamina.runtime._userdb import ExecUser, resolve_user
from lamina.runtime.common import (
    check_mount_target,
    tmpfs_options,
)

OCI_VERSION = "1.0.2"
INIT_PATH = "/run/lamina-init"
_INIT_CANDIDATES = ("/usr/bin/catatonit", "/usr/libexec/podman/catatonit", "/usr/bin/tini-static")


def init_binary() -> Path:
    """The host's static init for --init; a clear error when none is installed."""
    for candidate in _INIT_CANDIDATES:
        if os.path.exists(candidate):
            return Path(candidate)
    raise LaminaError(
        "--init needs catatonit or tini-static on the host (apt-get install catatonit)"
    )


CPU_PERIOD = 100_000
MIN_MEMORY = 6 * 1024 * 1024  # Docker's minimum
RLIM_INFINITY = 2**64 - 1  # what the OCI spec (uint64) calls unlimited

HostRlimits = Callable[[int], tuple[int, int]]

# Bit numbers from linux/capability.h.
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# Docker's default set (moby oci/caps/defaults.go): CapEff 0x00000000a80425fb.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
)

MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# Docker's device cgroup rules (and runc's implicit ones): deny all, allow mknod,
# and read/write only the harmless character devices and the terminal ones.
_DEVICE_RULES: tuple[dict[str, Any], ...] = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},  # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # /dev/pts/*
)

# Sysctls that live in a namespace the container owns (Docker's list).
_IPC_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)

ULIMITS: dict[str, int] = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "locks": 10,  # RLIMIT_LOCKS: Linux has it, the resource module does not
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "nice": resource.RLIMIT_NICE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": resource.RLIMIT_RTPRIO,
    "rttime": resource.RLIMIT_RTTIME,
    "sigpending": resource.RLIMIT_SIGPENDING,
    "stack": resource.RLIMIT_STACK,
}

_PROPAGATIONS = frozenset({"private", "rprivate", "shared", "rshared", "slave", "rslave"})
_CPUSET = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


# ---------------------------------------------------------------- host facts


@functools.cache
def _host_capabilities() -> frozenset[str]:
    """Capabilities this process can hand to a container (runc cannot grant more)."""
    bnd = prm = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    bnd = int(line.split()[1], 16)
                elif line.startswith("CapPrm:"):
                    prm = int(line.split()[1], 16)
    except OSError:
        pass
    if bnd is None:
        return frozenset(CAPABILITIES)
    mask = bnd & prm if prm else bnd
    return frozenset(name for name, bit in CAPABILITIES.items() if mask >> bit & 1)


@functools.cache
def _kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@functools.cache
def _cgroup2_only() -> bool:
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


@functools.cache
def _swap_accounting() -> bool:
    # cgroup v1 without swapaccount=1 has no memsw files, and runc fails on them.
    if _cgroup2_only():
        return True
    return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")


@functools.cache
def _seccomp_arch() -> tuple[str, str]:
    """(libseccomp native arch, Go arch name used by Docker-style ``arches`` filters)."""
    machine = os.uname().machine
    return {
        "x86_64": ("SCMP_ARCH_X86_64", "amd64"),
        "aarch64": ("SCMP_ARCH_AARCH64", "arm64"),
        "armv7l": ("SCMP_ARCH_ARM", "arm"),
        "i686": ("SCMP_ARCH_X86", "386"),
    }.get(machine, ("", machine))


@functools.cache
def _default_seccomp_data() -> dict[str, Any]:
    text = (
        # A plain path, not importlib.resources: this is on `lamina run`'s hot path.
        Path(__file__).with_name("seccomp_default.json").read_text(encoding="utf-8")
    )
    data: dict[str, Any] = json.loads(text)
    return data


def _host_devices() -> list[dict[str, Any]]:
    """Every device node under the host's /dev, for privileged containers."""
    skip = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}
    out: list[dict[str, Any]] = []

    def walk(d: str) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if e.name not in skip:
                    walk(e.path)
                continue
            if e.path == "/dev/console":
                continue  # runc sets up the console itself
            if stat.S_ISCHR(st.st_mode):
                kind = "c"
            elif stat.S_ISBLK(st.st_mode):
                kind = "b"
            else:
                continue
            out.append(
                {
                    "path": e.path,
                    "type": kind,
                    "major": os.major(st.st_rdev),
                    "minor": os.minor(st.st_rdev),
                    "fileMode": stat.S_IMODE(st.st_mode),
                    "uid": st.st_uid,
                    "gid": st.st_gid,
                }
            )

    walk("/dev")
    return out


# ------------------------------------------------------------ small pieces


def cgroup_path(container_id: str, parent: str = "/lamina") -> str:
    """The container's cgroup, as ``linux.cgroupsPath`` (cgroupfs driver)."""
    parent = "/" + parent.strip("/") if parent.strip("/") else ""
    return f"{parent}/{container_id}"


def _normalize_cap(name: str) -> str:
    up = name.strip().upper()
    if up == "ALL":
        return up
    if not up.startswith("CAP_"):
        up = "CAP_" + up
    if up not in CAPABILITIES:
        raise LaminaError(f"unknown capability: {name!r}")
    return up


def resolve_capabilities(
    cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (), *, privileged: bool = False
) -> list[str]:
    """The container's capability set, as Docker's TweakCapabilities computes it,
    limited to what this host can grant. Sorted by capability number."""
    available = _host_capabilities()
    if privileged:
        return _sorted_caps(available)
    adds = [_normalize_cap(c) for c in cap_add]
    drops = [_normalize_cap(c) for c in cap_drop]
    for c in adds:
        if c != "ALL" and c not in available:
            raise LaminaError(f"capability {c} is not available on this host")
    if "ALL" in adds:
        caps = {c for c in available if c not in drops}
    elif "ALL" in drops:
        caps = set(adds)
    else:
        caps = {c for c in DEFAULT_CAPABILITIES if c not in drops} | set(adds)
    return _sorted_caps(caps)


def _sorted_caps(caps: Iterable[str]) -> list[str]:
    return sorted(caps, key=CAPABILITIES.__getitem__)


def validate_sysctls(sysctls: dict[str, str], network: str = "none") -> None:
    """Only namespaced sysctls may be set (Docker's rule); ``net.*`` needs the
    container's own network namespace."""
    for key in sysctls:
        if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
            continue
        if key.startswith("net."):
            if network == "host" or network.startswith("container:"):
                raise LaminaError(
                    f"sysctl {key!r} is not allowed with --network {network}: "
                    "the network namespace is not the container's own"
                )
            continue
        raise LaminaError(
            f"sysctl {key!r} is not allowed: it is not namespaced "
            "(allowed: kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, net.*)"
        )


def _rlim_out(v: int) -> int:
    return RLIM_INFINITY if v < 0 or v >= RLIM_INFINITY else v


def _fmt_limit(v: int) -> str:
    return "unlimited" if v < 0 or v >= RLIM_INFINITY else str(v)


def build_rlimits(
    ulimits: Iterable[Ulimit], host_rlimits: HostRlimits | None = None
) -> list[dict[str, Any]]:
    """``process.rlimits``. Explicit values above the host's hard limit are refused
    (the runtime could not set them); the default nofile is the host's own,
    clamped to its hard limit."""
    get = host_rlimits or resource.getrlimit
    wanted: dict[str, tuple[int, int]] = {}
    for u in ulimits:
        name = u.name.lower().removeprefix("rlimit_")
        res = ULIMITS.get(name)
        if res is None:
            raise LaminaError(f"unknown ulimit name {u.name!r}")
        soft, hard = _rlim_out(u.soft), _rlim_out(u.hard)
        shown = f"{name}={_fmt_limit(u.soft)}:{_fmt_limit(u.hard)}"
        if soft > hard:
            raise LaminaError(f"ulimit {shown}: the soft limit exceeds the hard limit")
        host_hard = _rlim_out(get(res)[1])
        if hard > host_hard:
            raise LaminaError(
                f"ulimit {shown} exceeds the host's hard limit {_fmt_limit(host_hard)}"
            )
        wanted[name] = (soft, hard)
    if "nofile" not in wanted:
        soft, hard = (_rlim_out(v) for v in get(resource.RLIMIT_NOFILE))
        wanted["nofile"] = (min(soft, hard), hard)
    return [
        {"type": f"RLIMIT_{name.upper()}", "soft": soft, "hard": hard}
        for name, (soft, hard) in wanted.items()
    ]


# --------------------------------------------------------------- seccomp


def _seccomp_rule_applies(rule: dict[str, Any], caps: frozenset[str], arch: str) -> bool:
    """Docker's ``includes``/``excludes``: caps, arches (Go names), minKernel."""
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if exc.get("arches") and arch in exc["arches"]:
        return False
    if any(c in caps for c in exc.get("caps") or ()):
        return False
    if exc.get("minKernel") and _kernel_version() >= _parse_kernel(exc["minKernel"]):
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("caps") and not all(c in caps for c in inc["caps"]):
        return False
    return not (inc.get("minKernel") and _kernel_version() < _parse_kernel(inc["minKernel"]))


def _parse_kernel(v: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", str(v))
    if not m:
        raise LaminaError(f"invalid minKernel {v!r} in seccomp profile")
    return int(m.group(1)), int(m.group(2))


def seccomp_to_oci(profile: dict[str, Any], caps: Iterable[str], source: str) -> dict[str, Any]:
    """Turn a Docker-format (or plain OCI) seccomp profile into ``linux.seccomp``
    for a container holding ``caps``."""
    capset = frozenset(caps)
    native, goarch = _seccomp_arch()
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    if profile.get("archMap"):
        arches: list[str] = []
        for entry in profile["archMap"]:
            if entry.get("architecture") == native:
                arches = [native, *entry.get("subArchitectures", [])]
        out["architectures"] = arches
    elif profile.get("architectures"):
        out["architectures"] = list(profile["architectures"])
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])
    syscalls = []
    for rule in profile.get("syscalls") or ():
        if not isinstance(rule, dict):
            raise LaminaError(f"seccomp profile {source}: a syscalls entry is not an object")
        if not _seccomp_rule_applies(rule, capset, goarch):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or not isinstance(rule.get("action"), str):
            raise LaminaError(f"seccomp profile {source}: a syscalls entry lacks names or action")
        oci: dict[str, Any] = {"names": list(names), "action": rule["action"]}
        if "errnoRet" in rule:
            oci["errnoRet"] = rule["errnoRet"]
        if rule.get("args"):
            oci["args"] = [dict(a) for a in rule["args"]]
        syscalls.append(oci)
    out["syscalls"] = syscalls
    return out


def load_seccomp_file(path: str) -> dict[str, Any]:
    """A user's profile file, checked to be a JSON object with ``defaultAction``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise LaminaError(f"seccomp profile {path}: {e.strerror}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LaminaError(f"seccomp profile {path}: invalid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("defaultAction"), str):
        raise LaminaError(f"seccomp profile {path}: not a JSON object with a defaultAction")
    if not isinstance(data.get("syscalls", []), list):
        raise LaminaError(f"seccomp profile {path}: syscalls is not a list")
    return data


def seccomp_for(seccomp: str | None, caps: Iterable[str], *, privileged: bool) -> dict[str, Any]:
    """``linux.seccomp`` for ``--security-opt seccomp=...``; {} for none."""
    if privileged or seccomp == "unconfined":
        return {}
    if seccomp is None or seccomp in ("", "default", "builtin"):
        # A fresh copy each time: callers own the spec they get.
        return json.loads(_default_seccomp_json(frozenset(caps)))  # type: ignore[no-any-return]
    return seccomp_to_oci(load_seccomp_file(seccomp), caps, seccomp)


@functools.lru_cache(maxsize=16)
def _default_seccomp_json(caps: frozenset[str]) -> str:
    return json.dumps(seccomp_to_oci(_default_seccomp_data(), caps, "seccomp_default.json"))


# ---------------------------------------------------------------- mounts


def _tmpfs_mount(target: str, options: Iterable[str], read_only: bool = False) -> dict[str, Any]:
    opts = tmpfs_options(options, read_only)
    return {"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts}


def _bind_mount(target: str, source: str, m: Mount) -> dict[str, Any]:
    propagation = "rprivate"
    extra: list[str] = []
    for opt in m.options:
        if opt in _PROPAGATIONS:
            propagation = opt
        elif opt in ("z", "Z", "nocopy", "rw", "ro", "bind", "rbind"):
            continue  # SELinux relabel / copy-up hints / set from read_only
        else:
            extra.append(opt)
    opts = ["rbind", propagation, "ro" if m.read_only else "rw", *extra]
    return {"destination": target, "type": "bind", "source": source, "options": opts}


def _default_mounts(privileged: bool) -> list[dict[str, Any]]:
    sys_opts = ["nosuid", "noexec", "nodev", "rw" if privileged else "ro"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": list(sys_opts)},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"]},
    ]  # fmt: skip


def build_mounts(
    config: ContainerConfig,
    *,
    hostname_file: Path,
    hosts_file: Path,
    resolv_file: Path,
    volume_paths: dict[str, Path],
) -> list[dict[str, Any]]:
    """Default mounts, then the user's (sorted parents first, as Docker does). A user
    mount replaces a default one at the same place; one on /dev replaces all of /dev."""
    user: dict[str, dict[str, Any]] = {}

    def add(target: str, mount: dict[str, Any]) -> None:
        if target in user:
            raise LaminaError(f"duplicate mount point: {target}")
        mount["destination"] = target
        user[target] = mount

    for m in config.mounts:
        target = check_mount_target(m.target)
        if m.type == "bind":
            if not m.source.startswith("/"):
                raise LaminaError(
                    f"invalid bind mount source {m.source!r}: it must be an absolute path"
                )
            if not os.path.exists(m.source):
                raise LaminaError(f"bind source path does not exist: {m.source}")
            add(target, _bind_mount(target, m.source, m))
        elif m.type == "volume":
            host = volume_paths.get(m.target) or volume_paths.get(target)
            if host is None:
                raise LaminaError(f"no volume directory prepared for {m.target}")
            add(target, _bind_mount(target, str(host), m))
        elif m.type == "tmpfs":
            opts = [o for opt in m.options for o in opt.split(",")]
            add(target, _tmpfs_mount(target, opts, m.read_only))
        else:
            raise LaminaError(f"unsupported mount type {m.type!r} for {m.target}")
    for path, options in config.tmpfs.items():
        target = check_mount_target(path)
        add(target, _tmpfs_mount(target, options.split(",") if options else []))

    ro = config.security.read_only_rootfs
    for target, host_file in (
        ("/etc/hostname", hostname_file),
        ("/etc/hosts", hosts_file),
        ("/etc/resolv.conf", resolv_file),
    ):
        if target not in user:
            user[target] = {
                "destination": target,
                "type": "bind",
                "source": str(host_file),
                "options": ["rbind", "rprivate", "ro" if ro else "rw"],
            }

    replace_dev = "/dev" in user
    mounts = [
        m
        for m in _default_mounts(config.security.privileged)
        if m["destination"] not in user
        and not (replace_dev and m["destination"].startswith("/dev/"))
    ]
    mounts.extend(sorted(user.values(), key=lambda m: m["destination"].count("/")))
    return mounts


# -------------------------------------------------------------- resources


def build_resources(config: ContainerConfig) -> dict[str, Any]:
    """``linux.resources``: devices, cpu, memory, pids (Docker's semantics)."""
    r = config.resources
    out: dict[str, Any] = {}
    if config.security.privileged:
        out["devices"] = [{"allow": True, "access": "rwm"}]
    else:
        out["devices"] = [dict(d) for d in _DEVICE_RULES]

    cpu: dict[str, Any] = {}
    ncpu = os.cpu_count() or 1
    if r.cpus is not None:
        if not 0.01 <= r.cpus <= ncpu:
            raise LaminaError(
                f"invalid --cpus {r.cpus}: the range is from 0.01 to {ncpu}.00, "
                f"as there are only {ncpu} CPUs available"
            )
        cpu["quota"] = round(r.cpus * CPU_PERIOD)
        cpu["period"] = CPU_PERIOD
    if r.cpu_shares is not None:
        if r.cpu_shares < 0:
            raise LaminaError(f"invalid --cpu-shares {r.cpu_shares}: it cannot be negative")
        if r.cpu_shares:
            cpu["shares"] = r.cpu_shares
    if r.cpuset_cpus:
        if not _CPUSET.fullmatch(r.cpuset_cpus):
            raise LaminaError(f"invalid --cpuset-cpus {r.cpuset_cpus!r}")
        highest = max(int(n) for n in re.findall(r"\d+", r.cpuset_cpus))
        if highest >= ncpu:
            raise LaminaError(
                f"requested CPUs are not available: requested {r.cpuset_cpus}, "
                f"available 0-{ncpu - 1}"
            )
        cpu["cpus"] = r.cpuset_cpus
    if cpu:
        out["cpu"] = cpu

    memory: dict[str, Any] = {}
    swap_given = r.memory_swap not in (None, 0)
    if r.memory:
        if r.memory < MIN_MEMORY:
            raise LaminaError("invalid --memory: the minimum memory limit allowed is 6MB")
        memory["limit"] = r.memory
        swap = r.memory_swap if swap_given else 2 * r.memory
        if swap is not None and swap != -1 and swap < r.memory:
            raise LaminaError(
                "invalid --memory-swap: it is memory plus swap, so it must be at least --memory"
            )
        if _swap_accounting():
            memory["swap"] = swap
        elif swap_given:
            # The kernel has no swap accounting: the memory limit alone applies.
            pass
    elif swap_given:
        raise LaminaError("--memory-swap needs --memory as well")
    if memory:
        out["memory"] = memory

    if r.pids_limit is not None and r.pids_limit > 0:
        out["pids"] = {"limit": r.pids_limit}
    return out


def _namespaces(
    config: ContainerConfig, netns_path: str | None, pidns_path: str | None
) -> list[dict[str, Any]]:
    pid: dict[str, Any] = {"type": "pid"}
    if pidns_path:
        pid["path"] = pidns_path
    ns = [pid, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
    network = config.network
    if network != "host":
        net: dict[str, Any] = {"type": "network"}
        if netns_path:
            net["path"] = netns_path
        elif network.startswith("container:"):
            raise LaminaError(f"--network {network}: that container's network namespace is unknown")
        ns.append(net)
    if _cgroup2_only():
        ns.append({"type": "cgroup"})  # Docker's default on v2; v1 keeps the host's
    return ns


# ------------------------------------------------------------------ spec


def build_spec(
    *,
    config: ContainerConfig,
    process: ProcessSpec,
    rootfs: Path,
    container_id: str,
    hostname_file: Path,
    hosts_file: Path,
    resolv_file: Path,
    volume_paths: dict[str, Path] | None = None,
    netns_path: str | None = None,
    pidns_path: str | None = None,
    cgroup_parent: str = "/lamina",
    host_rlimits: HostRlimits | None = None,
) -> dict[str, Any]:
    """The OCI ``config.json`` for ``config`` running ``process`` (merged from the image
    config by the engine) from ``rootfs``, whose ``/etc/passwd`` resolves the user."""
    sec = config.security

    args = list(process.args)
    if not args:
        raise LaminaError("no command specified")
    if config.init:
        # --init: a tiny init as PID 1 reaps zombies and forwards signals (Docker uses
        # tini, Podman catatonit; Debian ships catatonit, statically linked).
        args = [INIT_PATH, "--", *args]
    hostname = process.hostname or container_id[:12]
    user: ExecUser = resolve_user(rootfs, process.user or None)
    env = list(process.env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home or '/'}")
    cwd = process.cwd or "/"

    caps = resolve_capabilities(sec.cap_add, sec.cap_drop, privileged=sec.privileged)
    # A non-root user gets no effective/permitted caps, as after a plain execve.
    capabilities: dict[str, list[str]] = {"bounding": caps}
    if user.uid == 0:
        capabilities["effective"] = list(caps)
        capabilities["permitted"] = list(caps)

    validate_sysctls(config.sysctls, config.network)

    oci_process: dict[str, Any] = {
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": capabilities,
        "rlimits": build_rlimits(config.ulimits, host_rlimits),
        "noNewPrivileges": sec.no_new_privileges,
    }
    if user.additional_gids:
        oci_process["user"]["additionalGids"] = list(user.additional_gids)

    linux: dict[str, Any] = {
        "namespaces": _namespaces(config, netns_path, pidns_path),
        "cgroupsPath": cgroup_path(container_id, cgroup_parent),
        "resources": build_resources(config),
    }
    if sec.privileged:
        linux["devices"] = _host_devices()
    else:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    if config.sysctls:
        linux["sysctl"] = dict(config.sysctls)
    seccomp = seccomp_for(sec.seccomp, caps, privileged=sec.privileged)
    if seccomp:
        linux["seccomp"] = seccomp

    mounts = build_mounts(
        config,
        hostname_file=hostname_file,
        hosts_file=hosts_file,
        resolv_file=resolv_file,
        volume_paths=volume_paths or {},
    )
    if config.init:
        mounts.append(
            {
                "destination": INIT_PATH,
                "type": "bind",
                "source": str(init_binary()),
                "options": ["rbind", "ro", "nosuid", "nodev"],
            }
        )
    return {
        "ociVersion": OCI_VERSION,
        "process": oci_process,
        "root": {"path": str(rootfs), "readonly": sec.read_only_rootfs},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }
