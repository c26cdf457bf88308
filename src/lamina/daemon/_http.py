"""The daemon's HTTP/1.1 server: h11 for the protocol, one thread per connection.

Chosen by measurement (``bench/daemon_http.py``, docs/DAEMON.md): on a unix socket a
small JSON ``GET`` takes ~70 us at p50 here against ~90 us with aiohttp or h11 on
asyncio, and the engine's calls block (subprocesses, flocks, SQLite), so a thread per
connection calls them directly, with no executor between. h11 keeps nothing from the
handler: after a ``101`` the handler owns the socket (``Response.takeover``), which the
Docker API's attach and exec need (aiohttp's C parser refuses ``Upgrade: tcp``).

A handler is ``handler(request) -> Response``; a response body is bytes or an iterator
of chunks (sent chunked as they come: logs, events, progress). A stream that has
nothing to say polls ``Request.gone()`` so that a client that went away ends it; a
write to a closed client raises, which closes the iterator (its ``finally`` frees what
it held).
"""

from __future__ import annotations

import contextlib
import io
import json
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs, urlsplit

import h11

_RECV = 65536
_MAX_HEADERS = 64 * 1024
_IDLE_TIMEOUT = 300.0  # a keep-alive connection with no request for this long is closed
_DRAIN_LIMIT = 1 << 20  # an unread request body up to this is skipped to keep the connection


class HttpError(Exception):
    """An answer other than success: ``status`` and one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    # After the status line and headers (a 101), the handler's: given the socket and
    # the bytes the client sent after its request, it owns the connection until it
    # returns; the connection is closed then.
    takeover: Callable[[socket.socket, bytes], None] | None = None


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(value).encode())


def error_response(status: int, message: str) -> Response:
    return json_response({"message": " ".join(message.split()) or "error"}, status)


class Body:
    """The request body, read as it arrives (a tar stream is never held whole)."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._buf = b""
        self._done = False

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buf) < size):
            chunk = self._conn.body_chunk()
            if chunk is None:
                self._done = True
            else:
                self._buf += chunk
        if size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a request body has no file descriptor")

    def seekable(self) -> bool:
        return False

    @property
    def finished(self) -> bool:
        return self._done and not self._buf


@dataclass
class Request:
    method: str
    path: str  # as sent (escaped): the router unescapes its parameters
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: Body
    params: dict[str, str] = field(default_factory=dict)  # path parameters of the route
    _sock: socket.socket | None = None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.arg(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", ""):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise HttpError(400, f"query parameter {name}: expected true or false, not {value!r}")

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.arg(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise HttpError(400, f"query parameter {name}: expected an integer, not {value!r}")

    def json(self, limit: int = 4 << 20) -> Any:
        data = self.body.read(limit + 1)
        if len(data) > limit:
            raise HttpError(413, f"request body larger than {limit} bytes")
        if not data.strip():
            return {}
        try:
            return json.loads(data)
        except ValueError as e:
            raise HttpError(400, f"request body is not JSON: {e}")

    def stream(self) -> BinaryIO:
        return cast(BinaryIO, self.body)

    def gone(self, timeout: float = 0.0) -> bool:
        """Whether the client closed its side (or reset); waits up to ``timeout``."""
        sock = self._sock
        if sock is None:
            return False
        try:
            r, _, _ = select.select([sock], [], [], timeout)
            if not r:
                return False
            return _peek_closed(sock)
        except (OSError, ValueError):
            return True


def internal_error(e: BaseException) -> str:
    """What a client is told of a bug (a 500 or a stream's error line): said, not hidden."""
    return f"internal error: {type(e).__name__}: {e}"


def drain_json_lines(
    items: queue.Queue[Any], request: Request, *, poll: float = 1.0, end: bytes = b"\n"
) -> Iterator[bytes]:
    """What a worker thread puts in ``items``, as JSON lines, until it puts None; ends
    early when the client went away (looked at while nothing comes for ``poll`` s)."""
    while True:
        try:
            item = items.get(timeout=poll)
        except queue.Empty:
            if request.gone():
                return
            continue
        if item is None:
            return
        yield json.dumps(item).encode() + end


def _peek_closed(sock: socket.socket) -> bool:
    """Whether a readable socket was closed by its peer. TLS cannot peek: a byte is
    read, and a client that sends while its stream runs counts as gone too."""
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.setblocking(False)
            try:
                sock.recv(1)
            except ssl.SSLWantReadError:
                return False  # a record not complete yet (or a key update)
            finally:
                sock.setblocking(True)
            return True
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


Handler = Callable[[Request], Response]
Authorizer = Callable[[Request, "Listener"], bool]


@dataclass
class Listener:
    sock: socket.socket
    address: str  # as given: unix:///path or tcp://host:port
    tls: ssl.SSLContext | None = None
    token: bytes | None = None  # a bearer token every request must carry
    # The API served here, when not the server's (Docker's Engine API: lamina.dockerapi).
    dispatch: Handler | None = None


class Server:
    """Accept on every listener, a thread per connection; ``stop`` closes the
    listeners and every open connection (streams end) and waits for the threads."""

    def __init__(self, listeners: list[Listener], dispatch: Handler,
                 authorize: Authorizer) -> None:  # fmt: skip
        self._listeners = listeners
        self._dispatch = dispatch
        self._authorize = authorize
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()

    def serve(self) -> None:
        """Accept until ``stop``."""
        socks = [lst.sock for lst in self._listeners]
        by_fd = {lst.sock.fileno(): lst for lst in self._listeners}
        for s in socks:
            s.setblocking(False)
        while not self._stopping.is_set():
            try:
                r, _, _ = select.select([*socks, self._wake_r], [], [])
            except (OSError, ValueError):  # a listener closed by ``stop``
                if self._stopping.is_set():
                    return
                raise
            for s in r:
                if s is self._wake_r:
                    continue
                try:
                    conn, _ = s.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError:
                    if self._stopping.is_set():
                        break
                    raise
                conn.setblocking(True)
                self._start(conn, by_fd[s.fileno()])

    def _start(self, conn: socket.socket, listener: Listener) -> None:
        thread = threading.Thread(target=self._run, args=(conn, listener), daemon=True)
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return
            self._conns.add(conn)
            self._threads.add(thread)
        thread.start()

    def _run(self, conn: socket.socket, listener: Listener) -> None:
        raw = conn
        try:
            if listener.tls is not None:
                conn.settimeout(30)
                conn = listener.tls.wrap_socket(conn, server_side=True)
                conn.settimeout(None)
                with self._lock:
                    self._conns.discard(raw)
                    self._conns.add(conn)
            dispatch = listener.dispatch or self._dispatch
            _Connection(conn, listener, dispatch, self._authorize).run()
        except (OSError, ssl.SSLError, h11.ProtocolError):
            pass  # the client went away, or spoke no HTTP
        except Exception:  # a stream's bug after its status was sent: logged, closed
            import traceback

            traceback.print_exc()
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._conns.discard(raw)
                self._threads.discard(threading.current_thread())
            with contextlib.suppress(OSError):
                conn.close()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def request_stop(self) -> None:
        """Make ``serve`` return (safe in a signal handler)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listeners and every connection (streams end); wait for them."""
        self.request_stop()
        for lst in self._listeners:
            with contextlib.suppress(OSError):
                lst.sock.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:  # a blocked read or write returns: every stream ends
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(timeout)
        self._wake_r.close()
        self._wake_w.close()


class _Connection:
    """One client connection: requests in turn (keep-alive), each answered by the
    dispatcher."""

    def __init__(self, sock: socket.socket, listener: Listener, dispatch: Handler,
                 authorize: Authorizer) -> None:  # fmt: skip
        self.sock = sock
        self.listener = listener
        self.dispatch = dispatch
        self.authorize = authorize
        self.h = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADERS)

    def _event(self) -> Any:
        while True:
            event = self.h.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.h.they_are_waiting_for_100_continue:
                self._send(h11.InformationalResponse(status_code=100, headers=[]))
            try:
                data = self.sock.recv(_RECV)
            except TimeoutError:
                return h11.ConnectionClosed()
            self.h.receive_data(data)

    def body_chunk(self) -> bytes | None:
        """The next piece of the current request's body; None at its end."""
        while True:
            event = self._event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
                continue
            if isinstance(event, h11.EndOfMessage):
                return None
            raise ConnectionError("the client closed the connection in the middle of a body")

    def _send(self, event: Any) -> None:
        data = self.h.send(event)
        if data:
            self.sock.sendall(data)

    def run(self) -> None:
        while True:
            self.sock.settimeout(_IDLE_TIMEOUT)
            try:
                event = self._event()
            except h11.RemoteProtocolError as e:
                self._refuse(e.error_status_hint, f"bad request: {e}")
                return
            self.sock.settimeout(None)
            if not isinstance(event, h11.Request):
                return
            request = self._request(event)
            response = self._answer(request)
            if not self._respond(request, response):
                return
            if self.h.our_state is h11.MUST_CLOSE or not self._drain(request):
                return
            try:
                self.h.start_next_cycle()
            except h11.LocalProtocolError:
                return

    def _request(self, event: h11.Request) -> Request:
        target = event.target.decode("latin-1")
        split = urlsplit(target)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        return Request(
            method=event.method.decode("ascii"),
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=headers,
            body=Body(self),
            _sock=self.sock,
        )

    def _answer(self, request: Request) -> Response:
        if not self.authorize(request, self.listener):
            return error_response(401, "unauthorized: credentials missing or wrong")
        return self.dispatch(request)

    def _respond(self, request: Request, response: Response) -> bool:
        """Send ``response``; False when the connection is over."""
        headers = [("Content-Type", response.content_type), *response.headers]
        if response.takeover is not None:
            self._send(h11.InformationalResponse(status_code=101, headers=headers))
            trailing, _closed = self.h.trailing_data
            response.takeover(self.sock, bytes(trailing))
            return False
        if isinstance(response.body, bytes | bytearray):
            body = bytes(response.body)
            headers.append(("Content-Length", str(len(body))))
            self._send(h11.Response(status_code=response.status, headers=headers))
            if body and request.method != "HEAD":
                self._send(h11.Data(data=body))
            self._send(h11.EndOfMessage())
            return True
        chunks = iter(response.body)
        try:
            self._send(h11.Response(status_code=response.status, headers=headers))
            for chunk in chunks:
                if chunk:
                    self._send(h11.Data(data=chunk))
            self._send(h11.EndOfMessage())
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # a generator's finally runs now, in this thread
        return True

    def _drain(self, request: Request) -> bool:
        """Skip what the handler left of the request body; False if it is too much."""
        skipped = 0
        while not request.body.finished:
            skipped += len(request.body.read(_RECV))
            if skipped > _DRAIN_LIMIT:
                return False
        return True

    def _refuse(self, status: int, message: str) -> None:
        with contextlib.suppress(h11.LocalProtocolError, OSError):
            body = json.dumps({"message": message}).encode()
            self._send(h11.Response(status_code=status, headers=[
                ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                ("Connection", "close")]))  # fmt: skip
            self._send(h11.Data(data=body))
            self._send(h11.EndOfMessage())


def chunks_of(lines: Iterator[Any]) -> Iterator[bytes]:
    """JSON lines: one object a line, as a stream of chunks."""
    for value in lines:
        yield json.dumps(value).encode() + b"\n"
