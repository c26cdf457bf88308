"""UDP endpoints (HAProxy has none): balanced by the kernel's NAT. Each root has one
nat chain, ``LAMINA-INGRESS-<hash of the root>``, jumped to from PREROUTING and OUTPUT
for local destinations (as netavark's port forwards are); each udp route is one DNAT
rule per ready server, spread evenly by ``statistic --mode nth`` (every N-th new flow
to the first, every (N-1)-th of the rest to the second, ...). conntrack keeps a flow
on the server it was given; when a server stops being ready its flows are
forgotten (``forget_flows``) so that their next datagram is balanced again. The
chain is rewritten in one ``iptables-restore`` transaction, so a packet never meets
half a rule set.
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


def chain_name(root: Path) -> str:
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:10].upper()
    return f"LAMINA-INGRESS-{digest}"


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


def apply(root: Path, address: str, routes: Sequence[Route], backends: Sequence[Backend]) -> None:
    """Make the root's chain hold exactly the rules of ``routes`` (none: removed)."""
    chain = chain_name(root)
    if not routes:
        remove(root)
        return
    lines = rules(chain, address, routes, backends)
    # A declared chain is flushed by iptables-restore (--noflush keeps the others).
    _iptables("--noflush", input="\n".join(["*nat", f":{chain} - [0:0]", *lines, "COMMIT", ""]))
    for hook in _HOOKS:
        jump = [hook, "-m", "addrtype", "--dst-type", "LOCAL", "-j", chain]
        if not _iptables("-t", "nat", "-C", *jump, check=False):
            _iptables("-t", "nat", "-I", *jump)


def remove(root: Path) -> None:
    """Remove the root's chain and the jumps to it (nothing when absent)."""
    chain = chain_name(root)
    for hook in _HOOKS:
        jump = [hook, "-m", "addrtype", "--dst-type", "LOCAL", "-j", chain]
        while _iptables("-t", "nat", "-D", *jump, check=False):
            pass
    if _iptables("-t", "nat", "-F", chain, check=False):
        _iptables("-t", "nat", "-X", chain, check=False)


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
