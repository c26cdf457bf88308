"""Deployments' public endpoints through the ingress, on real containers and a real
HAProxy: routing by host and path, 404 for unknown hosts, internal endpoints kept
off the host, a replica turning unhealthy leaving the backend at once, a rolling
update and ``down`` under a steady client loop with no failed request."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_fixtures import Daemon
from deploy_fixtures import bring_down_and_check, deploy_root, httpd, spec
from ingress_fixtures import free_port, haproxy_processes
from leak_check import container_traces
from runtime_fixtures import cli_image_root, lamina_cli, lamina_ok, remove_all_containers, until
from test_ingress_tls import _no_hostname, https_get, pebble

from lamina.deploy import Deployments
from lamina.deploy._ingress import IngressOptions
from lamina.errors import InUse
from lamina.ingress import Ingress

__all__ = ["deploy_root", "pebble"]


def site(text: str, **over: Any) -> dict[str, Any]:
    """busybox httpd on 8080 answering ``text`` and the replica's hostname at /, and
    at /api/ and /apix/ too (what a route by path sends there)."""
    write = (
        f'mkdir -p /www/api /www/apix && echo "{text} $(hostname)" > /www/index.html'
        " && cp /www/index.html /www/api/ && cp /www/index.html /www/apix/"
        " && exec httpd -f -p 8080 -h /www"
    )
    return httpd(text, command={"args": [write]}, **over)


def public(port: int, name: str = "http", **over: Any) -> dict[str, Any]:
    return {"name": name, "protocol": "http", "port": port, "target_port": 8080,
            "expose": "public", **over}  # fmt: skip


def request(port: int, host: str, path: str = "/", timeout: float = 10.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode().strip()
    finally:
        conn.close()


def answers(port: int, host: str, path: str = "/") -> str:
    status, body = request(port, host, path)
    assert status == 200, (status, body)
    return body


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


class Load:
    """Requests through the ingress in a loop (a new connection each, as many
    clients), counting answers by body and failures, until ``stop``."""

    def __init__(self, port: int, host: str, threads: int = 1) -> None:
        self.port, self.host = port, host
        self.bodies: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = request(self.port, self.host)
                if status == 200:
                    self.bodies.append((time.monotonic(), body))
                else:
                    self.failures.append(f"status {status}: {body[:100]}")
            except OSError as e:
                self.failures.append(f"{type(e).__name__}: {e}")

    def more(self, count: int, timeout: float = 30) -> None:
        start = len(self.bodies) + len(self.failures)
        until(lambda: len(self.bodies) + len(self.failures) - start >= count, timeout=timeout)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


class Controller:
    """A started ``Deployments`` whose ingress listens on loopback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.said: list[str] = []
        self.d = Deployments(root, say=self.said.append,
                             ingress=IngressOptions(address="127.0.0.1"))  # fmt: skip
        self.d.start()


@pytest.fixture
def controller(deploy_root: Path) -> Iterator[Controller]:
    """A controller with an ingress; after the test every deployment is brought
    down through it (which stops HAProxy), then nothing may be left."""
    c = Controller(deploy_root)
    try:
        yield c
    finally:
        ids = container_traces(deploy_root)
        try:
            for status in c.d.list():
                c.d.down(status.name, volumes=True)
        finally:
            c.d.close()
            stray = haproxy_processes(deploy_root)
            Ingress(deploy_root).close()
        assert stray == []
        bring_down_and_check(deploy_root, ids)


def ingress_servers(root: Path, key: str) -> dict[str, str]:
    """Server name -> health (HAProxy's view) of one backend, from ``lamina ingress
    inspect`` (what a user sees; it reads the root, whoever serves it)."""
    state = json.loads(lamina_ok(root, "ingress", "inspect"))
    for backend in state["backends"]:
        if backend["key"] == key:
            return {s["name"]: s["health"] for s in backend["servers"]}
    return {}


def retries(root: Path, key: str) -> int:
    """Requests HAProxy retried or redispatched in one backend: each one was sent to a
    replica that did not answer it (a stopping one, say)."""
    from lamina.ingress._runtime import command

    lines = command(root / "ingress" / "admin.sock", "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == f"be_{key}" and row.get("svname") == "BACKEND":
            return int(row["wretr"] or 0) + int(row["wredis"] or 0)
    raise AssertionError(f"no backend {key}")


def test_host_and_path_routing_404_internal_endpoints_and_down(controller: Controller) -> None:
    d, root = controller.d, controller.root
    port, internal = free_port(), free_port()
    web = site("web", scale={"replicas": 2},
               endpoints=[public(port, host="shop.test"),
                          {"name": "admin", "protocol": "http", "port": internal,
                           "target_port": 8080, "expose": "internal"}])  # fmt: skip
    api = site("api", endpoints=[public(port, host="shop.test", path="/api")])
    d.apply(spec("shop", web=web, api=api))
    d.wait("shop", timeout=60)
    until(lambda: ingress_servers(root, "shop-web-http") == {
        "shop-web-1": "up", "shop-web-2": "up"}, timeout=15)  # fmt: skip
    until(lambda: ingress_servers(root, "shop-api-http") == {"shop-api-1": "up"}, timeout=15)

    seen = {answers(port, "shop.test") for _ in range(12)}
    assert len(seen) == 2 and all(b.startswith("web ") for b in seen)  # both replicas
    assert answers(port, "SHOP.test:80", "/api/").startswith("api ")  # longest path first
    assert answers(port, "shop.test", "/apix/").startswith("web ")  # a prefix is segments
    status, body = request(port, "nobody.test")
    assert status == 404 and "no route" in body
    assert refused(internal)  # internal: only on the deployment's network

    out = lamina_ok(root, "ingress", "ls", "--format", "json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted((r["Port"], r["Host"], r["Path"], r["Backend"], r["Servers"]) for r in rows) == [
        (port, "shop.test", "/", "shop-web-http", "2/2"),
        (port, "shop.test", "/api", "shop-api-http", "1/1")]  # fmt: skip

    # another deployment asking the same host and path, or the port for tcp: refused
    # at its deploy, in one line; nothing of it is kept and the shop serves on
    for clashing in (public(port, host="shop.test"), public(port, protocol="tcp")):
        with pytest.raises(InUse) as refusal:
            d.apply(spec("rival", web=site("rival", endpoints=[clashing])))
        assert str(refusal.value).startswith(f"public endpoints of deployment rival: port {port}")
        assert "\n" not in str(refusal.value)
    assert [s.name for s in d.list()] == ["shop"]
    assert answers(port, "shop.test").startswith("web ")
    d.apply(spec("shop", web=web, api=api))  # its own routes are no clash

    d.down("shop")
    assert refused(port)
    assert haproxy_processes(root) == []
    assert json.loads(lamina_ok(root, "ingress", "inspect"))["routes"] == []


def test_unhealthy_replica_leaves_the_backend_at_once(controller: Controller) -> None:
    d, root = controller.d, controller.root
    port = free_port()
    d.apply(spec("sick", web=site("v1", scale={"replicas": 3}, endpoints=[public(port)])))
    d.wait("sick", timeout=60)
    until(lambda: sorted(ingress_servers(root, "sick-web-http").values()) == ["up"] * 3)
    load = Load(port, "any.test")
    try:
        load.more(30)
        lamina_ok(root, "exec", "sick-web-2", "touch", "/tmp/sick")
        sick_host = lamina_ok(root, "exec", "sick-web-2", "hostname").strip()
        made_sick = time.monotonic()
        until(lambda: ingress_servers(root, "sick-web-http").get("sick-web-2") != "up",
              timeout=10)  # fmt: skip
        gone = time.monotonic()

        def late() -> list[str]:  # answered once the server left (less what was in flight)
            return [b for t, b in load.bodies if t > gone + 0.2]

        until(lambda: len(late()) >= 40, timeout=30)
    finally:
        load.stop()
    # a check every 0.3 s, then the next converge pass (at most a second)
    assert gone - made_sick < 2.5, gone - made_sick
    assert load.failures == []
    assert retries(root, "sick-web-http") == 0
    assert not [b for b in late() if b.endswith(sick_host)]
    assert {b.split()[1] for b in late()} - {sick_host}  # the others serve on


def test_rolling_updates_through_the_ingress_fail_no_request(controller: Controller) -> None:
    """One replica replaced by a new one, three times, under clients in a loop: the new
    one is in the backend before the old one leaves it, which is before its stop."""
    d, root = controller.d, controller.root
    port = free_port()
    d.apply(spec("roll", web=site("v1", endpoints=[public(port)])))
    d.wait("roll", timeout=60)
    until(lambda: ingress_servers(root, "roll-web-http") == {"roll-web-1": "up"}, timeout=15)
    load = Load(port, "any.test", threads=3)
    try:
        load.more(30)
        for version in ("v2", "v3", "v4"):
            d.apply(spec("roll", web=site(version, endpoints=[public(port)])))

            def rolled(version: str = version) -> bool:
                s = d.status("roll").services[0]
                return s.rollout == "complete" and [r.current for r in s.replicas] == [True]

            until(rolled, timeout=60)
            until(lambda v=version: len(load.bodies) > 20 and all(
                b.startswith(f"{v} ") for _, b in load.bodies[-20:]), timeout=15)  # fmt: skip
    finally:
        load.stop()
    assert load.failures == []
    assert retries(root, "roll-web-http") == 0  # no old replica got a request once stopping
    assert {b.split()[0] for _, b in load.bodies} == {"v1", "v2", "v3", "v4"}
    until(lambda: len(ingress_servers(root, "roll-web-http")) == 1, timeout=10)


def test_https_endpoints_get_certificates_from_acme(
    deploy_root: Path, pebble: tuple[str, Path, int], tmp_path: Path
) -> None:
    """With an ACME directory (Debian's pebble on loopback), an https endpoint's host
    gets a certificate by HTTP-01 through the deployment's plain http endpoint."""
    directory, pebble_ca, http_port = pebble
    tls = free_port()
    options = IngressOptions("127.0.0.1", directory, "ops@shop.test", str(pebble_ca))
    d = Deployments(deploy_root, say=print, ingress=options)
    d.start()
    try:
        endpoints = [public(http_port), public(tls, "https", protocol="https", host="shop.test")]
        d.apply(spec("tls", web=site("v1", endpoints=endpoints)))
        d.wait("tls", timeout=60)
        certs = Ingress(deploy_root).certs
        until(lambda: [(c.host, c.acme) for c in certs.list()] == [("shop.test", True)], 60)
        mgmt = json.loads((tmp_path / "pebble.json").read_text())["pebble"]
        host, port = mgmt["managementListenAddress"].split(":")
        context = _no_hostname(ssl.create_default_context(cafile=str(pebble_ca)))
        conn = http.client.HTTPSConnection(host, int(port), context=context)
        conn.request("GET", "/roots/0")
        (tmp_path / "pebble-root.pem").write_bytes(conn.getresponse().read())
        conn.close()

        def served() -> bool:  # once HAProxy reloaded with it
            try:
                status, _, body = https_get(tls, "shop.test", tmp_path / "pebble-root.pem")
            except ssl.SSLCertVerificationError:
                return False
            return status == 200 and body.startswith("v1 ")

        until(served, timeout=15)
    finally:
        ids = container_traces(deploy_root)
        for status_ in d.list():
            d.down(status_.name)
        d.close()
        Ingress(deploy_root).close()
        bring_down_and_check(deploy_root, ids)


def test_deployments_without_public_endpoints_start_no_haproxy(controller: Controller) -> None:
    d, root = controller.d, controller.root
    port = free_port()
    internal = {"name": "http", "protocol": "http", "port": port, "target_port": 8080}
    d.apply(spec("quiet", web=site("v1", endpoints=[internal])))
    d.wait("quiet", timeout=60)
    d.converge()  # a whole pass, and its sync, after the replica is ready
    assert haproxy_processes(root) == [] and not (root / "ingress" / "applied.json").exists()
    assert refused(port)


def test_the_ingress_outlives_the_daemon_which_adopts_it_again(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = cli_image_root(tmp_path_factory, "deploy-ingress-daemon")
    port = free_port()
    data = {
        "version": "v1",
        "deployment": "site",
        "services": {"web": site("v1", scale={"replicas": 2}, endpoints=[public(port)])},
    }
    spec_file = root.parent / "site.yaml"
    spec_file.write_text(json.dumps(data))  # JSON is YAML
    flags = ("--ingress-address", "127.0.0.1")
    daemon = Daemon(root, *flags)
    try:
        lamina_ok(root, "deploy", str(spec_file), "--wait")
        until(lambda: sorted(ingress_servers(root, "site-web-http").values()) == ["up", "up"])
        haproxy = Ingress(root).running()
        assert haproxy is not None
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # keep-alive
        kept.request("GET", "/", headers={"Host": "a.test"})
        assert kept.getresponse().read().startswith(b"v1 ")
        assert daemon.stop() == 0
        assert "HAProxy serves public endpoints on 127.0.0.1" in daemon.output()
        assert Ingress(root).running() == haproxy
        assert answers(port, "a.test").startswith("v1 ")
        kept.request("GET", "/", headers={"Host": "a.test"})  # the same connection
        assert kept.getresponse().read().startswith(b"v1 ")
        daemon = Daemon(root, *flags)
        assert answers(port, "a.test").startswith("v1 ")
        lamina_ok(root, "deployment", "status", "site")  # a pass of the new controller
        assert Ingress(root).running() == haproxy  # adopted, not started again
        kept.request("GET", "/", headers={"Host": "a.test"})
        assert kept.getresponse().read().startswith(b"v1 ")
        kept.close()
        lamina_ok(root, "down", "site")
        assert refused(port) and haproxy_processes(root) == []
    finally:
        if daemon.proc.poll() is None:
            lamina_cli(root, "down", "site")
            daemon.stop()
        Ingress(root).close()
        remove_all_containers(root)
        lamina_cli(root, "network", "prune", "-f")


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (("--ingress-address", "nope"), "'--ingress-address': not an IP address: 'nope'"),
        (("--acme-directory", "ftp://ca"), "'--acme-directory': not an http(s) URL"),
        (("--acme-ca-bundle", "/nonexistent.pem"), "'--acme-ca-bundle': File"),
    ],
)
def test_bad_ingress_flags_of_the_daemon_in_one_line(
    tmp_path: Path, flags: tuple[str, str], said: str
) -> None:
    r = lamina_cli(tmp_path / "root", "daemon", *flags)
    assert r.returncode == 125 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and said in r.stderr and r.stderr.startswith("lamina: error:")
    assert not (tmp_path / "root").exists()


def test_desired_routes_from_the_specs_and_the_replicas_readiness() -> None:
    """The pure part: keys, ports, the health path from an http check on the endpoint's
    port, servers ready as the controller counts them (none without an address), internal
    endpoints out,
    a deployment whose routes clash with another's left out whole (and named)."""
    from lamina.deploy._ingress import PublicView, desired_routes
    from lamina.deploy._status import DeploymentStatus, ReplicaStatus, ServiceStatus
    from lamina.ingress import Backend, Route, Server

    web = site(
        "v1",
        scale={"replicas": 2},
        endpoints=[public(80, host="shop.test"), public(81, "admin", expose="internal")],
    )
    web["health"]["check"] = {"type": "http", "url": "http://localhost:8080/healthz"}
    # its check asks another port than the endpoint's: HAProxy checks by TCP connects
    other_port = site("v1", endpoints=[public(80, "api", host="shop.test", path="/api")])
    other_port["health"]["check"] = {"type": "http", "url": "http://localhost:9090/"}

    def replica(name: str, n: int, ready: bool, address: str) -> ReplicaStatus:
        return ReplicaStatus(name, n, "running", "healthy", ready, address, "h", True)

    def status(name: str, **services: list[ReplicaStatus]) -> DeploymentStatus:
        return DeploymentStatus(name, "running", services=[
            ServiceStatus(svc, "service", len(r), len(r), 0, "healthy", "complete", replicas=r)
            for svc, r in services.items()])  # fmt: skip

    shop = PublicView("shop", spec("shop", web=web, api=other_port), created=1.0, status=status(
        "shop", web=[replica("shop-web-2", 2, False, "10.0.0.3"),
                     replica("shop-web-1", 1, True, "10.0.0.2")],
        api=[replica("shop-api-1", 1, True, "10.0.0.4"),
             replica("shop-api-2", 2, False, "")]))  # fmt: skip
    clash = PublicView("clash", spec("clash", web=site("v1", endpoints=[
        public(80, protocol="tcp")])), status("clash", web=[]), created=2.0)  # fmt: skip
    refused: list[tuple[str, str]] = []
    routes, backends = desired_routes([shop, clash], lambda *why: refused.append(why))
    assert routes == [Route(80, "http", "shop-web-http", "shop.test", None),
                      Route(80, "http", "shop-api-api", "shop.test", "/api")]  # fmt: skip
    assert backends == [
        Backend("shop-web-http", (Server("shop-web-1", "10.0.0.2", 8080, True),
                                  Server("shop-web-2", "10.0.0.3", 8080, False)),
                health_path="/healthz"),
        Backend("shop-api-api", (Server("shop-api-1", "10.0.0.4", 8080, True),)),
    ]  # fmt: skip
    assert refused == [("clash", "port 80: cannot mix plain and tcp routes")]
