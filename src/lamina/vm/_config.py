"""VM configuration: what a micro-VM gets, validated before any VMM starts.

Lifecycle: callers describe a VM with ``VmConfigBuilder`` (fluent setters, then
``build()``) or ``VmConfig.from_dict`` (a saved VM state). Either way the result is
a frozen ``VmConfig`` whose ``__post_init__`` ran every check, so a ``VmConfig``
that exists is valid (``dataclasses.replace`` re-validates too). A problem raises
``VmConfigError``; each problem is one line naming the field (``vcpus``,
``block_devices[2].path``, ``macs[0]`` ...); several found at once are joined with
"; " and kept in ``.problems``.

The machine identifier and the MAC addresses are generated once (uuid4; random,
locally administered, unicast ``02:xx:xx:xx:xx:xx``) and then kept by
``to_dict()``/``from_dict()``, so that a VM restored from a saved state gets the
same devices. Pure logic plus stat()/access()/a 4-byte read of the files named.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import stat
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lamina.errors import LaminaError

DEFAULT_VCPUS = 4
DEFAULT_MEMORY_MIB = 1024
MIN_MEMORY_MIB = 128
MAX_NETWORKS = 8
MAX_BLOCK_DEVICES = 63
MAX_TAG_LENGTH = 36  # virtio-fs tag field in the device config space
MIN_SUBNET_PREFIX_ROOM = 30  # a /30 holds host, guest, network and broadcast addresses
BUNDLED = "bundled"
QCOW2_MAGIC = b"QFI\xfb"
CONFIG_VERSION = 1

NetworkKind = Literal["nat", "tap", "netns"]
DiskFormat = Literal["raw", "qcow2"]
BootLogKind = Literal["none", "file", "stdout"]

_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_IFNAME_RE = re.compile(r"[^\s/:]{1,15}")  # Linux IFNAMSIZ - 1, no '/', ':' or space


class VmConfigError(LaminaError, ValueError):
    """A VM configuration breaks a rule; ``field`` names the first offending field."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        self.field = self.problems[0][0] if self.problems else ""
        super().__init__(
            "; ".join(f"vm config: {name}: {problem}" for name, problem in self.problems)
        )


@dataclass(frozen=True)
class NetworkAttachment:
    """User-mode NAT (``kind="nat"``, the default), a host tap device (``kind="tap"``)
    with the IPv4 subnet shared by host and guest (prefix /30 or shorter), or a link of
    a network namespace (``kind="netns"``: ``link``, e.g. a veth netavark made, in the
    namespace at ``netns``), which the guest NIC takes over through a tap in that
    namespace (``_tapnet``): its MAC, addresses, MTU and default route."""

    kind: NetworkKind = "nat"
    tap: str | None = None
    subnet: str | None = None
    netns: str | None = None  # kind "netns": the namespace's path (/run/netns/NAME)
    link: str | None = None  # kind "netns": the link's name in it

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for key in ("tap", "subnet", "netns", "link"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


@dataclass(frozen=True)
class BlockDevice:
    """A disk image or block device. ``format=None`` in the builder means "detect";
    a built config always holds the detected format."""

    path: Path
    format: DiskFormat = "raw"
    read_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "read_only": self.read_only}


@dataclass(frozen=True)
class SharedDir:
    """A host directory shared over virtio-fs (QEMU's virtiofsd), mounted by ``tag``."""

    path: Path
    tag: str
    read_only: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "tag": self.tag, "read_only": self.read_only}


@dataclass(frozen=True)
class BootLog:
    """Where the guest console goes: nowhere, a file, or lamina's stdout."""

    kind: BootLogKind = "none"
    path: Path | None = None

    @classmethod
    def parse(cls, spec: str) -> BootLog:
        """``none``, ``stdout`` or ``file:PATH`` (checked when the config is built)."""
        if spec in ("none", "stdout"):
            return cls(spec)  # type: ignore[arg-type]
        if spec.startswith("file:"):
            return cls("file", Path(spec[5:]) if spec[5:] else None)
        # Kept as an invalid value so that validation reports it with the others.
        return cls(spec, None)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"file:{self.path}" if self.kind == "file" else self.kind


def _generated_id() -> str:
    return str(uuid.uuid4())


def generate_mac() -> str:
    """A random locally administered, unicast MAC (``02:`` then 5 random octets)."""
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


@dataclass(frozen=True)
class VmConfig:
    """A validated VM configuration. ``kernel=None`` means the bundled guest kernel.
    ``macs`` holds one address per network (generated when left empty)."""

    vcpus: int = DEFAULT_VCPUS
    memory_mib: int = DEFAULT_MEMORY_MIB
    networks: tuple[NetworkAttachment, ...] = (NetworkAttachment(),)
    block_devices: tuple[BlockDevice, ...] = ()
    shared_dirs: tuple[SharedDir, ...] = ()
    kernel: Path | None = None
    initrd: Path | None = None
    init_block: Path | None = None
    cmdline: tuple[str, ...] = ()
    boot_log: BootLog = BootLog()
    machine_id: str = field(default_factory=_generated_id)
    macs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.macs and self.networks:
            object.__setattr__(self, "macs", tuple(generate_mac() for _ in self.networks))
        else:
            object.__setattr__(self, "macs", tuple(_norm_mac(m) for m in self.macs))
        problems = _validate(self)
        if problems:
            raise VmConfigError(problems)

    @staticmethod
    def builder() -> VmConfigBuilder:
        return VmConfigBuilder()

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib << 20

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``from_dict`` gives back an equal config (same id and MACs)."""
        return {
            "version": CONFIG_VERSION,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "networks": [n.to_dict() for n in self.networks],
            "block_devices": [b.to_dict() for b in self.block_devices],
            "shared_dirs": [s.to_dict() for s in self.shared_dirs],
            "kernel": BUNDLED if self.kernel is None else str(self.kernel),
            "initrd": None if self.initrd is None else str(self.initrd),
            "init_block": None if self.init_block is None else str(self.init_block),
            "cmdline": list(self.cmdline),
            "boot_log": str(self.boot_log),
            "machine_id": self.machine_id,
            "macs": list(self.macs),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VmConfig:
        """Rebuild a saved config; every rule is checked again (files may have gone)."""
        return _from_dict(d)


class VmConfigBuilder:
    """Fluent construction of a ``VmConfig``; nothing is checked until ``build()``.

    ``network()`` adds an attachment (the first call replaces the default NAT one);
    ``network("none")`` / ``no_network()`` leaves the VM without a network."""

    def __init__(self) -> None:
        self._vcpus: int = DEFAULT_VCPUS
        self._memory_mib: int = DEFAULT_MEMORY_MIB
        self._networks: list[NetworkAttachment] | None = None
        self._blocks: list[tuple[Path, str | None, bool]] = []
        self._shared: list[SharedDir] = []
        self._kernel: Path | None = None
        self._initrd: Path | None = None
        self._init_block: Path | None = None
        self._cmdline: list[str] = []
        self._boot_log = BootLog()
        self._machine_id: str | None = None
        self._macs: list[str] | None = None

    def vcpus(self, n: int) -> VmConfigBuilder:
        self._vcpus = n
        return self

    def memory_mib(self, mib: int) -> VmConfigBuilder:
        self._memory_mib = mib
        return self

    def network(
        self,
        kind: NetworkAttachment | str = "nat",
        *,
        tap: str | None = None,
        subnet: str | None = None,
        netns: str | None = None,
        link: str | None = None,
    ) -> VmConfigBuilder:
        if self._networks is None:
            self._networks = []
        if isinstance(kind, NetworkAttachment):
            self._networks.append(kind)
        elif kind != "none":
            self._networks.append(NetworkAttachment(kind, tap, subnet, netns, link))  # type: ignore[arg-type]
        return self

    def no_network(self) -> VmConfigBuilder:
        self._networks = []
        return self

    def block_device(
        self, path: str | os.PathLike[str], *, format: str | None = None, read_only: bool = False
    ) -> VmConfigBuilder:
        """Add a disk; ``format`` None detects raw or qcow2 from the file."""
        self._blocks.append((Path(path), format, read_only))
        return self

    def shared_dir(
        self, path: str | os.PathLike[str], tag: str, *, read_only: bool = False
    ) -> VmConfigBuilder:
        self._shared.append(SharedDir(Path(path), tag, read_only))
        return self

    def kernel(self, path: str | os.PathLike[str]) -> VmConfigBuilder:
        """A kernel file, or ``"bundled"`` for lamina's guest kernel (the default)."""
        self._kernel = None if str(path) == BUNDLED else Path(path)
        return self

    def initrd(self, path: str | os.PathLike[str] | None) -> VmConfigBuilder:
        self._initrd = None if path is None else Path(path)
        return self

    def init_block(self, path: str | os.PathLike[str] | None) -> VmConfigBuilder:
        self._init_block = None if path is None else Path(path)
        return self

    def cmdline(self, *fragments: str) -> VmConfigBuilder:
        self._cmdline.extend(fragments)
        return self

    def boot_log(self, sink: BootLog | str) -> VmConfigBuilder:
        self._boot_log = sink if isinstance(sink, BootLog) else BootLog.parse(sink)
        return self

    def machine_id(self, machine_id: str) -> VmConfigBuilder:
        self._machine_id = machine_id
        return self

    def macs(self, macs: Iterable[str]) -> VmConfigBuilder:
        self._macs = list(macs)
        return self

    def build(self) -> VmConfig:
        networks = (NetworkAttachment(),) if self._networks is None else tuple(self._networks)
        blocks, problems = _detect_formats(self._blocks)
        macs = tuple(self._macs) if self._macs is not None else ()
        if self._macs is not None and not self._macs and networks:
            problems.append(("macs", f"{len(networks)} network(s) need as many MACs, got 0"))
        try:
            config = VmConfig(
                vcpus=self._vcpus,
                memory_mib=self._memory_mib,
                networks=networks,
                block_devices=blocks,
                shared_dirs=tuple(self._shared),
                kernel=self._kernel,
                initrd=self._initrd,
                init_block=self._init_block,
                cmdline=tuple(self._cmdline),
                boot_log=self._boot_log,
                machine_id=_generated_id() if self._machine_id is None else self._machine_id,
                macs=macs,
            )
        except VmConfigError as e:
            raise VmConfigError([*problems, *e.problems]) from None
        if problems:
            raise VmConfigError(problems)
        return config


# -- validation -------------------------------------------------------------------

Problems = list[tuple[str, str]]


def _validate(c: VmConfig) -> Problems:
    p: Problems = []
    _check_minimum(p, "vcpus", c.vcpus, 1, "")
    _check_minimum(p, "memory_mib", c.memory_mib, MIN_MEMORY_MIB, " MiB")
    _check_networks(p, c.networks)
    _check_blocks(p, c.block_devices)
    _check_shared(p, c.shared_dirs)
    if c.kernel is not None:
        _check_file(p, "kernel", c.kernel)
    if c.initrd is not None:
        _check_file(p, "initrd", c.initrd)
    if c.init_block is not None:
        _check_file(p, "init_block", c.init_block)
    for i, frag in enumerate(c.cmdline):
        _check_cmdline(p, f"cmdline[{i}]", frag)
    _check_boot_log(p, c.boot_log)
    _check_machine_id(p, c.machine_id)
    _check_macs(p, c.macs, len(c.networks))
    return p


def _check_minimum(p: Problems, name: str, value: object, minimum: int, unit: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        p.append((name, f"must be an integer, got {value!r}"))
    elif value < minimum:
        p.append((name, f"must be at least {minimum}{unit}, got {value}"))


def _check_networks(p: Problems, networks: tuple[NetworkAttachment, ...]) -> None:
    if len(networks) > MAX_NETWORKS:
        p.append(("networks", f"at most {MAX_NETWORKS} attachments, got {len(networks)}"))
    if len({n.netns for n in networks if n.kind == "netns"}) > 1:
        p.append(("networks", "netns attachments must all be links of one namespace"))
    for i, net in enumerate(networks):
        where = f"networks[{i}]"
        if net.kind != "netns":
            for key in ("netns", "link"):
                if getattr(net, key) is not None:
                    p.append((f"{where}.{key}", f"only a netns attachment names a {key}"))
        if net.kind == "nat":
            if net.tap is not None:
                p.append((f"{where}.tap", "only a tap attachment names a tap device"))
        elif net.kind == "tap":
            if not net.tap:
                p.append((f"{where}.tap", "a tap attachment needs the tap device name"))
            elif not _IFNAME_RE.fullmatch(net.tap):
                p.append(
                    (f"{where}.tap", f"{net.tap!r} is not a valid interface name (1-15 chars)")
                )
            if net.subnet is None:
                p.append((f"{where}.subnet", "a tap attachment needs a subnet, e.g. 10.0.0.0/30"))
        elif net.kind == "netns":
            _check_netns(p, where, net)
        else:
            p.append((f"{where}.kind", f"must be 'nat', 'tap' or 'netns', got {net.kind!r}"))
        if net.subnet is not None:
            _check_subnet(p, f"{where}.subnet", net.subnet)


def _check_netns(p: Problems, where: str, net: NetworkAttachment) -> None:
    if net.tap is not None or net.subnet is not None:
        p.append((where, "a netns attachment takes its tap and addresses from the namespace"))
    if not net.netns:
        p.append((f"{where}.netns", "a netns attachment needs the namespace's path"))
    elif not os.path.isfile(net.netns):  # a bind-mounted nsfs file, or /proc/PID/ns/net
        p.append((f"{where}.netns", f"{net.netns}: no such network namespace"))
    if not net.link:
        p.append((f"{where}.link", "a netns attachment needs the link's name"))
    elif not _IFNAME_RE.fullmatch(net.link):
        p.append((f"{where}.link", f"{net.link!r} is not a valid interface name (1-15 chars)"))


def _check_subnet(p: Problems, where: str, subnet: str) -> None:
    if "/" not in subnet:
        p.append((where, f"{subnet!r} is not CIDR notation (ADDRESS/PREFIX)"))
        return
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        p.append((where, f"{subnet!r} is not a valid CIDR subnet ({e})"))
        return
    if net.version != 4:
        p.append((where, f"{subnet!r}: only IPv4 subnets are supported"))
    elif net.prefixlen > MIN_SUBNET_PREFIX_ROOM:
        p.append((where, f"{subnet!r}: prefix /{net.prefixlen} is too small, use /30 or shorter"))


def _detect_formats(
    specs: list[tuple[Path, str | None, bool]],
) -> tuple[tuple[BlockDevice, ...], Problems]:
    """Resolve ``format=None`` to what the file holds; unreadable files keep "raw" and
    are reported by validation."""
    out: list[BlockDevice] = []
    problems: Problems = []
    for i, (path, fmt, ro) in enumerate(specs):
        if fmt is None:
            fmt = "qcow2" if _magic(path) == QCOW2_MAGIC else "raw"
        elif fmt not in ("raw", "qcow2"):
            problems.append((f"block_devices[{i}].format", f"must be raw or qcow2, got {fmt!r}"))
            fmt = "raw"
        out.append(BlockDevice(path, fmt, ro))  # type: ignore[arg-type]
    return tuple(out), problems


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


def _check_blocks(p: Problems, blocks: tuple[BlockDevice, ...]) -> None:
    if len(blocks) > MAX_BLOCK_DEVICES:
        p.append(("block_devices", f"at most {MAX_BLOCK_DEVICES} devices, got {len(blocks)}"))
    seen: dict[str, int] = {}
    for i, dev in enumerate(blocks):
        where = f"block_devices[{i}]"
        key = os.path.realpath(dev.path)
        if key in seen:
            p.append((f"{where}.path", f"{dev.path} is already block_devices[{seen[key]}]"))
            continue
        seen[key] = i
        if dev.format not in ("raw", "qcow2"):
            p.append((f"{where}.format", f"must be raw or qcow2, got {dev.format!r}"))
            continue
        if not _check_file(p, f"{where}.path", dev.path, block_ok=True):
            continue
        if not dev.read_only and not os.access(dev.path, os.W_OK):
            p.append((f"{where}.path", f"{dev.path} is not writable (attach it read-only)"))
        is_qcow2 = _magic(dev.path) == QCOW2_MAGIC
        if dev.format == "qcow2" and not is_qcow2:
            p.append((f"{where}.format", f"{dev.path} is not a qcow2 image (no QFI magic)"))
        elif dev.format == "raw" and is_qcow2:
            p.append((f"{where}.format", f"{dev.path} is a qcow2 image, not raw"))


def _check_file(p: Problems, where: str, path: Path, *, block_ok: bool = False) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        p.append((where, f"{path} does not exist"))
        return False
    except OSError as e:
        p.append((where, f"{path}: {e.strerror}"))
        return False
    if not (stat.S_ISREG(st.st_mode) or (block_ok and stat.S_ISBLK(st.st_mode))):
        p.append((where, f"{path} is not a {'file or block device' if block_ok else 'file'}"))
        return False
    if not os.access(path, os.R_OK):
        p.append((where, f"{path} is not readable"))
        return False
    return True


def _check_shared(p: Problems, shared: tuple[SharedDir, ...]) -> None:
    seen: dict[str, int] = {}
    for i, sd in enumerate(shared):
        where = f"shared_dirs[{i}]"
        if not sd.tag:
            p.append((f"{where}.tag", "must not be empty"))
        elif len(sd.tag.encode()) > MAX_TAG_LENGTH:
            p.append((f"{where}.tag", f"{sd.tag!r} is longer than {MAX_TAG_LENGTH} bytes"))
        elif any(c.isspace() or not c.isprintable() for c in sd.tag):
            p.append((f"{where}.tag", f"{sd.tag!r} must not contain spaces or control chars"))
        elif sd.tag in seen:
            p.append((f"{where}.tag", f"{sd.tag!r} is already used by shared_dirs[{seen[sd.tag]}]"))
        else:
            seen[sd.tag] = i
        if not sd.path.is_dir():
            what = "is not a directory" if sd.path.exists() else "does not exist"
            p.append((f"{where}.path", f"{sd.path} {what}"))


def _check_cmdline(p: Problems, where: str, frag: str) -> None:
    if not isinstance(frag, str):
        p.append((where, f"must be a string, got {frag!r}"))
    elif not frag.strip():
        p.append((where, "must not be empty"))
    elif "\n" in frag or "\r" in frag:
        p.append((where, f"{frag!r} must not contain a newline"))
    elif "\0" in frag:
        p.append((where, f"{frag!r} must not contain a NUL byte"))


def _check_boot_log(p: Problems, log: BootLog) -> None:
    if log.kind in ("none", "stdout"):
        return
    if log.kind != "file":
        p.append(("boot_log", f"must be none, stdout or file:PATH, got {log.kind!r}"))
        return
    if log.path is None or not str(log.path):
        p.append(("boot_log", "file: needs a path (file:PATH)"))
        return
    parent = log.path.parent
    if not parent.is_dir():
        p.append(("boot_log", f"directory {parent} of {log.path} does not exist"))
    elif log.path.is_dir():
        p.append(("boot_log", f"{log.path} is a directory"))


def _check_machine_id(p: Problems, machine_id: object) -> None:
    if not isinstance(machine_id, str) or not machine_id:
        p.append(("machine_id", "must be a non-empty string"))
    elif any(c.isspace() or not c.isprintable() for c in machine_id):
        p.append(("machine_id", f"{machine_id!r} must not contain spaces or control chars"))


def _norm_mac(mac: object) -> object:
    return mac.strip().lower() if isinstance(mac, str) else mac


def _check_macs(p: Problems, macs: tuple[str, ...], networks: int) -> None:
    if len(macs) != networks:
        p.append(("macs", f"{networks} network(s) need as many MACs, got {len(macs)}"))
    seen: dict[str, int] = {}
    for i, mac in enumerate(macs):
        where = f"macs[{i}]"
        if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
            p.append((where, f"{mac!r} is not a MAC address (xx:xx:xx:xx:xx:xx)"))
            continue
        first = int(mac[:2], 16)
        if first & 1:
            p.append((where, f"{mac} is a multicast address (lowest bit of the first octet)"))
        elif not first & 2:
            p.append((where, f"{mac} is not locally administered (use e.g. 02:xx:xx:xx:xx:xx)"))
        elif mac in seen:
            p.append((where, f"{mac} is already used by macs[{seen[mac]}]"))
        else:
            seen[mac] = i


# -- from_dict ----------------------------------------------------------------------


def _from_dict(d: Mapping[str, Any]) -> VmConfig:
    if not isinstance(d, Mapping):
        raise VmConfigError([("config", "must be a JSON object")])
    version = d.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise VmConfigError([("version", f"unsupported config version {version!r}")])
    try:
        b = VmConfigBuilder()
        b.vcpus(d.get("vcpus", DEFAULT_VCPUS)).memory_mib(d.get("memory_mib", DEFAULT_MEMORY_MIB))
        if "networks" in d:
            b.no_network()
            for n in _list(d, "networks"):
                b.network(
                    NetworkAttachment(
                        n.get("kind", "nat"),
                        n.get("tap"),
                        n.get("subnet"),
                        n.get("netns"),
                        n.get("link"),
                    )
                )
        for bd in _list(d, "block_devices"):
            b.block_device(
                bd["path"], format=bd.get("format"), read_only=bd.get("read_only", False)
            )
        for sd in _list(d, "shared_dirs"):
            b.shared_dir(sd["path"], sd["tag"], read_only=bool(sd.get("read_only", False)))
        b.kernel(d.get("kernel") or BUNDLED).initrd(d.get("initrd")).init_block(d.get("init_block"))
        b.cmdline(*_list(d, "cmdline")).boot_log(str(d.get("boot_log", "none")))
        if "machine_id" in d:
            b.machine_id(d["machine_id"])
        if "macs" in d:
            b.macs(_list(d, "macs"))
    except (KeyError, TypeError, AttributeError) as e:
        raise VmConfigError([("config", f"malformed saved config ({type(e).__name__}: {e})")])
    return b.build()


def _list(d: Mapping[str, Any], key: str) -> list[Any]:
    value = d.get(key, [])
    if not isinstance(value, list):
        raise VmConfigError([(key, "must be a list")])
    return value
