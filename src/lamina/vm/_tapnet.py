"""A VM's NICs on bridge networks: Kata Containers' "tcfilter" model.

The engine makes a VM container's network namespace as it does a process container's,
and netavark puts a veth per network into it (address, MTU, default route: nothing
VM-specific). ``take_over(netns, links)`` then, inside that namespace, opens a tap per
link (``/dev/net/tun``, not persistent: it lives exactly as long as an fd on it, QEMU's)
and redirects all traffic both ways between the link and its tap with tc (an ingress
qdisc on each, a match-all u32 filter whose action is a mirred egress redirect to the
other). The guest NIC is given the link's MAC, addresses and MTU, so it owns the
address: what arrives on the veth goes to the guest, what the guest sends leaves by the
veth, and the namespace's own stack sees nothing (an ingress redirect steals every
packet before it). The namespace's IPv4 and IPv6 default routes become the guest's.

The work happens in a short-lived thread that enters the namespace (``setns`` acts on
the calling thread only): the taps and the netlink socket are made there and stay bound
to the namespace; the caller's own namespace never changes. QEMU gets the taps as file
descriptors (``-netdev tap,fd=N``; vhost-net is absent on this kind of host), so it
runs in the host's namespace like any other VM. A tap dies with its last fd (QEMU
killed, however) and every link of the namespace dies with it (the engine's teardown),
so nothing here needs undoing. A link's leftover ingress qdisc (an earlier run's, its
redirect target gone) is replaced.

pyroute2 is imported here only, when a VM on a bridge network starts (~0.12 s).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lamina._mount import last_errno, libc
from lamina.errors import LaminaError

_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
_ETH_P_ALL = 0x0003
_CLONE_NEWNET = 0x40000000
_INGRESS = "ffff:"
_MAIN_TABLE = 254
_SCOPE_LINK = 253

T = TypeVar("T")


@dataclass(frozen=True)
class GuestNic:
    """A link of the namespace as the guest gets it: same name, MAC, MTU, addresses
    (``ADDRESS/PREFIX``; link-local IPv6 ones left to the guest, which derives the same
    from the MAC); ``tap_fd``: the tap QEMU is given."""

    name: str
    mac: str
    mtu: int
    ipv4: str = ""
    ipv6: str = ""
    tap_fd: int = -1


@dataclass
class GuestNetwork:
    """The NICs taken over from one namespace, and its default routes (gateway, link)."""

    nics: list[GuestNic] = field(default_factory=list)
    routes: list[tuple[str, str]] = field(default_factory=list)

    def close(self) -> None:
        """Close lamina's tap fds (once QEMU holds its own, or on failure)."""
        for nic in self.nics:
            if nic.tap_fd >= 0:
                try:
                    os.close(nic.tap_fd)
                except OSError:
                    pass
        self.nics = [GuestNic(n.name, n.mac, n.mtu, n.ipv4, n.ipv6) for n in self.nics]

    def agent_payload(self, files: Mapping[str, str] = {}) -> bytes:
        """The agent's NETWORK frame (docs/VM_AGENT.md): NICs, routes, ``files``
        (``hostname``, ``hosts``, ``resolv.conf``: the container's /etc)."""
        return network_payload(self.nics, self.routes, files)


def network_payload(
    nics: Sequence[GuestNic],
    routes: Sequence[tuple[str, str]],
    files: Mapping[str, str],
    *,
    down: Sequence[str] = (),
) -> bytes:
    """NETWORK's payload: ``nics`` to configure, ``down`` ones to take down, default
    ``routes`` (gateway, link), ``files`` of the container's /etc."""
    lines = [
        f"nic {n.name} {n.mac} {n.mtu} {n.ipv4 or '-'} {n.ipv6 or '-'}\n".encode() for n in nics
    ]
    lines += [f"down {name}\n".encode() for name in down]
    lines += [f"route {gateway} {link}\n".encode() for gateway, link in routes]
    for name, text in files.items():
        body = text.encode()
        lines.append(f"file {name} {len(body)}\n".encode() + body)
    return b"".join(lines)


def take_over(netns: str, links: Sequence[str]) -> GuestNetwork:
    """A tap per link of ``netns`` (a namespace's path), redirected both ways to it with
    tc; what the guest needs to own each link's place. LaminaError when a link is
    missing or the kernel refuses a step (the taps made so far are closed)."""
    return _in_netns(netns, lambda: _take_over(links))


def _in_netns(netns: str, work: Callable[[], T]) -> T:
    """``work()`` run by a thread inside the network namespace at ``netns``."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            error.append(LaminaError(f"cannot open the network namespace {netns}: {e.strerror}"))
            return
        try:
            if libc().setns(fd, _CLONE_NEWNET) != 0:
                err = os.strerror(last_errno())
                error.append(LaminaError(f"cannot enter the network namespace {netns}: {err}"))
                return
        finally:
            os.close(fd)
        try:
            result.append(work())
        except BaseException as e:  # raised again in the caller's thread
            error.append(e)

    thread = threading.Thread(target=run, name="lamina-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _take_over(links: Sequence[str]) -> GuestNetwork:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    net = GuestNetwork()
    try:
        with IPRoute() as ipr:
            for i, name in enumerate(links):
                found = ipr.get_links(ifname=name) if name else []
                if not found:
                    raise LaminaError(f"the container's network namespace has no link {name!r}")
                link = found[0]
                tap_name = f"tap{i}"
                fd = _open_tap(tap_name)
                nic = _guest_nic(ipr, link, fd)
                net.nics.append(nic)
                tap = ipr.link_lookup(ifname=tap_name)[0]
                ipr.link("set", index=tap, state="up", mtu=nic.mtu)
                ipr.link("set", index=link["index"], state="up")
                _redirect(ipr, link["index"], tap)
                _redirect(ipr, tap, link["index"])
            net.routes = _default_routes(ipr, {n: name for n, name in _indexes(ipr, links)})
    except NetlinkError as e:
        net.close()
        raise LaminaError(f"cannot attach the VM's taps: {e}") from None
    except BaseException:
        net.close()
        raise
    return net


def _open_tap(name: str) -> int:
    """A tap named ``name`` in this thread's namespace (gone when the fd closes), with
    virtio-net headers (QEMU then passes the guest's offloads through)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as e:
        os.close(fd)
        raise LaminaError(f"cannot create the tap {name}: {e.strerror}") from None
    return fd


def _guest_nic(ipr: Any, link: Any, fd: int) -> GuestNic:
    ipv4 = ipv6 = ""
    for a in ipr.get_addr(index=link["index"]):
        cidr = f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
        if a["family"] == socket.AF_INET and not ipv4:
            ipv4 = cidr
        elif a["family"] == socket.AF_INET6 and a["scope"] != _SCOPE_LINK and not ipv6:
            ipv6 = cidr
    return GuestNic(
        link.get("IFLA_IFNAME"), link.get("IFLA_ADDRESS"), link.get("IFLA_MTU"), ipv4, ipv6, fd
    )


def _redirect(ipr: Any, source: int, target: int) -> None:
    """Everything arriving on ``source`` leaves by ``target``."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.tc("del", "ingress", source, _INGRESS)  # an earlier run's, its target gone
    except NetlinkError:
        pass
    ipr.tc("add", "ingress", source, _INGRESS)
    action = {"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target}
    ipr.tc("add-filter", "u32", source, parent=_INGRESS, protocol=_ETH_P_ALL,
           keys=["0x0/0x0+0"], target=0, action=[action])  # fmt: skip


def _indexes(ipr: Any, links: Sequence[str]) -> list[tuple[int, str]]:
    return [(ipr.link_lookup(ifname=name)[0], name) for name in links]


def _default_routes(ipr: Any, names: dict[int, str]) -> list[tuple[str, str]]:
    """The namespace's default routes through the given links, IPv4's then IPv6's
    (the best one of each: lowest metric)."""
    routes = []
    for family in (socket.AF_INET, socket.AF_INET6):
        best: tuple[int, str, str] | None = None
        for r in ipr.get_routes(family=family, table=_MAIN_TABLE):
            gateway, oif = r.get("RTA_GATEWAY"), r.get("RTA_OIF")
            if r["dst_len"] != 0 or not gateway or oif not in names:
                continue
            metric = r.get("RTA_PRIORITY") or 0
            if best is None or metric < best[0]:
                best = (metric, gateway, names[oif])
        if best is not None:
            routes.append((best[1], best[2]))
    return routes


