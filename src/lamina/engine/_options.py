"""Turning ``run``/``create``/``update`` flags into a ``ContainerConfig``.

Pure functions (the only I/O: reading --env-file/--label-file and checking that
a --mount bind source or seccomp profile exists), so every Docker flag rule can
be unit-tested without a runtime. Every bad value raises ``InvalidOption`` (a
LaminaError with exit code 125, Docker's code for "failed before the container
ran") whose message names the flag and the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError
from lamina.runtime._types import (
    ContainerConfig,
    Mount,
    NetworkRequest,
    PortMapping,
    Resources,
    RestartPolicy,
    Security,
    Ulimit,
)

_RLIM_INFINITY = 2**64 - 1  # OCI rlimits are uint64; "unlimited" is all ones

# Patterns as strings: re compiles (and caches) one when first used, so a run
# that never needs it does not pay for it at start-up.
_NAME_RE = r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$"
_VOLUME_NAME_RE = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$"
_MEMORY_RE = r"(?i)^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$"
_CPUSET_RE = r"^\d+(-\d+)?(,\d+(-\d+)?)*$"
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)"
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

ULIMIT_NAMES = frozenset({
    "as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
    "nproc", "rss", "rtprio", "rttime", "sigpending", "stack",
})  # fmt: skip
CAPABILITIES = frozenset({
    "AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF", "CHECKPOINT_RESTORE",
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_LOCK", "IPC_OWNER",
    "KILL", "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN", "MAC_OVERRIDE", "MKNOD", "NET_ADMIN",
    "NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW", "PERFMON", "SETFCAP", "SETGID", "SETPCAP",
    "SETUID", "SYSLOG", "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT", "SYS_MODULE", "SYS_NICE",
    "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG",
    "WAKE_ALARM",
})  # fmt: skip
# Sysctls that live in a namespace of the container (runc refuses the others).
_IPC_SYSCTLS = frozenset({
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
    "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
})  # fmt: skip
_PROPAGATIONS = frozenset({"shared", "slave", "private", "rshared", "rslave", "rprivate"})
_MIN_MEMORY = 6 * 1024 * 1024  # Docker's floor: less and the runtime itself cannot start


class InvalidOption(LaminaError, ValueError):
    """A run/create flag has a value Docker would refuse."""

    exit_code = 125


@dataclass
class RunOptions:
    """Raw flag values of ``run``/``create``, as click hands them over."""

    name: str | None = None
    env: Sequence[str] = ()
    env_files: Sequence[str] = ()
    volumes: Sequence[str] = ()
    mounts: Sequence[str] = ()
    tmpfs: Sequence[str] = ()
    entrypoint: str | None = None
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    # --network, once or more (None/empty: the isolation's default: process containers
    # the default bridge, VM containers nat)
    network: str | Sequence[str] | None = None
    publish: Sequence[str] = ()
    publish_all: bool = False
    expose: Sequence[str] = ()
    network_aliases: Sequence[str] = ()
    ip: str | None = None
    ip6: str | None = None
    mac_address: str | None = None
    add_hosts: Sequence[str] = ()
    dns: Sequence[str] = ()
    dns_search: Sequence[str] = ()
    dns_options: Sequence[str] = ()
    cpus: str | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    memory: str | None = None
    memory_swap: str | None = None
    pids_limit: int | None = None
    privileged: bool = False
    cap_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    security_opt: Sequence[str] = ()
    read_only: bool = False
    sysctls: Sequence[str] = ()
    ulimits: Sequence[str] = ()
    stop_signal: str | None = None
    stop_timeout: int | None = None
    init: bool = False
    labels: Sequence[str] = ()
    label_files: Sequence[str] = ()
    interactive: bool = False
    tty: bool = False
    auto_remove: bool = False
    isolation: str = "process"
    vm_base: str | None = None
    log_driver: str | None = None  # None: lamina's file log (k8s-file)
    log_opts: Sequence[str] = ()
    restart: str | None = None  # --restart: no, always, on-failure[:N], unless-stopped
    health_cmd: str | None = None
    health_interval: str | None = None  # Go durations, as typed
    health_timeout: str | None = None
    health_retries: int | None = None
    health_start_period: str | None = None
    health_start_interval: str | None = None
    no_healthcheck: bool = False


@dataclass
class ParsedRun:
    """The config plus what the caller must do before ``create``. With ``--isolation
    auto`` the network rules wait for the caller's ``apply_isolation``."""

    config: ContainerConfig
    bind_dirs_to_create: list[str] = field(default_factory=list)  # -v sources that are absent
    warnings: list[str] = field(default_factory=list)
    network: str | None = None  # --network as given (None: the isolation's default)


# -- sizes and numbers


def parse_memory(value: str, flag: str = "--memory") -> int:
    """Docker's RAMInBytes: ``512m``, ``1.5g``, ``1024``, ``2GiB`` -> bytes (binary units)."""
    m = re.match(_MEMORY_RE, value.strip())
    if not m:
        raise InvalidOption(f"invalid {flag} value {value!r}: expected a size like 512m or 1g")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def parse_cpus(value: str, cpu_count: int | None = None) -> float:
    try:
        cpus = float(value)
    except ValueError:
        raise InvalidOption(f"invalid --cpus value {value!r}: expected a number like 1.5")
    if cpus != cpus or cpus <= 0:  # NaN too
        raise InvalidOption(f"invalid --cpus value {value!r}: must be greater than 0")
    if cpu_count and cpus > cpu_count:
        raise InvalidOption(
            f"invalid --cpus value {value!r}: range of CPUs is from 0.01 to {cpu_count}.00, "
            f"as there are only {cpu_count} CPUs available"
        )
    return cpus


def parse_cpuset(value: str) -> str:
    v = value.strip()
    if not re.match(_CPUSET_RE, v):
        raise InvalidOption(f"invalid --cpuset-cpus value {value!r}: expected a list like 0-3,5")
    for part in v.split(","):
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise InvalidOption(f"invalid --cpuset-cpus value {value!r}: range {part} is reversed")
    return v


def parse_resources(
    *,
    cpus: str | None = None,
    cpu_shares: int | None = None,
    cpuset_cpus: str | None = None,
    memory: str | None = None,
    memory_swap: str | None = None,
    pids_limit: int | None = None,
    cpu_count: int | None = None,
    for_update: bool = False,
) -> Resources:
    """Resource flags; with ``for_update`` the cross-flag rules are the runtime's to check
    (they depend on the limits already set)."""
    res = Resources()
    if cpus is not None:
        res.cpus = parse_cpus(cpus, cpu_count)
    if cpu_shares is not None:
        if cpu_shares < 0:
            raise InvalidOption(f"invalid --cpu-shares value {cpu_shares}: must not be negative")
        res.cpu_shares = cpu_shares or None  # 0 means "the default", as in Docker
    if cpuset_cpus is not None:
        res.cpuset_cpus = parse_cpuset(cpuset_cpus)
    if memory is not None:
        res.memory = parse_memory(memory, "--memory")
        if res.memory == 0:
            res.memory = None
        elif res.memory < _MIN_MEMORY:
            raise InvalidOption(f"invalid --memory value {memory!r}: the minimum is 6m")
    if memory_swap is not None:
        swap = -1 if memory_swap.strip() == "-1" else parse_memory(memory_swap, "--memory-swap")
        res.memory_swap = swap or None
        if res.memory_swap is not None and not for_update:
            if res.memory is None:
                raise InvalidOption("--memory-swap needs --memory: set the memory limit too")
            if swap != -1 and swap < res.memory:
                raise InvalidOption(
                    f"invalid --memory-swap value {memory_swap!r}: must be at least --memory "
                    "(it counts memory plus swap)"
                )
    if pids_limit is not None:
        res.pids_limit = -1 if pids_limit < 0 else pids_limit or None
    return res


def parse_ulimit(value: str) -> Ulimit:
    """``nofile=1024[:2048]``; ``-1`` or ``unlimited`` for no limit."""
    name, sep, limits = value.partition("=")
    name = name.strip().lower().removeprefix("rlimit_")
    if not sep or not limits:
        raise InvalidOption(f"invalid --ulimit {value!r}: expected NAME=SOFT[:HARD]")
    if name not in ULIMIT_NAMES:
        raise InvalidOption(f"invalid --ulimit {value!r}: unknown limit {name!r}")
    soft_s, _, hard_s = limits.partition(":")
    soft = _rlimit(soft_s, value)
    hard = _rlimit(hard_s, value) if hard_s else soft
    if soft > hard:
        raise InvalidOption(f"invalid --ulimit {value!r}: soft limit {soft} is above hard {hard}")
    return Ulimit(name=name, soft=soft, hard=hard)


def _rlimit(s: str, whole: str) -> int:
    s = s.strip()
    if s in ("-1", "unlimited"):
        return _RLIM_INFINITY
    if not s.isdigit():
        raise InvalidOption(f"invalid --ulimit {whole!r}: {s!r} is not a number")
    return int(s)


# -- environment and labels


def parse_env_file(path: str, environ: Mapping[str, str], *, flag: str = "--env-file") -> list[str]:
    """Docker's env-file format: ``KEY=VALUE`` kept verbatim (no quote stripping),
    ``#`` comments and blank lines skipped, a bare ``KEY`` takes the host's value (or is
    dropped when the host has none)."""
    return _read_kv_file(path, flag, environ.get)


def _read_kv_file(path: str, flag: str, bare: Callable[[str], str | None]) -> list[str]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidOption(f"cannot read {flag} {path}: {e.strerror or e}")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise InvalidOption(f"{flag} {path} is not valid UTF-8")
    out: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, val = line.partition("=")
        if sep:
            if not key:
                raise InvalidOption(f"{flag} {path} line {lineno}: no variable name before '='")
            if any(c.isspace() for c in key):
                raise InvalidOption(
                    f"{flag} {path} line {lineno}: variable {key!r} contains whitespace"
                )
            out.append(f"{key}={val}")
        else:
            key = line.strip()
            value = bare(key)
            if value is not None:
                out.append(f"{key}={value}")
    return out


def parse_env(values: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """``-e KEY=VALUE``, or ``-e KEY`` to pass the host's value (dropped if unset)."""
    out = []
    for v in values:
        key, sep, _ = v.partition("=")
        if not key:
            raise InvalidOption(f"invalid environment variable {v!r}: no name before '='")
        if sep:
            out.append(v)
        elif key in environ:
            out.append(f"{key}={environ[key]}")
    return out


def parse_labels(values: Sequence[str], files: Sequence[str] = ()) -> dict[str, str]:
    """``-l KEY=VALUE`` / ``-l KEY`` (empty value), after ``--label-file`` contents."""
    labels: dict[str, str] = {}
    items = [i for f in files for i in _read_kv_file(f, "--label-file", lambda _k: "")]
    for item in [*items, *values]:
        k, _, v = item.partition("=")
        if not k:
            raise InvalidOption(f"invalid label {item!r}: no name before '='")
        labels[k] = v
    return labels


# -- mounts


def parse_volume(spec: str) -> Mount:
    """``-v``: ``/host:/ctr[:opts]`` (bind), ``name:/ctr[:opts]`` (named volume),
    ``/ctr`` (anonymous volume). Options: ro, rw, z, Z, nocopy and a propagation."""
    parts = spec.split(":")
    if len(parts) == 1:
        target, source, opts = parts[0], "", ""
    elif len(parts) == 2:
        if parts[1].startswith("/"):
            source, target, opts = parts[0], parts[1], ""
        else:  # "/ctr:ro": anonymous volume with options
            source, target, opts = "", parts[0], parts[1]
    elif len(parts) == 3:
        source, target, opts = parts
    else:
        raise InvalidOption(f"invalid volume specification {spec!r}: too many ':'")
    if not target.startswith("/"):
        raise InvalidOption(
            f"invalid volume specification {spec!r}: {target!r} is not an absolute path"
        )
    read_only = False
    options: list[str] = []
    for opt in filter(None, opts.split(",")):
        if opt in ("ro", "rw"):
            read_only = opt == "ro"
        elif opt in _PROPAGATIONS or opt == "nocopy":
            options.append(opt)
        elif opt in ("z", "Z"):
            pass  # SELinux relabelling: nothing to do without SELinux
        else:
            raise InvalidOption(f"invalid volume specification {spec!r}: unknown option {opt!r}")
    target = _clean(target)
    if not source:
        return Mount(type="volume", target=target, read_only=read_only, options=options)
    if source.startswith(("/", "./", "../")) or source in (".", ".."):
        return Mount(
            type="bind",
            source=os.path.abspath(source),
            target=target,
            read_only=read_only,
            options=options,
        )
    if not re.match(_VOLUME_NAME_RE, source):
        raise InvalidOption(
            f"invalid volume specification {spec!r}: {source!r} is neither an absolute host path "
            "nor a valid volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
        )
    return Mount(type="volume", source=source, target=target, read_only=read_only, options=options)


def parse_mount(spec: str) -> Mount:
    """``--mount type=bind|volume|tmpfs,source=...,target=...,readonly[,...]`` (CSV)."""
    import csv

    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration):
        raise InvalidOption(f"invalid --mount {spec!r}: not a comma-separated list")
    kind = "volume"
    source = target = ""
    read_only = False
    options: list[str] = []
    for f in fields:
        key, sep, val = f.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            read_only = _bool(val, f"--mount {spec!r}: {key}") if sep else True
            continue
        if not sep:
            raise InvalidOption(f"invalid --mount {spec!r}: field {f!r} must be KEY=VALUE")
        if key == "type":
            kind = val
        elif key in ("source", "src"):
            source = val
        elif key in ("target", "destination", "dst"):
            target = val
        elif key == "bind-propagation":
            if val not in _PROPAGATIONS:
                raise InvalidOption(f"invalid --mount {spec!r}: unknown propagation {val!r}")
            options.append(val)
        elif key == "volume-nocopy":
            if _bool(val or "true", f"--mount {spec!r}: volume-nocopy"):
                options.append("nocopy")
        elif key == "tmpfs-size":
            options.append(f"size={parse_memory(val, '--mount tmpfs-size')}")
        elif key == "tmpfs-mode":
            try:
                options.append(f"mode={int(val, 8):o}")
            except ValueError:
                raise InvalidOption(f"invalid --mount {spec!r}: tmpfs-mode {val!r} is not octal")
        elif key == "volume-opt":
            # Docker's local driver mounts per these (type=tmpfs, device=...); lamina's
            # volumes are plain directories and `volume create -o` takes none either.
            raise InvalidOption(
                f"invalid --mount {spec!r}: volume-opt {val!r} is not supported: "
                "local volumes here are plain directories and take no driver options"
            )
        elif key in ("consistency", "bind-nonrecursive", "volume-driver", "volume-label"):
            if key == "volume-driver" and val not in ("", "local"):
                raise InvalidOption(
                    f"invalid --mount {spec!r}: only the local volume driver exists"
                )
        else:
            raise InvalidOption(f"invalid --mount {spec!r}: unknown field {key!r}")
    if kind not in ("bind", "volume", "tmpfs"):
        raise InvalidOption(f"invalid --mount {spec!r}: type must be bind, volume or tmpfs")
    if not target:
        raise InvalidOption(f"invalid --mount {spec!r}: target is required")
    if not target.startswith("/"):
        raise InvalidOption(f"invalid --mount {spec!r}: target {target!r} is not an absolute path")
    if kind == "bind":
        if not source:
            raise InvalidOption(f"invalid --mount {spec!r}: source is required for a bind mount")
        source = os.path.abspath(source)
        if not os.path.exists(source):
            raise InvalidOption(
                f"invalid --mount {spec!r}: bind source path does not exist: {source}"
            )
    elif kind == "tmpfs" and source:
        raise InvalidOption(f"invalid --mount {spec!r}: a tmpfs mount takes no source")
    elif kind == "volume" and source and not re.match(_VOLUME_NAME_RE, source):
        raise InvalidOption(f"invalid --mount {spec!r}: {source!r} is not a valid volume name")
    return Mount(
        type=kind, source=source, target=_clean(target), read_only=read_only, options=options
    )


def parse_tmpfs(spec: str) -> tuple[str, str]:
    """``--tmpfs /path[:opts]`` -> (path, "opt,opt")."""
    path, _, opts = spec.partition(":")
    if not path.startswith("/"):
        raise InvalidOption(f"invalid --tmpfs {spec!r}: {path!r} is not an absolute path")
    for opt in filter(None, opts.split(",")):
        k, sep, v = opt.partition("=")
        if k == "size" and sep:
            parse_memory(v, "--tmpfs size")
        elif k == "mode" and sep and not re.fullmatch(r"[0-7]{1,4}", v):
            raise InvalidOption(f"invalid --tmpfs {spec!r}: mode {v!r} is not octal")
    return _clean(path), opts


def _clean(path: str) -> str:
    return os.path.normpath(path).replace("//", "/")


# -- security, sysctls, network


def parse_capability(value: str, flag: str) -> str:
    v = value.strip().upper().removeprefix("CAP_")
    if v == "ALL":
        return "ALL"
    if v not in CAPABILITIES:
        raise InvalidOption(f"invalid {flag} {value!r}: unknown capability")
    return f"CAP_{v}"


def apply_security_opts(values: Sequence[str], sec: Security) -> None:
    """``seccomp=unconfined|FILE``, ``no-new-privileges[:true|false]``; AppArmor and
    SELinux options are refused, except the ones that ask for nothing."""
    for v in values:
        key, sep, val = v.partition("=")
        if not sep and ":" in v:  # Docker also accepts the old KEY:VALUE form
            key, sep, val = v.partition(":")
        if key == "no-new-privileges":
            sec.no_new_privileges = _bool(val, f"--security-opt {v!r}") if sep else True
        elif key == "seccomp" and sep:
            if val == "unconfined":
                sec.seccomp = "unconfined"
            else:
                path = os.path.abspath(val)
                if not os.path.isfile(path):
                    raise InvalidOption(
                        f"invalid --security-opt {v!r}: no seccomp profile at {path}"
                    )
                sec.seccomp = path
        elif (key, val) in (("apparmor", "unconfined"), ("label", "disable")):
            pass  # neither AppArmor nor SELinux is applied: already the case
        elif key in ("apparmor", "label"):
            raise InvalidOption(f"unsupported --security-opt {v!r}: {key} is not supported here")
        else:
            raise InvalidOption(
                f"invalid --security-opt {v!r}: expected seccomp=unconfined|FILE or "
                "no-new-privileges[:true|false]"
            )


def parse_stop_signal(value: str) -> str:
    """``--stop-signal``: a signal name (with or without SIG) or number, kept as given;
    a bogus one is refused here, not found out when the container is stopped."""
    from lamina.runtime._signals import parse_signal

    try:
        parse_signal(value)
    except LaminaError:
        raise InvalidOption(
            f"invalid --stop-signal {value!r}: not a signal name or number (e.g. SIGTERM, 15)"
        ) from None
    return value.strip()


def parse_sysctl(value: str, network: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InvalidOption(f"invalid --sysctl {value!r}: expected KEY=VALUE")
    if key in _IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return key, val
    if key in ("kernel.hostname", "kernel.domainname"):
        return key, val
    if key.startswith("net."):
        if network == "host":
            raise InvalidOption(
                f"--sysctl {key} is not allowed with --network host (it is the host's)"
            )
        return key, val
    raise InvalidOption(
        f"--sysctl {key} is not namespaced: only kernel IPC, fs.mqueue.* and net.* ones are"
    )


def parse_network(value: str) -> str:
    """``none``, ``host``, ``container:<id>``, ``nat`` (QEMU's user-mode NAT of VM
    containers) or a bridge network's name (``bridge``/``default``: lamina's default
    one); which fit the isolation is ``apply_isolation``'s, whether the network
    exists ``create``'s."""
    from lamina.network._model import DEFAULT_NETWORK

    v = value.strip()
    if v in ("none", "host", "nat"):
        return v
    if v.startswith("container:") and len(v) > len("container:"):
        return v
    if v in ("bridge", "default", DEFAULT_NETWORK):
        return DEFAULT_NETWORK
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", v):
        raise InvalidOption(f"invalid --network {value!r}: not a network name or mode")
    return v


def parse_networks(opts: RunOptions) -> tuple[str | None, list[NetworkRequest]]:
    """Every ``--network`` with ``--network-alias``, ``--ip``, ``--ip6`` and
    ``--mac-address`` (which go with the first): (the network mode, the bridge
    networks asked for). Docker's rules: none, host and container:ID stand alone."""
    from lamina.network._model import DEFAULT_NETWORK

    given = [opts.network] if isinstance(opts.network, str) else list(opts.network or ())
    modes = [parse_network(v) for v in given]
    if len(modes) > 1 and any(_special_mode(m) for m in modes):
        raise InvalidOption(
            "conflicting options: cannot attach both user-defined and non-user-defined "
            "network-modes"
        )
    ip = _address(opts.ip, "--ip", 4) if opts.ip else ""
    ip6 = _address(opts.ip6, "--ip6", 6) if opts.ip6 else ""
    mac = ""
    if opts.mac_address:
        from lamina.network._ipam import InvalidNetwork, valid_mac

        try:
            mac = valid_mac(opts.mac_address)
        except InvalidNetwork as e:
            raise InvalidOption(str(e)) from None
    aliases = [a.strip() for a in opts.network_aliases if a.strip()]
    mode = modes[0] if modes else None
    special = mode is not None and _special_mode(mode)
    requests = [] if special else [NetworkRequest(m) for m in dict.fromkeys(modes)]
    if aliases or ip or ip6 or mac:
        if special:
            raise InvalidOption(
                f"conflicting options: --network-alias, --ip, --ip6 and --mac-address need a "
                f"bridge network, not --network {mode}"
            )
        if not requests:
            requests = [NetworkRequest(DEFAULT_NETWORK)]
        first = requests[0]
        first.aliases, first.ip, first.ip6, first.mac = aliases, ip, ip6, mac
    return mode, requests


def _special_mode(mode: str) -> bool:
    """none, host, nat, container:ID: the network modes that stand alone."""
    return mode in ("none", "host", "nat") or mode.startswith("container:")


def _address(text: str, flag: str, version: int | None = None) -> str:
    import ipaddress

    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidOption(f"invalid {flag} {text!r}: not an IP address") from None
    if version is not None and addr.version != version:
        raise InvalidOption(f"invalid {flag} {text!r}: not an IPv{version} address")
    return str(addr)


def parse_add_host(value: str) -> str:
    """Docker's ``--add-host NAME:IP`` (or ``NAME=IP``; IP may be ``host-gateway``)."""
    sep = "=" if "=" in value else ":"
    name, found, ip = value.partition(sep)
    name, ip = name.strip(), ip.strip().strip("[]")
    if not found or not name or not ip or not re.fullmatch(r"[a-zA-Z0-9_.-]+", name):
        raise InvalidOption(f"invalid --add-host {value!r}: expected NAME:IP")
    if ip != "host-gateway":
        ip = _address(ip, "--add-host")
    return f"{name}:{ip}"


def parse_expose(value: str) -> list[str]:
    """``--expose PORT[-PORT][/PROTO]``: ``80/tcp`` items."""
    rest, _, proto = value.strip().partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp"):
        raise InvalidOption(f"invalid --expose {value!r}: protocol {proto!r} is not tcp or udp")
    lo, hi = _port_range(rest, value, "port")
    return [f"{p}/{proto}" for p in range(lo, hi + 1)]


def _port_range(text: str, spec: str, what: str) -> tuple[int, int]:
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise InvalidOption(f"invalid -p {spec!r}: {what} {text!r} is not a port number")
    if not (1 <= lo <= hi <= 65535):
        raise InvalidOption(
            f"invalid -p {spec!r}: {what} {text!r} is out of range (1-65535, low-high)"
        )
    return lo, hi


def parse_publish(spec: str) -> list[PortMapping]:
    """Docker's ``-p``: ``[IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]``, ranges (``8000-8001:
    80-81``) of equal length; no HOSTPORT (``80``, ``IP::80``) = a free host port."""
    import ipaddress

    rest, sep, proto = spec.strip().rpartition("/")
    if not sep:
        rest, proto = spec.strip(), "tcp"
    proto = proto.lower()
    if proto not in ("tcp", "udp"):
        raise InvalidOption(f"invalid -p {spec!r}: protocol {proto!r} is not tcp or udp")
    if rest.startswith("["):
        raise InvalidOption(f"invalid -p {spec!r}: IPv6 host addresses are not supported yet")
    parts = rest.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise InvalidOption(f"invalid -p {spec!r}: expected [IP:][HOSTPORT:]CONTAINERPORT[/PROTO]")
    host_ip = parts[0] if len(parts) == 3 else ""
    host = parts[-2] if len(parts) >= 2 else ""
    if host_ip:
        try:
            ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise InvalidOption(f"invalid -p {spec!r}: {host_ip!r} is not an IPv4 address")
        host_ip = "" if host_ip == "0.0.0.0" else host_ip
    c_lo, c_hi = _port_range(parts[-1], spec, "container port")
    if not host:
        return [PortMapping(p, proto, host_ip, 0) for p in range(c_lo, c_hi + 1)]
    h_lo, h_hi = _port_range(host, spec, "host port")
    if h_hi - h_lo != c_hi - c_lo:
        raise InvalidOption(
            f"invalid -p {spec!r}: the host and container port ranges differ in length"
        )
    return [PortMapping(c_lo + i, proto, host_ip, h_lo + i) for i in range(c_hi - c_lo + 1)]


def parse_ports(specs: Sequence[str]) -> list[PortMapping]:
    """Every ``-p``; one host port published twice (same protocol, overlapping address)
    is refused."""
    ports = [p for spec in specs for p in parse_publish(spec)]
    claimed: dict[tuple[int, str], list[str]] = {}
    for p in ports:
        if not p.host_port:
            continue
        ips = claimed.setdefault((p.host_port, p.protocol), [])
        if any(not ip or not p.host_ip or ip == p.host_ip for ip in ips):
            raise InvalidOption(f"host port {p.host_port}/{p.protocol} is published twice (-p)")
        ips.append(p.host_ip)
    return ports


def apply_isolation(parsed: ParsedRun, isolation: str) -> None:
    """The network and ``--vm-base`` rules of the chosen isolation (``process`` or
    ``vm``), as the engine applies them (``lamina.engine._run_image``)."""
    from lamina.engine._run_image import InvalidConfig
    from lamina.engine._run_image import apply_isolation as engine_apply

    try:
        engine_apply(parsed.config, isolation, network=parsed.network, warnings=parsed.warnings)
    except InvalidConfig as e:
        raise InvalidOption(str(e)) from None


def parse_log_options(driver: str | None, values: Sequence[str]) -> tuple[str, dict[str, str]]:
    """``--log-driver`` and ``--log-opt KEY=VALUE``s, checked as Docker checks them
    (``runtime._logs``): (driver, options)."""
    if driver is None and not values:
        return "k8s-file", {}
    from lamina.runtime._logs import DEFAULT_DRIVER, log_settings

    name = DEFAULT_DRIVER if driver is None else driver.strip()
    options: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key.strip():
            raise InvalidOption(f"invalid --log-opt {v!r}: expected KEY=VALUE")
        options[key.strip()] = val.strip()
    try:
        log_settings(name, options)
    except LaminaError as e:
        raise InvalidOption(str(e)) from None
    return name, options


def parse_restart(value: str) -> RestartPolicy:
    """``--restart``, with Docker's messages (the engine checks the policy)."""
    from lamina.engine._restart import parse_policy
    from lamina.engine._run_image import InvalidConfig

    try:
        return parse_policy(value)
    except InvalidConfig as e:
        raise InvalidOption(str(e)) from None


def parse_healthcheck(opts: RunOptions) -> dict[str, Any] | None:
    """The ``--health-*`` and ``--no-healthcheck`` flags as Docker's HealthConfig (the
    engine merges it with the image's HEALTHCHECK at create); None: the image's."""
    from lamina.engine._health import HealthFlags, from_flags

    flags = HealthFlags(
        cmd=opts.health_cmd,
        interval=opts.health_interval,
        timeout=opts.health_timeout,
        retries=opts.health_retries,
        start_period=opts.health_start_period,
        start_interval=opts.health_start_interval,
        disabled=opts.no_healthcheck,
    )
    if flags == HealthFlags():
        return None
    try:
        return from_flags(flags)
    except LaminaError as e:
        raise InvalidOption(str(e)) from None


def parse_isolation(value: str | None) -> str:
    """``process``, ``vm`` or ``auto`` (resolved against the image by the caller)."""
    v = (value or "").strip().lower()
    if v in ("process", "default", ""):
        return "process"
    if v in ("vm", "auto"):
        return v
    raise InvalidOption(f"invalid --isolation {value!r}: expected process, vm or auto")


def _bool(val: str, what: str) -> bool:
    v = val.strip().lower()
    if v in ("", "1", "true", "yes"):
        return True
    if v in ("0", "false", "no"):
        return False
    raise InvalidOption(f"invalid {what}: {val!r} is not true or false")


# -- the whole config


def build_config(
    opts: RunOptions,
    *,
    image: str,
    image_ref: str,
    command: Sequence[str] | None,
    environ: Mapping[str, str] | None = None,
    cpu_count: int | None = None,
    path_exists: Callable[[str], bool] = os.path.exists,
) -> ParsedRun:
    environ = os.environ if environ is None else environ
    if opts.name is not None and not re.match(_NAME_RE, opts.name):
        raise InvalidOption(
            f"invalid container name {opts.name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-]+ are allowed"
        )
    network, requests = parse_networks(opts)
    if opts.hostname and network and network.startswith("container:"):
        raise InvalidOption("conflicting options: --hostname and --network container:<id>")
    if opts.workdir is not None and opts.workdir and not opts.workdir.startswith("/"):
        raise InvalidOption(
            f"the working directory {opts.workdir!r} is invalid: it needs to be an absolute path"
        )
    result = ParsedRun(config=ContainerConfig(image=image, image_ref=image_ref), network=network)
    cfg = result.config
    ports = parse_ports(opts.publish)

    env = [e for f in opts.env_files for e in parse_env_file(f, environ)]
    env += parse_env(opts.env, environ)

    mounts: list[Mount] = []
    for spec in opts.volumes:
        m = parse_volume(spec)
        if m.type == "bind" and not path_exists(m.source):
            result.bind_dirs_to_create.append(m.source)  # Docker creates -v sources
        mounts.append(m)
    mounts += [parse_mount(spec) for spec in opts.mounts]
    tmpfs = dict(parse_tmpfs(spec) for spec in opts.tmpfs)
    seen: set[str] = set()
    for target in [m.target for m in mounts] + list(tmpfs):
        if target in seen:
            raise InvalidOption(f"duplicate mount point: {target}")
        seen.add(target)

    security = Security(
        privileged=opts.privileged,
        # --privileged lifts no_new_privileges (setuid binaries work again), as in
        # Docker; an explicit --security-opt no-new-privileges[=true|false] wins.
        no_new_privileges=not opts.privileged,
        cap_add=[parse_capability(c, "--cap-add") for c in opts.cap_add],
        cap_drop=[parse_capability(c, "--cap-drop") for c in opts.cap_drop],
        read_only_rootfs=opts.read_only,
    )
    apply_security_opts(opts.security_opt, security)

    stop_signal = parse_stop_signal(opts.stop_signal) if opts.stop_signal else None
    if opts.stop_timeout is not None and opts.stop_timeout < -1:
        raise InvalidOption(f"invalid --stop-timeout {opts.stop_timeout}: must be -1 or more")

    cfg.name = opts.name.lstrip("/") if opts.name else None
    cfg.entrypoint = (
        None if opts.entrypoint is None else ([opts.entrypoint] if opts.entrypoint else [])
    )
    cfg.command = list(command) if command else None
    cfg.env = env
    cfg.working_dir = opts.workdir or None
    cfg.user = opts.user or None
    cfg.hostname = opts.hostname or None
    cfg.tty = opts.tty
    cfg.stdin_open = opts.interactive
    cfg.network = network or "none"
    cfg.networks = requests
    cfg.ports = ports
    cfg.publish_all = opts.publish_all
    cfg.expose = [e for v in opts.expose for e in parse_expose(v)]
    cfg.extra_hosts = [parse_add_host(h) for h in opts.add_hosts]
    cfg.dns = [_address(d, "--dns") for d in opts.dns]
    cfg.dns_search = [d.strip() for d in opts.dns_search if d.strip()]
    cfg.dns_options = [d.strip() for d in opts.dns_options if d.strip()]
    cfg.mounts = mounts
    cfg.tmpfs = tmpfs
    cfg.sysctls = dict(parse_sysctl(s, network or "none") for s in opts.sysctls)
    cfg.ulimits = [parse_ulimit(u) for u in opts.ulimits]
    cfg.resources = parse_resources(
        cpus=opts.cpus,
        cpu_shares=opts.cpu_shares,
        cpuset_cpus=opts.cpuset_cpus,
        memory=opts.memory,
        memory_swap=opts.memory_swap,
        pids_limit=opts.pids_limit,
        cpu_count=cpu_count,
    )
    cfg.security = security
    cfg.stop_signal = stop_signal
    if opts.stop_timeout is not None:
        cfg.stop_timeout = opts.stop_timeout
    cfg.init = opts.init
    cfg.labels = parse_labels(opts.labels, opts.label_files)
    cfg.auto_remove = opts.auto_remove
    if opts.restart:
        cfg.restart = parse_restart(opts.restart)
        if opts.auto_remove and cfg.restart.name != "no":
            raise InvalidOption("conflicting options: cannot specify both --restart and --rm")
    cfg.isolation = parse_isolation(opts.isolation)
    cfg.log_driver, cfg.log_options = parse_log_options(opts.log_driver, opts.log_opts)
    cfg.healthcheck = parse_healthcheck(opts)
    if opts.vm_base is not None:
        if not opts.vm_base.strip():
            raise InvalidOption("--vm-base needs a bundle directory or reference")
        cfg.vm_base = opts.vm_base.strip()
    if cfg.isolation != "auto":  # auto: the caller applies the one it chooses
        apply_isolation(result, cfg.isolation)
    return result


# -- times (logs --since/--until)


def parse_duration(value: str) -> float:
    """A Go duration (``10m``, ``1h30m``, ``1.5s``, ``300ms``) in seconds."""
    v = value.strip()
    pos = 0
    total = 0.0
    for m in re.finditer(_DURATION_PART, v):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(v) or not v:
        raise InvalidOption(f"invalid duration {value!r}: expected e.g. 10m, 1h30m or 45s")
    return total


def parse_time(value: str, now: float, flag: str = "--since") -> float:
    """Docker's log time filter: RFC 3339 (``2024-01-02T15:04:05Z``, date only, or no zone
    meaning local time), a Unix timestamp (``1700000000.5``), or a duration back from now."""
    from datetime import datetime

    v = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", v):
        return float(v)
    if re.fullmatch(r"[\d.]+(ns|us|µs|ms|s|m|h)([\d.]+(ns|us|µs|ms|s|m|h))*", v):
        return now - parse_duration(v)
    iso = v[:-1] + "+00:00" if v.endswith(("Z", "z")) else v
    if "." in iso:  # Python 3.11 takes at most 6 fractional digits
        head, _, rest = iso.partition(".")
        frac = "".join(c for c in rest if c.isdigit())
        iso = f"{head}.{frac[:6]}{rest[len(frac) :]}"
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        raise InvalidOption(
            f"invalid {flag} {value!r}: expected an RFC 3339 time, a Unix timestamp "
            "or a duration like 10m"
        )


def prepare_run(
    engine: Any,
    opts: RunOptions,
    *,
    image: str,
    command: Sequence[str] | None,
    pull: str = "missing",
    platform: str | None = None,
    progress: Callable[[], Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[ContainerConfig, list[str]]:
    """What ``run``/``create`` do before the engine creates the container, for every
    front end (the CLI, the daemon's create): flags checked before the image is
    touched (a typo should not cost a pull), the image resolved per ``pull``, the
    config built for it and settled by the engine (isolation, network, ``-v`` sources
    made). Returns the config and the warnings for the user."""
    isolation = parse_isolation(opts.isolation)
    build_config(opts, image="", image_ref=image, command=command, environ=environ,
                 cpu_count=os.cpu_count())  # fmt: skip
    record = engine.resolve_image(image, pull=pull, platform=platform, progress=progress)
    parsed = build_config(opts, image=record.id, image_ref=image, command=command,
                          environ=environ, cpu_count=os.cpu_count())  # fmt: skip
    warnings = parsed.warnings + engine.settle(
        parsed.config,
        record,
        requested=isolation,
        network=parsed.network,
        make_bind_sources=parsed.bind_dirs_to_create,
        progress=progress,
    )
    return parsed.config, warnings
