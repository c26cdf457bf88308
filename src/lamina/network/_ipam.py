"""Address management (netavark 1.4 allocates nothing: its caller gives every address).

- subnets: as given (``--subnet``, ``--gateway``, ``--ip-range``, checked as Docker
  checks them), or chosen: a /24 that overlaps none of the host's routes nor another
  network of the root, picked at random from 10.128.0.0/9 so that roots used at the
  same time (other users, parallel tests) do not pick the same one before either has
  a bridge up;
- addresses: the lowest free one of the range (gateway, network and broadcast
  addresses excluded), or the static one asked for; the caller records it in the
  same transaction it read the leases in (``_db``);
- MACs: Docker's ``02:42`` + the IPv4 address (unique on a bridge as the address is).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence

from lamina.errors import LaminaError
from lamina.network._model import Subnet

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_POOL = ipaddress.IPv4Network("10.128.0.0/9")
_POOL_PREFIX = 24
_TRIES = 256


class InvalidNetwork(LaminaError, ValueError):
    """A network option Docker would refuse."""


def parse_network(cidr: str, what: str = "subnet") -> IPNetwork:
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        raise InvalidNetwork(f"invalid {what} {cidr!r}: expected a CIDR like 10.1.0.0/24") from None


def parse_address(
    text: str, what: str = "address"
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidNetwork(f"invalid {what} {text!r}: not an IP address") from None


def host_routes() -> list[IPNetwork]:
    """Destinations of the host's routes (IPv4 and IPv6), default routes excluded."""
    found: list[IPNetwork] = []
    try:
        with open("/proc/net/route") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) < 8:
                    continue
                dest = ipaddress.IPv4Address(bytes.fromhex(parts[1])[::-1])
                mask = ipaddress.IPv4Address(bytes.fromhex(parts[7])[::-1])
                net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
                if net.prefixlen:
                    found.append(net)
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/net/ipv6_route") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 2 or int(parts[1], 16) == 0:
                    continue
                addr = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
                found.append(ipaddress.IPv6Network(f"{addr}/{int(parts[1], 16)}", strict=False))
    except (OSError, ValueError):
        pass
    return found


def _overlaps(net: IPNetwork, others: Iterable[IPNetwork]) -> bool:
    return any(net.version == o.version and net.overlaps(o) for o in others)


def choose_subnet(in_use: Sequence[IPNetwork]) -> Subnet:
    """A free /24 (see the module docstring)."""
    avoid = [*in_use, *host_routes()]
    count = 2 ** (_POOL_PREFIX - _POOL.prefixlen)
    rng = random.SystemRandom()
    for _ in range(_TRIES):
        base = int(_POOL.network_address) + rng.randrange(count) * 2 ** (32 - _POOL_PREFIX)
        net = ipaddress.IPv4Network((base, _POOL_PREFIX))
        if not _overlaps(net, avoid):
            return Subnet(str(net), str(net.network_address + 1))
    raise LaminaError("no free subnet left for a new network: give one with --subnet")


def make_subnets(
    subnets: Sequence[str],
    gateways: Sequence[str],
    ip_ranges: Sequence[str],
    *,
    ipv6: bool,
    in_use: Sequence[IPNetwork],
) -> list[Subnet]:
    """``network create``'s IPAM flags as Docker pairs them: each gateway and ip-range
    belongs to the subnet that contains it; an IPv4 subnet is chosen when none is
    given; IPv6 needs ``--ipv6`` and a subnet of its own (no pool here)."""
    nets = [parse_network(s) for s in subnets]
    for i, net in enumerate(nets):
        if _overlaps(net, nets[:i]):
            raise InvalidNetwork(f"subnets {nets[i]} and another one given overlap")
        if _overlaps(net, in_use):
            raise InvalidNetwork(f"subnet {net} overlaps a subnet of another network")
        if net.version == 6 and not ipv6:
            raise InvalidNetwork(f"IPv6 subnet {net} needs --ipv6")
        if net.num_addresses < 4:
            raise InvalidNetwork(f"subnet {net} is too small for containers")
    out = [Subnet(str(n), "") for n in nets]
    for text in gateways:
        gw = parse_address(text, "gateway")
        idx = _owner(nets, gw, f"gateway {gw}")
        if out[idx].gateway:
            raise InvalidNetwork(f"subnet {nets[idx]} has more than one gateway")
        if gw in (nets[idx].network_address, nets[idx].broadcast_address):
            raise InvalidNetwork(f"gateway {gw} cannot be the network or broadcast address")
        out[idx].gateway = str(gw)
    for text in ip_ranges:
        rng = parse_network(text, "ip-range")
        matching = [i for i, n in enumerate(nets) if n.version == rng.version and rng.subnet_of(n)]  # type: ignore[arg-type]
        if not matching:
            raise InvalidNetwork(f"ip-range {rng} is not within any subnet given (--subnet)")
        out[matching[0]].ip_range = str(rng)
    for i, s in enumerate(out):
        if not s.gateway:
            s.gateway = str(nets[i].network_address + 1)
    if not any(n.version == 4 for n in nets):
        if gateways or (ip_ranges and not nets):
            raise InvalidNetwork("--gateway and --ip-range need --subnet")
        out.insert(0, choose_subnet(in_use))
    if ipv6 and not any(n.version == 6 for n in nets):
        raise InvalidNetwork("--ipv6 needs an IPv6 --subnet (no IPv6 pool is configured)")
    return out


def _owner(
    nets: Sequence[IPNetwork], address: ipaddress.IPv4Address | ipaddress.IPv6Address, what: str
) -> int:
    for i, n in enumerate(nets):
        if n.version == address.version and address in n:
            return i
    raise InvalidNetwork(f"{what} is not within any subnet given (--subnet)")


def allocate(subnet: Subnet, taken: set[str], requested: str = "") -> tuple[str, int]:
    """(address, prefix length) for a container on ``subnet``: ``requested`` if given
    (it must be in the subnet and free), else the lowest free one of its range."""
    net = ipaddress.ip_network(subnet.subnet, strict=False)
    reserved = {str(net.network_address), subnet.gateway}
    if net.version == 4:
        reserved.add(str(net.broadcast_address))
    if requested:
        addr = parse_address(requested)
        if addr.version != net.version or addr not in net:
            raise InvalidNetwork(f"address {addr} is not within the network's subnet {net}")
        if str(addr) in reserved:
            raise InvalidNetwork(
                f"address {addr} is reserved on subnet {net} (gateway, network or broadcast)"
            )
        if str(addr) in taken:
            raise InvalidNetwork(f"address {addr} is already in use on subnet {net}")
        return str(addr), net.prefixlen
    pool = ipaddress.ip_network(subnet.ip_range, strict=False) if subnet.ip_range else net
    for addr in pool.hosts() if pool.num_addresses > 2 else pool:
        text = str(addr)
        if text not in reserved and text not in taken:
            return text, net.prefixlen
    raise LaminaError(f"no free address left on subnet {subnet.ip_range or net}")


def mac_for(ipv4: str) -> str:
    """Docker's MAC for an address: 02:42 and the address's four bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ipv4).packed)


def valid_mac(text: str) -> str:
    parts = text.strip().lower().split(":")
    if len(parts) != 6 or not all(
        len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts
    ):
        raise InvalidNetwork(f"invalid MAC address {text!r}")
    if int(parts[0], 16) & 1:
        raise InvalidNetwork(f"invalid MAC address {text!r}: a multicast address")
    return ":".join(parts)
