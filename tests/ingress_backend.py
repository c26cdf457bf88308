"""A backend for the ingress tests, run as its own process so that a test can SIGKILL it:
``python ingress_backend.py MODE NAME`` listens on a free loopback port, prints it,
and serves until killed.

- ``http``: any request gets ``{"name", "path", "headers"}`` as JSON (keep-alive);
  ``/slow`` waits half a second first; ``/fail-NAME`` is a 503 from backend NAME.
- ``ws``: a websocket echo (RFC 6455 handshake, text frames echoed back prefixed
  with the name).
- ``tcp``: echoes each line prefixed with the name.
- ``udp``: echoes each datagram prefixed with the name.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import socketserver
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _serve_http(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.headers.get("Upgrade", "").lower() == "websocket":
                self._websocket()
                return
            if self.path == "/slow":
                time.sleep(0.5)
            if self.path == f"/fail-{name}":  # this one's health check fails
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps(
                {"name": name, "path": self.path, "headers": dict(self.headers.items())}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _websocket(self) -> None:
            accept = base64.b64encode(
                hashlib.sha1((self.headers["Sec-WebSocket-Key"] + _WS_GUID).encode()).digest()
            ).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            while True:
                payload = read_frame(self.rfile)
                if payload is None:
                    return
                self.wfile.write(frame(f"{name}:".encode() + payload, mask=False))
                self.wfile.flush()

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def read_frame(stream: object) -> bytes | None:
    """One websocket frame's payload (unmasked); None at a close frame or EOF."""
    read = stream.read  # type: ignore[attr-defined]
    head = read(2)
    if len(head) < 2:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", read(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", read(8))[0]
    mask = read(4) if head[1] & 0x80 else b""
    data = read(length)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return None if opcode == 8 else bytes(data)


def frame(payload: bytes, mask: bool) -> bytes:
    """A final text frame; clients must mask theirs."""
    head = bytes([0x81])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    else:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _serve_tcp(name: str) -> socketserver.ThreadingTCPServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(f"{name}:".encode() + line)

    socketserver.ThreadingTCPServer.daemon_threads = True
    return socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)


def _serve_udp(name: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    while True:
        data, peer = sock.recvfrom(65536)
        sock.sendto(f"{name}:".encode() + data, peer)


def main() -> None:
    mode, name = sys.argv[1], sys.argv[2]
    if mode == "udp":
        _serve_udp(name)
        return
    server = _serve_tcp(name) if mode == "tcp" else _serve_http(name)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # type: ignore[method-assign]
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
