"""Published ports: ``-P`` expanded to the exposed ports, then every host port
reserved by a socket bound to it, as Podman does: a port that is taken fails the start
here, in one line, before anything is made; a random one (``-p 80``) is the port the
kernel gives the socket. The sockets go to the run's monitor, which holds them until
the run ends (so no other process takes the port); netavark's DNAT rules carry the
traffic, so the sockets never see a connection."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable, Sequence

from lamina.errors import LaminaError
from lamina.runtime._types import PortMapping


class PortTaken(LaminaError):
    """A host port asked for is in use."""


def expand(
    ports: Sequence[PortMapping], publish_all: bool, exposed: Iterable[str]
) -> list[PortMapping]:
    """``-p`` as given, plus (``-P``) each exposed ``PORT[/PROTO]`` not published yet,
    on a random host port."""
    out = list(ports)
    if publish_all:
        have = {p.private for p in ports}
        for item in exposed:
            number, _, proto = item.partition("/")
            p = PortMapping(int(number), (proto or "tcp").lower())
            if p.private not in have:
                have.add(p.private)
                out.append(p)
    return out


def reserve(ports: Sequence[PortMapping]) -> tuple[list[PortMapping], list[socket.socket]]:
    """Bind each host port; (the ports with their host ports resolved, the sockets).
    PortTaken naming the first one in use (every socket closed then)."""
    resolved: list[PortMapping] = []
    held: list[socket.socket] = []
    try:
        for p in ports:
            kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
            s = socket.socket(socket.AF_INET, kind)
            held.append(s)
            try:
                s.bind((p.host_ip or "0.0.0.0", p.host_port))
            except OSError as e:
                what = f"{p.host_ip or '0.0.0.0'}:{p.host_port}/{p.protocol}"
                if e.errno == errno.EADDRINUSE:
                    raise PortTaken(
                        f"cannot publish port {p.private}: host port {what} is already in use"
                    ) from None
                raise PortTaken(
                    f"cannot publish port {p.private} on host {what}: {e.strerror}"
                ) from None
            resolved.append(
                PortMapping(p.container_port, p.protocol, p.host_ip, s.getsockname()[1])
            )
    except BaseException:
        close(held)
        raise
    return resolved, held


def close(sockets: Iterable[socket.socket]) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.close()
