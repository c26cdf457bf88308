"""The daemon's HTTP stack, chosen by measurement: the same small JSON ``GET`` served over
a unix socket by each candidate, in a server process of its own, with a keep-alive
client that parses responses itself (so the client is not what is measured).

Candidates: ``aiohttp`` (asyncio, llhttp C parser), ``h11`` on asyncio streams, ``h11``
on threads (one per connection, socketserver). Reported: p50/p99 latency of one client
doing sequential requests on one connection, and requests/s with 16 concurrent
connections; then whether a handler can take the connection over (HTTP upgrade with
raw bytes both ways after a 101), which the Docker API's attach/exec needs.

Run: ``.venv/bin/python bench/daemon_http.py`` (about 20 s); ``--serve NAME SOCK`` is
the server side, started by the benchmark itself.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report  # noqa: E402

BODY = json.dumps([{"Id": f"{i:064x}", "Names": [f"/c{i}"], "State": "running"} for i in range(3)])
SEQUENTIAL = 3000
CONCURRENT = 16
PER_CONNECTION = 400
CANDIDATES = ["aiohttp", "h11-asyncio", "h11-threads"]


# -- servers ---------------------------------------------------------------------------


def serve_aiohttp(path: str) -> None:
    import logging

    from aiohttp import web

    logging.disable(logging.CRITICAL)  # the refused upgrade's traceback is expected

    async def ps(_request: web.Request) -> web.Response:
        return web.Response(text=BODY, content_type="application/json")

    async def upgrade(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=101, headers={"Connection": "Upgrade", "Upgrade": "tcp"})
        await resp.prepare(request)
        while True:  # echo raw bytes until the client closes its side
            data = await request.content.readany()
            if not data:
                break
            await resp.write(data.upper())
        return resp

    app = web.Application()
    app.router.add_get("/v1/containers/json", ps)
    app.router.add_post("/v1/upgrade", upgrade)
    web.run_app(app, path=path, print=None, access_log=None)


def _h11_response(h11: object, body: bytes) -> list[object]:
    return [
        h11.Response(  # type: ignore[attr-defined]
            status_code=200,
            headers=[("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        ),
        h11.Data(data=body),  # type: ignore[attr-defined]
        h11.EndOfMessage(),  # type: ignore[attr-defined]
    ]


def serve_h11_asyncio(path: str) -> None:
    import asyncio

    import h11

    body = BODY.encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    break
                continue
            if isinstance(event, h11.Request):
                continue
            if isinstance(event, h11.EndOfMessage):
                writer.write(b"".join(conn.send(e) for e in _h11_response(h11, body)))
                await writer.drain()
                conn.start_next_cycle()
                continue
            if isinstance(event, h11.ConnectionClosed):
                break
        writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, path)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def serve_h11_threads(path: str) -> None:
    import socketserver

    import h11

    body = BODY.encode()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn = h11.Connection(h11.SERVER)
            sock = self.request
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = sock.recv(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.EndOfMessage):
                    sock.sendall(b"".join(conn.send(e) for e in _h11_response(h11, body)))
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return

    class Server(socketserver.ThreadingUnixStreamServer):
        daemon_threads = True

    with Server(path, Handler) as server:
        server.serve_forever()


SERVERS = {
    "aiohttp": serve_aiohttp,
    "h11-asyncio": serve_h11_asyncio,
    "h11-threads": serve_h11_threads,
}


# -- the client ------------------------------------------------------------------------

REQUEST = b"GET /v1/containers/json HTTP/1.1\r\nHost: lamina\r\n\r\n"


def _read_response(sock: socket.socket, buf: bytearray) -> bytes:
    """One response with Content-Length off a keep-alive connection; what follows it
    stays in ``buf``."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            total = end + 4 + length
            while len(buf) < total:
                buf += sock.recv(65536)
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            return body
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk


def _connect(path: str) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def latencies(path: str, count: int) -> list[float]:
    sock = _connect(path)
    buf = bytearray()
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        sock.sendall(REQUEST)
        body = _read_response(sock, buf)
        out.append(time.perf_counter() - t0)
        assert body == BODY.encode()
    sock.close()
    return out


def throughput(path: str) -> float:
    def worker() -> None:
        sock = _connect(path)
        buf = bytearray()
        for _ in range(PER_CONNECTION):
            sock.sendall(REQUEST)
            _read_response(sock, buf)
        sock.close()

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENT)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return CONCURRENT * PER_CONNECTION / (time.perf_counter() - t0)


def upgrade_works(path: str) -> bool:
    """A 101 then raw bytes both ways on the same connection (the hijack of Docker's API)."""
    sock = _connect(path)
    sock.settimeout(5)
    sock.sendall(
        b"POST /v1/upgrade HTTP/1.1\r\nHost: lamina\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    head = b""
    try:
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            return False
        rest = head.split(b"\r\n\r\n", 1)[1]
        sock.sendall(b"raw bytes\x00\x01")
        while len(rest) < 11:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            rest += chunk
        return rest == b"RAW BYTES\x00\x01"
    except OSError:
        return False
    finally:
        sock.close()


def measure(name: str, workdir: str) -> dict[str, object]:
    path = os.path.join(workdir, f"{name}.sock")
    server = subprocess.Popen([sys.executable, __file__, "--serve", name, path])
    try:
        latencies(path, 300)  # warm up
        lat = latencies(path, SEQUENTIAL)
        rps = statistics.median(throughput(path) for _ in range(3))
        q = statistics.quantiles(lat, n=100)
        rss = _rss_kib(server.pid)
        hijack = upgrade_works(path) if name == "aiohttp" else False
    finally:
        server.terminate()
        server.wait()
    return {
        "p50_us": round(statistics.median(lat) * 1e6, 1),
        "p99_us": round(q[98] * 1e6, 1),
        "requests_per_s": round(rps),
        "server_rss_kib": rss,
        # h11 hands the bytes after a 101 back (lamina.daemon._http.Response.takeover,
        # tested in tests/test_daemon.py); only aiohttp's own support is probed here.
        "upgrade_takeover": hijack if name == "aiohttp" else "yes (h11: trailing_data)",
    }


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in CANDIDATES:
            results[name] = measure(name, workdir)
    best = min(CANDIDATES, key=lambda n: results[n]["p50_us"])  # type: ignore[index]
    report(
        "daemon_http",
        results,
        f"daemon_http: lowest p50 {best}; "
        + ", ".join(f"{n} p50 {results[n]['p50_us']} us" for n in CANDIDATES),  # type: ignore[index]
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        SERVERS[sys.argv[2]](sys.argv[3])
    else:
        main()
