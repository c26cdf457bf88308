"""lamina.client: the CLI's side of the lamina daemon (``lamina --host URL``).

Public API::

    connect(url, tls=None, token=None) -> RemoteEngine   # what the CLI takes from Engine
    Address.parse(url)        # unix:///PATH or tcp://HOST:PORT
    TLSFiles(verify, ca, cert, key)
    DaemonUnreachable         # no daemon at the address: one line naming it
    NotServed                 # a command the daemon does not serve yet

It imports neither the engine, nor the image plane, nor the builder: a remote
command's start costs the CLI, ``http.client`` and the engine's data classes.
"""

from __future__ import annotations

from lamina.client._engine import BadRequest, NotServed, RemoteEngine
from lamina.client._transport import Address, DaemonUnreachable, TLSFiles, Transport

__all__ = [
    "Address",
    "BadRequest",
    "DaemonUnreachable",
    "NotServed",
    "RemoteEngine",
    "TLSFiles",
    "connect",
]


def connect(url: str, *, tls: TLSFiles | None = None, token: str | None = None) -> RemoteEngine:
    """The engine a daemon at ``url`` serves (connections are made per request)."""
    return RemoteEngine(Transport(Address.parse(url), tls=tls, token=token))
