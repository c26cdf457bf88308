"""Network probes of a container: a TCP connect or an HTTP GET made from inside its
network namespace, in-process (no tool in the image, no subprocess).

Each probe runs in a thread of its own that ``setns(2)``s into the namespace
(CLONE_NEWNET moves only the calling thread), opens its socket there (a socket
belongs to the namespace it was made in) and ends: the thread runs nothing else, so
no other work of the process ever runs in the container's namespace. ``netns`` None
probes from the caller's namespace (a VM container's address, reached from the host).

Both return ``(ok, output)``: ``output`` is one line, as a health check's log shows
it (``connect 127.0.0.1:80: connection refused``, ``HTTP 503``). Every step has the
same deadline, ``timeout`` seconds from the start; what a server sends is read up to
the status line only, at most ``_MAX_HEAD`` bytes.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from lamina._mount import last_errno, libc

_CLONE_NEWNET = 0x40000000
_MAX_HEAD = 8192  # bytes read looking for the status line
_JOIN_SLACK = 1.0  # seconds past the deadline a probe's thread is given to end


class ProbeTimeout(Exception):
    """The probe's deadline passed; its message is the one-line output."""


@dataclass(frozen=True)
class HttpTarget:
    """An HTTP check's URL taken apart: where to connect and what to ask for."""

    host: str  # an IP address (``localhost`` becomes 127.0.0.1)
    port: int
    path: str  # with the query, as sent
    authority: str  # the Host header


def parse_http_url(url: str) -> HttpTarget:
    """``http://HOST[:PORT]/PATH``: HOST an IP address or ``localhost`` (a name would
    be resolved with the host's resolver, not the container's). ValueError saying
    what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"URL {url!r} must start with http://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"URL {url!r} must not carry credentials")
    host = parts.hostname or ""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"URL {url!r} must name localhost or an IP address") from None
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"URL {url!r} has an invalid port") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"URL {url!r} has an invalid port")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in path for c in " \r\n\t"):
        raise ValueError(f"URL {url!r} has white space in its path")
    return HttpTarget(host=host, port=port, path=path, authority=parts.netloc)


def probe_tcp(netns: str | None, host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Whether a TCP connect to ``host:port`` succeeds within ``timeout``, made in
    ``netns`` (a path to a network namespace; None: here)."""
    deadline = time.monotonic() + timeout

    def connect() -> tuple[bool, str]:
        _connect(host, port, deadline).close()
        return True, f"connect {_hostport(host, port)}: ok"

    return _in_netns(netns, connect, deadline)


def probe_http(
    netns: str | None, url: str, expect_status: int, timeout: float, *, host: str = ""
) -> tuple[bool, str]:
    """Whether an HTTP GET of ``url`` answers ``expect_status`` within ``timeout``,
    made in ``netns``. ``host``: connect there instead of the URL's host (the Host
    header stays the URL's)."""
    deadline = time.monotonic() + timeout
    try:
        target = parse_http_url(url)
    except ValueError as e:
        return False, str(e)
    address = host or target.host

    def get() -> tuple[bool, str]:
        with _connect(address, target.port, deadline) as sock:
            request = (
                f"GET {target.path} HTTP/1.1\r\nHost: {target.authority}\r\n"
                "User-Agent: lamina-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            )
            _send_all(sock, request.encode(), deadline)
            status = _read_status(sock, deadline)
        if status is None:
            return False, f"GET {url}: not an HTTP response"
        return status == expect_status, f"HTTP {status}"

    return _in_netns(netns, get, deadline)


# -- one probe's thread ---------------------------------------------------------------------


def _in_netns(
    netns: str | None, work: Callable[[], tuple[bool, str]], deadline: float
) -> tuple[bool, str]:
    """``work()`` in a new thread that joined ``netns`` first; its answer, or a failure
    saying why (the namespace could not be entered, a socket error, the deadline)."""
    answer: list[tuple[bool, str]] = []

    def target() -> None:
        try:
            if netns is not None:
                _enter(netns)
            answer.append(work())
        except ProbeTimeout as e:
            answer.append((False, str(e)))
        except OSError as e:
            answer.append((False, e.strerror or str(e)))

    thread = threading.Thread(target=target, name="health-probe", daemon=True)
    thread.start()
    # Every socket call has the deadline as its timeout: the thread ends by then.
    thread.join(max(deadline - time.monotonic(), 0.0) + _JOIN_SLACK)
    if not answer:
        return False, "the probe did not end in time"
    return answer[0]


def _enter(netns: str) -> None:
    """This thread into the network namespace at ``netns`` (OSError if it cannot)."""
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise _failed(f"cannot enter the network namespace {netns}", e) from None
    try:
        if libc().setns(fd, _CLONE_NEWNET) != 0:
            err = last_errno()
            raise _failed(f"cannot enter the network namespace {netns}", OSError(err, ""))
    finally:
        os.close(fd)


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProbeTimeout(f"{what}: timed out")
    return left


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    what = f"connect {_hostport(host, port)}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(_remaining(deadline, what))
        sock.connect((host, port))
    except TimeoutError:
        sock.close()
        raise ProbeTimeout(f"{what}: timed out") from None
    except OSError as e:
        sock.close()
        raise _failed(what, e) from None
    return sock


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        sock.settimeout(_remaining(deadline, "send"))
        try:
            view = view[sock.send(view) :]
        except TimeoutError:
            raise ProbeTimeout("send: timed out") from None
        except OSError as e:
            raise _failed("send", e) from None


def _read_status(sock: socket.socket, deadline: float) -> int | None:
    """The status code of the response's first line; None when it is not HTTP's."""
    head = b""
    while b"\r\n" not in head and b"\n" not in head and len(head) < _MAX_HEAD:
        sock.settimeout(_remaining(deadline, "read"))
        try:
            chunk = sock.recv(_MAX_HEAD - len(head))
        except TimeoutError:
            raise ProbeTimeout("read: timed out") from None
        except OSError as e:
            raise _failed("read", e) from None
        if not chunk:
            break
        head += chunk
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    code = int(parts[1])
    return code if 100 <= code <= 999 else None


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _failed(what: str, e: OSError) -> OSError:
    """``connect 127.0.0.1:80: connection refused``: the kernel's words, as Go's net
    package prints them."""
    text = os.strerror(e.errno) if e.errno else str(e)
    return OSError(e.errno, f"{what}: {text[:1].lower()}{text[1:]}")
