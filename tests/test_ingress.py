"""The ingress (lamina.ingress) against a real HAProxy 2.6 and backends that are real
processes on loopback: routing, websockets, TCP, servers changed live under load,
failover, hitless reloads, adoption by a new Ingress and cleanup after a killed one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingress_backend import frame, read_frame
from ingress_fixtures import (
    Backends,
    Load,
    backend_procs,
    checked_ingress_root,
    free_port,
    get,
    haproxy_processes,
    served_by,
)
from runtime_fixtures import read_http_head, until

from lamina.ingress import Backend, Ingress, IngressError, InvalidIngress, Route, Server, _udp
from lamina.ingress._runtime import show_proc


@pytest.fixture
def backends() -> Iterator[Backends]:
    yield from backend_procs()


@pytest.fixture
def ingress_root(tmp_path: Path) -> Iterator[Path]:
    yield from checked_ingress_root(tmp_path)


def test_host_and_path_routing_forwarded_headers_and_404(
    ingress_root: Path,
    backends: Backends,
) -> None:
    port = free_port()
    a, a_api, wild, api, any_host = (
        backends.start("http", n) for n in ("a", "a-api", "wild", "api", "any")
    )
    routes = [
        Route(port, "http", "a", host="a.test"),
        Route(port, "http", "a-api", host="a.test", path="/api/v2"),
        Route(port, "http", "wild", host="*.wild.test"),
        Route(port, "http", "api", path="/api"),
        Route(port, "http", "any", host="catch.test"),
    ]
    ing = Ingress(ingress_root, address="127.0.0.1")
    assert (
        ing.apply(routes, [Backend(b.name, [b.server()]) for b in (a, a_api, wild, api, any_host)])
        == "started"
    )

    assert served_by(port, "a.test") == "a"
    assert served_by(port, "A.TEST:80", "/x") == "a"  # case and port do not matter
    assert served_by(port, "a.test", "/api/v2") == "a-api"  # longest prefix first
    assert served_by(port, "a.test", "/api/v2/users") == "a-api"
    assert served_by(port, "a.test", "/api/v20") == "a"  # a prefix is whole segments
    assert served_by(port, "a.test", "/api") == "a"  # the host's routes come first
    assert served_by(port, "x.wild.test") == "wild"
    assert served_by(port, "deep.x.wild.test") == "wild"
    assert served_by(port, "other.test", "/api/things") == "api"
    assert served_by(port, "catch.test") == "any"
    status, body = get(port, "wild.test")  # the bare domain is not *.wild.test
    assert status == 404 and "no route" in str(body)
    assert get(port, "nobody.test")[0] == 404

    status, body = get(port, "a.test", "/")
    assert isinstance(body, dict)
    headers = {k.lower(): v for k, v in body["headers"].items()}
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"


def _ws_connect(port: int, host: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        (
            f"GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = read_http_head(sock)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    return sock


def _ws_echo(sock: socket.socket, text: str) -> bytes | None:
    sock.sendall(frame(text.encode(), mask=True))
    return read_frame(sock.makefile("rb"))


def test_websocket_echo(ingress_root: Path, backends: Backends) -> None:
    port = free_port()
    ws = backends.start("http", "ws")
    ing = Ingress(ingress_root, address="127.0.0.1")
    ing.apply([Route(port, "websocket", "ws", host="ws.test")], [Backend("ws", [ws.server()])])
    sock = _ws_connect(port, "ws.test")
    try:
        assert _ws_echo(sock, "hello") == b"ws:hello"
        assert _ws_echo(sock, "again") == b"ws:again"
    finally:
        sock.close()


def test_tcp_echo(ingress_root: Path, backends: Backends) -> None:
    port = free_port()
    one, two = backends.start("tcp", "one"), backends.start("tcp", "two")
    ing = Ingress(ingress_root, address="127.0.0.1")
    ing.apply([Route(port, "tcp", "echo")], [Backend("echo", [one.server(), two.server()])])
    seen = set()
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"ping\n")
            answer = sock.makefile("rb").readline()
            name, _, rest = answer.partition(b":")
            assert rest == b"ping\n"
            seen.add(name)
    assert seen == {b"one", b"two"}  # round robin


def _worker(ing: Ingress) -> int | None:
    return show_proc(ing.paths.master_sock).current_worker


def test_servers_added_drained_and_removed_live_without_failed_requests(
    ingress_root: Path,
    backends: Backends,
) -> None:
    port = free_port()
    s1, s2, s3 = (backends.start("http", n) for n in ("s1", "s2", "s3"))
    ing = Ingress(ingress_root, address="127.0.0.1")
    route = [Route(port, "http", "web")]
    ing.apply(route, [Backend("web", [s1.server()])])
    worker = _worker(ing)
    with Load(port) as load:
        until(lambda: load.ok.get("s1", 0) > 20, timeout=20)
        # Added: traffic reaches them with no reload.
        assert (
            ing.apply(route, [Backend("web", [s1.server(), s2.server(), s3.server()])]) == "runtime"
        )
        until(lambda: load.ok.get("s2", 0) > 10 and load.ok.get("s3", 0) > 10, timeout=20)
        # Not ready: no more traffic.
        assert (
            ing.apply(route, [Backend("web", [s1.server(False), s2.server(), s3.server()])])
            == "runtime"
        )
        mark = load.ok.get("s1", 0)
        load.more(50)
        assert load.ok.get("s1", 0) <= mark + 2  # requests already in flight
        # Removed, another re-addressed onto the first's process: all live.
        moved = Server("s3", "127.0.0.1", s1.port)
        assert ing.apply(route, [Backend("web", [s2.server(), moved])]) == "runtime"
        load.more(50)
    assert load.failures == []
    assert _worker(ing) == worker  # never reloaded
    state = {s["name"]: s for s in ing.inspect()["backends"][0]["servers"]}
    assert set(state) == {"s2", "s3"} and state["s3"]["port"] == s1.port
    assert served_by(port) in {"s1", "s2"}  # s3's name now serves from s1's process


def test_failover_when_a_replica_is_killed(ingress_root: Path, backends: Backends) -> None:
    port = free_port()
    s1, s2 = backends.start("http", "s1"), backends.start("http", "s2")
    ing = Ingress(ingress_root, address="127.0.0.1")
    ing.apply([Route(port, "http", "web")], [Backend("web", [s1.server(), s2.server()])])
    with Load(port, threads=3) as load:
        until(lambda: load.ok.get("s1", 0) > 20 and load.ok.get("s2", 0) > 20, timeout=20)
        s1.kill()
        load.more(300)
    assert load.failures == []
    assert ing.inspect()["backends"][0]["servers"][0]["health"] == "down"  # HAProxy's check


def test_structural_changes_reload_hitlessly_under_load(
    ingress_root: Path,
    backends: Backends,
) -> None:
    port, tcp_port = free_port(), free_port()
    web, echo = backends.start("http", "web"), backends.start("tcp", "echo")
    ing = Ingress(ingress_root, address="127.0.0.1")
    base = [Backend("web", [web.server()]), Backend("echo", [echo.server()])]
    routes = [Route(port, "http", "web"), Route(tcp_port, "tcp", "echo")]
    ing.apply(routes, base)
    held = socket.create_connection(("127.0.0.1", tcp_port), timeout=10)
    held_reader = held.makefile("rb")
    with Load(port, threads=3) as load:
        until(lambda: load.total() > 50, timeout=20)
        for i in range(6):
            routes.append(Route(port, "http", "web", host=f"h{i}.test"))
            worker = _worker(ing)
            assert ing.apply(routes, base) == "reloaded"
            assert _worker(ing) != worker
            assert served_by(port, f"h{i}.test") == "web"
            load.more(30)
    assert load.failures == []
    held.sendall(b"still here\n")  # a connection of the old worker lives on
    assert held_reader.readline() == b"echo:still here\n"
    held.close()


def test_a_new_ingress_adopts_the_running_haproxy(ingress_root: Path, backends: Backends) -> None:
    port = free_port()
    s1, s2 = backends.start("http", "s1"), backends.start("http", "s2")
    routes = [Route(port, "http", "web")]
    # Applied by a process that then exits, as a daemon that stops.
    code = (
        "import sys; from lamina.ingress import Backend, Ingress, Route, Server; "
        f"Ingress(sys.argv[1], address='127.0.0.1').apply({routes!r}, "
        f"[Backend('web', [Server('s1', '127.0.0.1', {s1.port})])])"
    )
    subprocess.run([sys.executable, "-c", code, str(ingress_root)], check=True)
    assert served_by(port) == "s1"
    again = Ingress(ingress_root, address="127.0.0.1")
    master = again.running()
    assert master is not None
    with Load(port) as load:
        until(lambda: load.total() > 20, timeout=20)
        assert again.apply(routes, [Backend("web", [s1.server()])]) == "unchanged"
        assert again.apply(routes, [Backend("web", [s1.server(), s2.server()])]) == "runtime"
        until(lambda: load.ok.get("s2", 0) > 5, timeout=20)
    assert load.failures == []
    assert again.running() == master


def test_a_killed_haproxy_is_cleaned_up_and_replaced(
    ingress_root: Path, backends: Backends
) -> None:
    port = free_port()
    s1 = backends.start("http", "s1")
    ing = Ingress(ingress_root, address="127.0.0.1")
    ing.apply([Route(port, "http", "web")], [Backend("web", [s1.server()])])
    master = ing.running()
    assert master is not None
    os.kill(master, signal.SIGKILL)
    until(lambda: haproxy_processes(ingress_root) == [], timeout=10)  # its worker follows
    assert ing.running() is None
    assert (ingress_root / "ingress" / "admin.sock").exists()  # left behind
    fresh = Ingress(ingress_root, address="127.0.0.1")
    assert fresh.apply([Route(port, "http", "web")], [Backend("web", [s1.server()])]) == "started"
    assert fresh.running() not in (None, master)
    assert served_by(port) == "s1"


@pytest.mark.parametrize(
    ("routes", "backends_", "message"),
    [
        ([Route(80, "http", "web", host="bad host")], ["web"], "invalid host name: 'bad host'"),
        ([Route(80, "http", "web", path="/x y")], ["web"], "invalid path"),
        ([Route(80, "http", "nope")], ["web"], "unknown backend 'nope'"),
        ([Route(80, "http", "web"), Route(80, "tcp", "web")], ["web"], "used by both http and tcp"),
        ([Route(80, "http", "web"), Route(80, "https", "web")], ["web"], "cannot mix"),
        ([Route(0, "http", "web")], ["web"], "invalid port 0"),
        ([Route(80, "http", "web")], ["web\nbind :1"], "invalid backend key"),
    ],
)
def test_bad_routes_are_refused_with_nothing_written(
    tmp_path: Path, routes: list[Route], backends_: list[str], message: str
) -> None:
    ing = Ingress(tmp_path / "root", address="127.0.0.1")
    with pytest.raises(InvalidIngress, match=message.replace("(", r"\(")) as e:
        ing.apply(routes, [Backend(k) for k in backends_])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "root" / "ingress").exists()


def test_close_stops_haproxy_and_removes_its_files(ingress_root: Path, backends: Backends) -> None:
    port = free_port()
    s1 = backends.start("http", "s1")
    ing = Ingress(ingress_root, address="127.0.0.1")
    ing.apply([Route(port, "http", "web")], [Backend("web", [s1.server()])])
    assert haproxy_processes(ingress_root)
    ing.close()
    assert haproxy_processes(ingress_root) == []
    with pytest.raises(OSError):
        get(port, timeout=2)


def _apply_in_child(
    root: Path, port: int, server_port: int, stop_at: str
) -> subprocess.Popen[bytes]:
    """A process applying one route that stops itself at ``stop_at`` (lamina._hooks)."""
    code = (
        "import sys; from lamina.ingress import Backend, Ingress, Route, Server; "
        f"Ingress(sys.argv[1], address='127.0.0.1').apply([Route({port}, 'http', 'web')], "
        f"[Backend('web', [Server('s1', '127.0.0.1', {server_port})])])"
    )
    env = {**os.environ, "LAMINA_TEST_STOP_AT": stop_at}
    return subprocess.Popen([sys.executable, "-c", code, str(root)], env=env)


def _stopped(pid: int) -> bool:
    state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    return state == b"T"


def test_sigkill_while_writing_the_config_leaves_nothing(
    ingress_root: Path, backends: Backends
) -> None:
    port = free_port()
    s1 = backends.start("http", "s1")
    child = _apply_in_child(ingress_root, port, s1.port, "ingress:config-written")
    until(lambda: _stopped(child.pid), timeout=20)
    written = list((ingress_root / "ingress").glob(".haproxy.cfg.*.new"))
    assert written  # half-done work, leased
    child.kill()
    child.wait()
    ing = Ingress(ingress_root, address="127.0.0.1")
    assert ing.apply([Route(port, "http", "web")], [Backend("web", [s1.server()])]) == "started"
    assert not any(p.exists() for p in written)
    assert served_by(port) == "s1"


def test_haproxy_outlives_a_sigkilled_starter_and_is_adopted(
    ingress_root: Path, backends: Backends
) -> None:
    port = free_port()
    s1, s2 = backends.start("http", "s1"), backends.start("http", "s2")
    child = _apply_in_child(ingress_root, port, s1.port, "ingress:started")
    until(lambda: _stopped(child.pid), timeout=20)
    child.kill()
    child.wait()
    assert served_by(port) == "s1"  # HAProxy lives on without its starter
    ing = Ingress(ingress_root, address="127.0.0.1")
    master = ing.running()
    with Load(port) as load:
        load.more(20)
        # What the starter applied was never recorded: a (hitless) reload sets it.
        ing.apply([Route(port, "http", "web")], [Backend("web", [s1.server(), s2.server()])])
        until(lambda: load.ok.get("s2", 0) > 5, timeout=20)
    assert load.failures == []
    assert ing.running() == master


def test_a_route_changing_hosts_while_traffic_flows(ingress_root: Path, backends: Backends) -> None:
    port = free_port()
    steady, moving = backends.start("http", "steady"), backends.start("http", "moving")
    ing = Ingress(ingress_root, address="127.0.0.1")
    pool = [Backend("steady", [steady.server()]), Backend("moving", [moving.server()])]
    base = Route(port, "http", "steady", host="steady.test")
    ing.apply([base, Route(port, "http", "moving", host="old.test")], pool)
    assert served_by(port, "old.test") == "moving"
    with Load(port, host="steady.test") as load:
        load.more(30)
        ing.apply([base, Route(port, "http", "moving", host="new.test")], pool)
        load.more(30)
    assert load.failures == [] and set(load.ok) == {"steady"}
    assert served_by(port, "new.test") == "moving"
    assert get(port, "old.test")[0] == 404


def _nat_rules() -> str:
    return subprocess.run(
        ["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=True
    ).stdout


def _udp_echo(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a new flow
        sock.settimeout(5)
        sock.sendto(b"ping", ("127.0.0.1", port))
        return sock.recv(100)


def test_udp_echo_balanced_by_the_kernel_across_ready_replicas(
    ingress_root: Path, backends: Backends
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (iptables)")
    port = free_port()
    one, two = backends.start("udp", "one"), backends.start("udp", "two")
    ing = Ingress(ingress_root, address="127.0.0.1")
    # A UDP and a TCP endpoint may share a port number (DNS does).
    tcp = backends.start("tcp", "tcp")
    routes = [Route(port, "udp", "dns"), Route(port, "tcp", "dns-tcp")]
    pool = [Backend("dns", [one.server(), two.server()]), Backend("dns-tcp", [tcp.server()])]
    ing.apply(routes, pool)
    answers = {_udp_echo(port) for _ in range(6)}
    assert answers == {b"one:ping", b"two:ping"}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hi\n")
        assert sock.makefile("rb").readline() == b"tcp:hi\n"
    # A replica that is not ready gets no new flow, and its flows move on.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flow:
        flow.settimeout(5)
        answer = b""
        while answer != b"one:ping":  # a flow that one serves (conntrack keeps it there)
            flow.close()
            flow = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            flow.settimeout(5)
            flow.sendto(b"ping", ("127.0.0.1", port))
            answer = flow.recv(100)
        pool[0] = Backend("dns", [one.server(False), two.server()])
        assert ing.apply(routes, pool) == "runtime"
        assert {_udp_echo(port) for _ in range(6)} == {b"two:ping"}
        flow.sendto(b"ping", ("127.0.0.1", port))
        assert flow.recv(100) == b"two:ping"
    servers = ing.inspect()["backends"][0]["servers"]
    assert [s["health"] for s in servers] == ["maint", "nat"]
    chain = _udp.chain_name(ingress_root)
    assert chain in _nat_rules()
    ing.close()
    assert chain not in _nat_rules()


def test_a_port_in_use_is_refused_at_start_and_reload_and_nothing_changes(
    ingress_root: Path, backends: Backends
) -> None:
    s1 = backends.start("http", "s1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ing = Ingress(ingress_root, address="127.0.0.1")
        pool = [Backend("web", [s1.server()])]
        with pytest.raises(IngressError, match=f"cannot listen on 127.0.0.1 port {taken}: in use"):
            ing.apply([Route(taken, "http", "web")], pool)
        assert ing.running() is None and haproxy_processes(ingress_root) == []
        port = free_port()
        ing.apply([Route(port, "http", "web")], pool)
        before = (ingress_root / "ingress" / "haproxy.cfg").read_text()
        with pytest.raises(IngressError, match=f"port {taken}: in use"):
            ing.apply([Route(port, "http", "web"), Route(taken, "http", "web")], pool)
        assert (ingress_root / "ingress" / "haproxy.cfg").read_text() == before
        assert served_by(port) == "s1"
        # The ingress's own ports are no obstacle to a reload.
        assert ing.apply([Route(port, "http", "web", host="x.test")], pool) == "reloaded"


def test_concurrent_applies_from_several_processes_share_one_haproxy(
    ingress_root: Path, backends: Backends
) -> None:
    port = free_port()
    servers = [backends.start("http", f"s{i}") for i in range(4)]
    children = []
    for i, server in enumerate(servers):
        code = (
            "import sys; from lamina.ingress import Backend, Ingress, Route, Server; "
            f"Ingress(sys.argv[1], address='127.0.0.1').apply([Route({port}, 'http', 'web')], "
            f"[Backend('web', [Server('s{i}', '127.0.0.1', {server.port})])])"
        )
        children.append(subprocess.Popen([sys.executable, "-c", code, str(ingress_root)]))
    assert [c.wait() for c in children] == [0, 0, 0, 0]
    masters = Ingress(ingress_root).running()
    assert masters is not None and len(haproxy_processes(ingress_root)) == 2  # master, worker
    last = Ingress(ingress_root).inspect()["backends"][0]["servers"]
    assert len(last) == 1 and served_by(port) == last[0]["name"]  # the last apply won


def test_requests_in_flight_on_a_killed_replica_are_retried(
    ingress_root: Path, backends: Backends
) -> None:
    port = free_port()
    s1, s2 = backends.start("http", "s1"), backends.start("http", "s2")
    ing = Ingress(ingress_root, address="127.0.0.1")
    ing.apply([Route(port, "http", "web")], [Backend("web", [s1.server(), s2.server()])])
    results: list[object] = []

    def slow() -> None:
        try:
            results.append(get(port, path="/slow")[0])
        except OSError as e:
            results.append(e)

    threads = [threading.Thread(target=slow) for _ in range(6)]
    for t in threads:
        t.start()
    # Once requests are in flight on both (each waits half a second), s1 dies.
    until(lambda: len(_established_to(s1.port)) > 0, timeout=10)
    s1.kill()
    for t in threads:
        t.join()
    assert results == [200] * 6  # those on s1 were sent again to s2


def _established_to(port: int) -> list[str]:
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"dport = :{port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.splitlines()


def test_haproxy_health_checks_follow_the_backend_health_path(
    ingress_root: Path, backends: Backends
) -> None:
    port = free_port()
    s1, s2 = backends.start("http", "s1"), backends.start("http", "s2")
    ing = Ingress(ingress_root, address="127.0.0.1")
    route = [Route(port, "http", "web")]
    # /fail-s1 fails on s1 only: HAProxy takes s1 out of the rotation.
    ing.apply(route, [Backend("web", [s1.server(), s2.server()], health_path="/fail-s1")])

    def health() -> list[str]:
        return [s["health"] for s in ing.inspect()["backends"][0]["servers"]]

    until(lambda: health() == ["down", "up"], timeout=20)
    assert {served_by(port) for _ in range(6)} == {"s2"}
    # Another health path: s1 comes back (a reload: checks are part of the structure).
    ing.apply(route, [Backend("web", [s1.server(), s2.server()], health_path="/healthz")])
    until(lambda: health() == ["up", "up"], timeout=20)
    assert {served_by(port) for _ in range(6)} == {"s1", "s2"}
