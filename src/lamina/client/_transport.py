"""HTTP/1.1 to the lamina daemon over a unix socket or TCP (TLS, a bearer token), on
``http.client``: it imports in ~3 ms where httpx takes 30-50 ms, and a client start
is most of ``lamina --host ... run --rm IMAGE true`` (measured: docs/BENCHMARKS.md).

One connection per request (the daemon serves a thread per connection; a CLI
command makes a handful of requests). Errors: a daemon that cannot be reached is
one ``DaemonUnreachable`` line naming the address, as Docker's CLI says it.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from lamina.errors import LaminaError


class DaemonUnreachable(LaminaError):
    """No daemon answers at the address (not running, refused, wrong path)."""


@dataclass(frozen=True)
class TLSFiles:
    """``--tls``/``--tlsverify`` with ``--tlscacert``/``--tlscert``/``--tlskey``:
    ``verify`` checks the daemon's certificate against ``ca`` (or the system's)."""

    verify: bool = True
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Address:
    """Where the daemon listens: ``unix:///path`` or ``tcp://host:port``."""

    url: str
    scheme: str  # unix | tcp
    path: str = ""  # unix
    host: str = ""  # tcp
    port: int = 0

    @classmethod
    def parse(cls, url: str) -> Address:
        parts = urlsplit(url)
        if parts.scheme == "unix" and parts.path:
            return cls(url, "unix", path=parts.path)
        if parts.scheme in ("tcp", "http", "https") and parts.hostname:
            try:
                port = parts.port
            except ValueError:
                port = None
            if port is None:
                raise LaminaError(f"invalid --host {url!r}: tcp:// needs a port (tcp://HOST:PORT)")
            return cls(url, "tcp", host=parts.hostname, port=port)
        raise LaminaError(f"invalid --host {url!r}: expected unix:///PATH or tcp://HOST:PORT")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Transport:
    """Requests to one daemon; each answer's status, headers and body stream."""

    def __init__(self, address: Address, *, tls: TLSFiles | None = None,
                 token: str | None = None, timeout: float | None = None) -> None:  # fmt: skip
        self.address = address
        self._tls = tls
        self._token = token
        self._timeout = timeout
        self._ssl: Any = None

    def _connection(self) -> http.client.HTTPConnection:
        a = self.address
        if a.scheme == "unix":
            return _UnixConnection(a.path, self._timeout)
        if self._tls is None:
            return http.client.HTTPConnection(a.host, a.port, timeout=self._timeout)
        return http.client.HTTPSConnection(a.host, a.port, timeout=self._timeout,
                                           context=self._ssl_context())  # fmt: skip

    def _ssl_context(self) -> Any:
        if self._ssl is None:
            import ssl

            tls = self._tls
            assert tls is not None
            ctx = ssl.create_default_context(cafile=tls.ca)
            if not tls.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if tls.cert:
                try:
                    ctx.load_cert_chain(tls.cert, tls.key)
                except (OSError, ssl.SSLError) as e:
                    raise LaminaError(f"cannot load the TLS client certificate {tls.cert}: {e}")
            self._ssl = ctx
        return self._ssl

    def unreachable(self, why: object = None) -> DaemonUnreachable:
        detail = f" ({why})" if why else ""
        return DaemonUnreachable(
            f"Cannot connect to the lamina daemon at {self.address.url}{detail}. "
            "Is the lamina daemon running?"
        )

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        *,
        json_body: Any = None,
        body: bytes | Iterable[bytes] | Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send a request; the answer with its body unread (read it, or stream it)."""
        url = path + _query(query)
        head = {"Host": "lamina"}
        if self._token:
            head["Authorization"] = f"Bearer {self._token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            head["Content-Type"] = "application/json"
        head.update(headers or {})
        conn = self._connection()
        chunked = body is not None and not isinstance(body, bytes)
        try:
            conn.request(method, url, body=body, headers=head, encode_chunked=chunked)
            resp = conn.getresponse()
        except (ConnectionRefusedError, FileNotFoundError, socket.gaierror) as e:
            conn.close()
            raise self.unreachable() from e
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            conn.close()
            if _is_tls_error(e):
                raise self.unreachable(e) from e
            raise LaminaError(f"the lamina daemon at {self.address.url} went away: {e}") from e
        return Answer(conn, resp)


def _is_tls_error(e: BaseException) -> bool:
    return type(e).__module__ == "ssl" or "SSL" in type(e).__name__


def _query(query: Mapping[str, Any] | None) -> str:
    if not query:
        return ""
    pairs = []
    for key, value in query.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        if isinstance(value, list):  # repeated: names=a&names=b
            pairs.extend((key, str(v)) for v in value)
            continue
        pairs.append((key, str(value)))
    return "?" + urlencode(pairs) if pairs else ""


def segment(value: str) -> str:
    """One path segment (an image name's ``/`` escaped)."""
    return quote(value, safe="")


class Answer:
    """A response: ``status``, ``header()``, and its body read whole or as it comes."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.conn = conn
        self.resp = resp
        self.status = resp.status

    def header(self, name: str) -> str | None:
        return self.resp.getheader(name)

    def read(self) -> bytes:
        try:
            return self.resp.read()
        finally:
            self.close()

    def json(self) -> Any:
        data = self.read()
        return json.loads(data) if data else None

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The body as it arrives; the connection is closed at its end or when the
        iteration is abandoned."""
        try:
            while True:
                data = self.resp.read1(size)
                if not data:
                    return
                yield data
        finally:
            self.close()

    def lines(self) -> Iterator[bytes]:
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    return
                yield line
        finally:
            self.close()

    def close(self) -> None:
        self.resp.close()
        self.conn.close()
