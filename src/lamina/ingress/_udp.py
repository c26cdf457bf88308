"""UDP endpoints (HAProxy has none): balanced by the kernel's NAT. Each root has one
nat chain, ``LAMINA-INGRESS-<hash of the root>``, jumped to from PREROUTING and OUTPUT
for local destinations (as netavark's port forwards are); each udp route is one DNAT
rule per ready server, spread evenly by ``statistic --mode nth`` (every N-th new flow
to the first, every (N-1)-th of the rest to the second, ...). conntrack keeps a flow
on the server it was given; when a server stops being ready its flows are
forgotten (``forget_flows``) so that their next datagram is balanced again. The
chains are rewritten in one ``iptables-restore`` transaction, so a packet never meets
half a rule set.

A client on the host's loopback (127.0.0.1) reaches a container as netavark's port
forwards let it: the bridge towards the server routes loopback sources
(``route_localnet``, else the kernel drops such a packet as a martian) and a second
chain, ``<chain>-M`` from POSTROUTING, masquerades those flows to the bridge's address
so that the replies come back through the NAT.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lamina.ingress._model import Backend, IngressError, Route

_HOOKS = ("PREROUTING", "OUTPUT")
_MASQ_HOOK = "POSTROUTING"


def chain_name(root: Path) -> str:
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:10].upper()
    return f"LAMINA-INGRESS-{digest}"


def masq_chain_name(root: Path) -> str:
    return chain_name(root) + "-M"  # 27 characters: iptables allows 28


def _iptables(*args: str, input: str | None = None, check: bool = True) -> bool:
    proc = subprocess.run(
        ["iptables-restore" if input is not None else "iptables", *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if check and proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise IngressError(f"cannot set the UDP endpoints' NAT rules: {reason}")
    return proc.returncode == 0


def rules(
    chain: str, address: str, routes: Sequence[Route], backends: Sequence[Backend]
) -> list[str]:
    """The chain's rules (iptables-restore lines) for the udp ``routes``."""
    by_key = {b.key: b for b in backends}
    dest = "" if address in ("0.0.0.0", "") else f" -d {address}"
    out = []
    for route in sorted(routes, key=lambda r: r.port):
        ready = [s for s in by_key[route.backend].servers if s.ready]
        for i, server in enumerate(ready):
            left = len(ready) - i
            spread = f" -m statistic --mode nth --every {left} --packet 0" if left > 1 else ""
            target = f"[{server.address}]" if ":" in server.address else server.address
            out.append(
                f"-A {chain} -p udp{dest} --dport {route.port}{spread} "
                f"-j DNAT --to-destination {target}:{server.port}"
            )
    return out


def masq_rules(masq: str, routes: Sequence[Route]) -> list[str]:
    """The masquerade chain's rules: a flow from a loopback address that the DNAT
    chain sent on (its original destination port is a udp route's) leaves with the
    outgoing interface's address."""
    return [
        f"-A {masq} -s 127.0.0.0/8 -p udp -m conntrack --ctstate DNAT "
        f"--ctorigdstport {route.port} -j MASQUERADE"
        for route in sorted(routes, key=lambda r: r.port)
    ]


def apply(root: Path, address: str, routes: Sequence[Route], backends: Sequence[Backend]) -> None:
    """Make the root's chains hold exactly the rules of ``routes`` (none: removed)."""
    chain, masq = chain_name(root), masq_chain_name(root)
    if not routes:
        remove(root)
        return
    lines = [*rules(chain, address, routes, backends), *masq_rules(masq, routes)]
    if address in ("0.0.0.0", "") or address.startswith("127."):
        _route_loopback_to(backends, routes)
    # A declared chain is flushed by iptables-restore (--noflush keeps the others).
    restore = ["*nat", f":{chain} - [0:0]", f":{masq} - [0:0]", *lines, "COMMIT", ""]
    _iptables("--noflush", input="\n".join(restore))
    for hook, jump in _jumps(chain, masq):
        if not _iptables("-t", "nat", "-C", hook, *jump, check=False):
            _iptables("-t", "nat", "-I", hook, *jump)


def _jumps(chain: str, masq: str) -> list[tuple[str, list[str]]]:
    local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", chain]
    return [*((hook, local) for hook in _HOOKS), (_MASQ_HOOK, ["-j", masq])]


def _route_loopback_to(backends: Sequence[Backend], routes: Sequence[Route]) -> None:
    """``route_localnet`` on the interfaces towards the udp routes' servers (their
    bridges), as netavark sets it for its port forwards: without it the kernel drops a
    packet from 127.0.0.1 that the DNAT sends out of a bridge."""
    from pyroute2 import IPRoute, NetlinkError

    keys = {r.backend for r in routes}
    addresses = {s.address for b in backends if b.key in keys for s in b.servers}
    with IPRoute() as ipr:
        for address in sorted(addresses):
            try:
                found = ipr.route("get", dst=address)
                index = found[0].get_attr("RTA_OIF")
                name = ipr.get_links(index)[0].get_attr("IFLA_IFNAME")
            except (NetlinkError, IndexError, OSError, ValueError):
                continue  # no route (a server gone meanwhile): nothing to reach
            if name == "lo":
                continue
            with contextlib.suppress(OSError):  # the bridge went away meanwhile
                Path(f"/proc/sys/net/ipv4/conf/{name}/route_localnet").write_text("1\n")


def remove(root: Path) -> None:
    """Remove the root's chains and the jumps to them (nothing when absent)."""
    chain, masq = chain_name(root), masq_chain_name(root)
    for hook, jump in _jumps(chain, masq):
        while _iptables("-t", "nat", "-D", hook, *jump, check=False):
            pass
    for name in (chain, masq):
        if _iptables("-t", "nat", "-F", name, check=False):
            _iptables("-t", "nat", "-X", name, check=False)


def forget_flows(routes: Sequence[Route], backends: Sequence[Backend]) -> int:
    """Delete the conntrack entries of the udp ``routes``' flows that were sent to a
    server that is no longer ready (or no longer there); how many went."""
    from pyroute2 import Conntrack, NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    by_key = {b.key: b for b in backends}
    ready = {
        route.port: {(s.address, s.port) for s in by_key[route.backend].servers if s.ready}
        for route in routes
    }
    stale = []
    with Conntrack() as ct:
        # The whole dump first: pyroute2 cannot delete while it iterates.
        for entry in list(ct.dump_entries(tuple_orig=NFCTAttrTuple(proto=socket.IPPROTO_UDP))):
            orig, reply = entry.tuple_orig, entry.tuple_reply
            servers = ready.get(orig.dport)
            translated = (reply.saddr, reply.sport) != (orig.daddr, orig.dport)
            if servers is not None and translated and (reply.saddr, reply.sport) not in servers:
                stale.append(entry)
        for entry in stale:
            with contextlib.suppress(NetlinkError):  # ended meanwhile
                ct.delete(entry)
    return len(stale)
