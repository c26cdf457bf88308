"""netavark (and aardvark-dns through it), driven the way Podman drives them:
``netavark --config DIR -a AARDVARK setup|teardown NETNS`` with the network options
as JSON on stdin (netavark 1.4's format: ``aliases``, ``static_ips``, ``static_mac``).
netavark makes the bridge, the veth into the namespace, the addresses and routes,
the firewall rules (masquerade, port forwards) and aardvark-dns's entries; teardown
with the same options undoes them (the bridge with its last container, aardvark-dns
with its last entry). ``DIR`` is per root (``<root>/networks/netavark``): two roots
never see each other's aardvark entries. Calls on one root take turns (``_locked``)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lamina.errors import LaminaError
from lamina.network._model import Network
from lamina.runtime._types import Endpoint, PortMapping

_NETAVARK = ("/usr/lib/podman/netavark", "/usr/libexec/podman/netavark")
_AARDVARK = ("/usr/lib/podman/aardvark-dns", "/usr/libexec/podman/aardvark-dns")
_NOISE = ("failed to connect to syslog",)  # aardvark-dns's, on every start
_HOST_LOCK = Path("/run/lamina/netavark.lock")  # shared by every root (_host_locked)
_SIOCSIFHWADDR = 0x8924  # ioctl: set a link's hardware address
_ARPHRD_ETHER = 1
_NET_ADDR_SET = "3"  # addr_assign_type of an address set by hand


class NetworkSetupFailed(LaminaError):
    """netavark refused to set up a container's networks."""


def _find(candidates: Sequence[str], name: str) -> str:
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found:
        return found
    raise LaminaError(
        f"{name} is not installed (looked in {', '.join(candidates)} and PATH): bridge "
        "networks need netavark and aardvark-dns (Debian: apt-get install netavark aardvark-dns)"
    )


def config_dir(root: Path) -> Path:
    return Path(root) / "networks" / "netavark"


def network_info(net: Network) -> dict[str, Any]:
    """A network as netavark 1.4 reads it."""
    # isolate: no traffic between this network and another (Docker's rule; netavark
    # leaves networks open to each other otherwise).
    options: dict[str, str] = {"isolate": "true"}
    if net.mtu:
        options["mtu"] = str(net.mtu)
    return {
        "name": net.name,
        "id": net.id,
        "driver": "bridge",
        "network_interface": net.interface,
        "created": "1970-01-01T00:00:00Z",
        "subnets": [{"subnet": s.subnet, "gateway": s.gateway} for s in net.subnets],
        "ipv6_enabled": net.ipv6,
        "internal": net.internal,
        "dns_enabled": net.dns,
        "options": options,
        "ipam_options": {"driver": "host-local"},
    }


def options(
    cid: str,
    name: str,
    endpoints: Sequence[Endpoint],
    networks: dict[str, Network],
    ports: Sequence[PortMapping] = (),
) -> dict[str, Any]:
    """netavark's options for container ``cid`` named ``name``: each endpoint's
    addresses, MAC and DNS names (the short ID and the aliases; netavark adds the
    name), the networks' records, the published ports."""
    nets: dict[str, Any] = {}
    infos: dict[str, Any] = {}
    for e in endpoints:
        net = networks[e.network_id]
        nets[net.name] = {
            "static_ips": [a for a in (e.ipv4, e.ipv6) if a],
            "aliases": [cid[:12], *e.aliases] if net.dns else [],
            "interface_name": e.interface,
            "static_mac": e.mac,
        }
        infos[net.name] = network_info(net)
    return {
        "container_id": cid,
        "container_name": name,
        "port_mappings": [
            {
                "host_ip": p.host_ip,
                "container_port": p.container_port,
                "host_port": p.host_port,
                "range": 1,
                "protocol": p.protocol,
            }
            for p in ports
        ],
        "networks": nets,
        "network_info": infos,
    }


def _raced(proc: subprocess.CompletedProcess[bytes]) -> bool:
    out = proc.stdout + proc.stderr
    return b"already exists" in out or b"No chain/target/match" in out


def _run(argv: list[str], opts: dict[str, Any]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, input=json.dumps(opts).encode(), capture_output=True, check=False,
        env={**os.environ, "RUST_LOG": "error"},
    )  # fmt: skip


def take_lock(root: Path) -> int:
    """The root's netavark lock, held on the returned fd until it is closed (by every
    process that has it: a forked child may finish the work)."""
    config_dir(root).mkdir(parents=True, exist_ok=True)
    fd = os.open(config_dir(root) / "lamina.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _locked(root: Path, held: bool) -> Iterator[None]:
    """One netavark at a time on a root, as Podman takes its network lock: netavark
    1.4 makes the firewall chains of a network without locking (two setups racing on
    a new network fail with "Chain already exists"). ``held``: the caller has it."""
    if held:
        yield
        return
    fd = take_lock(root)
    try:
        yield
    finally:
        os.close(fd)


def _isolation_first(tool: str) -> None:
    """netavark 1.4 adds its isolation jump to FORWARD only when it makes the chain,
    and deletes the jump (not the chain) with the last isolated bridge: the next
    setup would isolate nothing, and a jump made again after NETAVARK_FORWARD (which
    accepts everything from a network's subnet) neither. Put it first, once."""
    rules = subprocess.run([tool, "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
    lines = rules.splitlines()
    jump = "-A FORWARD -j NETAVARK_ISOLATION_1"
    if lines[1:2] == [jump]:
        return
    if jump in lines:
        subprocess.run([tool, "-w", "-D", "FORWARD", "-j", "NETAVARK_ISOLATION_1"],
                       capture_output=True)  # fmt: skip
    subprocess.run([tool, "-w", "-I", "FORWARD", "1", "-j", "NETAVARK_ISOLATION_1"],
                   capture_output=True)  # fmt: skip


def _isolation_in_use(tool: str) -> bool:
    """Whether some bridge (of any root, or Podman's) is still isolated: its rules in
    NETAVARK_ISOLATION_1 besides the chain and its RETURN."""
    rules = subprocess.run([tool, "-w", "-S", "NETAVARK_ISOLATION_1"], capture_output=True,
                           text=True).stdout.splitlines()  # fmt: skip
    return any(r.startswith("-A ") and not r.endswith("-j RETURN") for r in rules)


@contextlib.contextmanager
def _host_locked() -> Iterator[None]:
    """One netavark at a time on the host: roots have their own config dirs but share
    netavark's global chains (NETAVARK_FORWARD, the isolation chains, the host-port
    chains), which netavark 1.4 adds and deletes without locking: one root's teardown
    racing another's setup fails with "No chain/target/match" or "Chain already
    exists". Taken inside the root's lock, never around it."""
    _HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(_HOST_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pin_bridge_address(interface: str) -> None:
    """Set the bridge's MAC address to the one it has, once: a Linux bridge whose
    address was never set takes the lowest of its ports' at every port added or
    removed, and each of its containers then has the gateway at a stale address in
    its ARP cache (DNS and egress lost for up to half a minute) whenever another
    container of the network starts or stops. A set address (``addr_assign_type``
    3) stays. Nothing done where that fails: the kernel's choice stands."""
    base = Path("/sys/class/net") / interface
    try:
        if (base / "addr_assign_type").read_text().strip() == _NET_ADDR_SET:
            return
        mac = bytes.fromhex((base / "address").read_text().strip().replace(":", ""))
        ifreq = struct.pack("16sH14s", interface.encode(), _ARPHRD_ETHER, mac)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), _SIOCSIFHWADDR, ifreq)
    except (OSError, ValueError, struct.error):
        return


def run(
    root: Path, action: str, netns: Path, opts: dict[str, Any], *, locked: bool = False
) -> dict[str, Any]:
    """``netavark setup|teardown NETNS`` with ``opts``; its JSON answer. A refusal is
    one NetworkSetupFailed line (netavark's own error, or its last line of stderr).
    ``locked``: the caller holds the root's lock (``take_lock``)."""
    argv = [
        _find(_NETAVARK, "netavark"),
        "--config", str(config_dir(root)),
        "-a", _find(_AARDVARK, "aardvark-dns"),
        action, str(netns),
    ]  # fmt: skip
    config_dir(root).mkdir(parents=True, exist_ok=True)
    with _locked(root, locked), _host_locked():
        proc = _run(argv, opts)
        if proc.returncode != 0 and action == "setup" and _raced(proc):
            # Podman changed a global chain at the same time: once more.
            _run([*argv[:-2], "teardown", argv[-1]], opts)
            proc = _run(argv, opts)
        if proc.returncode == 0 and action == "setup":
            for info in opts["network_info"].values():
                pin_bridge_address(str(info["network_interface"]))
        if proc.returncode == 0:
            v6 = any(":" in ip for n in opts["networks"].values() for ip in n["static_ips"])
            for tool in ("iptables", "ip6tables") if v6 else ("iptables",):
                # A teardown that removed the last isolated bridge of this root took
                # the host's jump with it, whatever other roots still isolate.
                if action == "setup" or _isolation_in_use(tool):
                    _isolation_first(tool)
    out = proc.stdout.decode(errors="replace").strip()
    answer: dict[str, Any] = {}
    if out:
        try:
            answer = json.loads(out)
        except ValueError:
            answer = {}
    if proc.returncode == 0:
        return answer
    error = str(answer.get("error") or "") if isinstance(answer, dict) else ""
    if not error:
        lines = [
            line for line in proc.stderr.decode(errors="replace").splitlines()
            if line.strip() and not line.startswith(_NOISE)
        ]  # fmt: skip
        error = lines[-1] if lines else f"exit status {proc.returncode}"
    error = "; ".join(part.strip(" \t-") for part in error.splitlines() if part.strip(" \t-"))
    raise NetworkSetupFailed(f"network {action} failed: {error}")
