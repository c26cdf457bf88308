"""Networking of VM containers through the CLI: QEMU's user-mode NAT with ``--network
nat`` (the guest reaches the host at 10.0.2.2; bridge networks, the default, are
tests/test_vm_networks.py's), ``-p`` published through hostfwd rules (shown by
``port``, ``ps`` and ``inspect``), ``--network none`` with loopback only, and bad specs,
refused modes and taken host ports as one error line. Two VM boots under TCG.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_server import free_port
from runtime_fixtures import IMAGE_REF, cli_image_root, lamina_cli, remove_all_containers
from runtime_fixtures import lamina_ok as ok

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None
        or not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")),
        reason="needs qemu-system-x86 and linux-image-cloud-amd64",
    ),
]

IMAGE = IMAGE_REF
HTTPD = "mkdir -p /www && echo hello-from-the-vm > /www/index.html && exec httpd -f -p 80 -h /www"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "vm-net")
    yield root
    remove_all_containers(root)


def refused(root: Path, *args: str) -> str:
    """The one error line of a command that must fail with Docker's 125."""
    r = lamina_cli(root, *args)
    assert r.returncode == 125, (args, r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@contextlib.contextmanager
def host_server(body: bytes) -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 answering ``body``; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def fetch(url: str, timeout: float = 60) -> bytes:
    """GET ``url``, retrying while the guest's server is not up yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return bytes(resp.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_nat_reaches_the_host_and_published_ports_reach_the_vm(root: Path) -> None:
    host_port = free_port()
    ok(root, "run", "-d", "--isolation", "vm", "--network", "nat", "--name", "web",
       "-p", f"{host_port}:80", "-p", "127.0.0.1::8080/udp", IMAGE, "sh", "-c", HTTPD)  # fmt: skip
    # The host's server through the NAT's gateway, from inside the VM.
    with host_server(b"hello-from-the-host\n") as port:
        r = lamina_cli(root, "exec", "web", "wget", "-q", "-O", "-", f"http://10.0.2.2:{port}/")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello-from-the-host\n"
    # The VM's httpd through the published port.
    assert fetch(f"http://127.0.0.1:{host_port}/") == b"hello-from-the-vm\n"

    listed = ok(root, "container", "port", "web").splitlines()
    assert listed[0] == f"80/tcp -> 0.0.0.0:{host_port}"
    udp = listed[1]
    assert udp.startswith("8080/udp -> 127.0.0.1:")
    random_port = int(udp.rsplit(":", 1)[1])
    assert random_port > 0
    assert ok(root, "container", "port", "web", "80").strip() == f"0.0.0.0:{host_port}"
    assert ok(root, "container", "port", "web", "8080/udp").strip() == f"127.0.0.1:{random_port}"
    unpublished = lamina_cli(root, "container", "port", "web", "81")
    assert unpublished.returncode != 0 and "no public port '81/tcp'" in unpublished.stderr
    assert f"0.0.0.0:{host_port}->80/tcp" in ok(root, "ps", "--filter", "name=web")

    info = json.loads(ok(root, "inspect", "web"))[0]
    net = info["NetworkSettings"]
    assert net["Ports"]["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(host_port)}]
    assert net["Networks"]["nat"]["IPAddress"] == "10.0.2.15"
    assert info["HostConfig"]["NetworkMode"] == "nat"
    assert info["HostConfig"]["PortBindings"]["8080/udp"] == [
        {"HostIp": "127.0.0.1", "HostPort": ""}
    ]

    # The port is taken now: a second container fails in one line naming it, and
    # --rm leaves nothing behind.
    line = refused(root, "run", "--rm", "--isolation", "vm", "--network", "nat",
                   "-p", f"{host_port}:80", IMAGE, "true")  # fmt: skip
    assert str(host_port) in line and "already in use" in line
    assert ok(root, "ps", "-a", "--format", "{{.Names}}").split() == ["web"]

    ok(root, "rm", "-f", "web")
    with socket.socket() as s:  # QEMU is gone, and its port with it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", host_port))


def test_network_none_has_only_loopback(root: Path) -> None:
    r = lamina_cli(root, "run", "--rm", "--isolation", "vm", "--network", "none", IMAGE,
                   "sh", "-c", "ls /sys/class/net; ip route")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lo"]


def test_bad_specs_and_refused_modes_are_one_line(root: Path) -> None:
    vm = ("run", "--rm", "--isolation", "vm")
    for spec, why in (
        ("99999:80", "out of range"),
        ("80:http", "not a port number"),
        ("1.2.3:80:80", "not an IPv4 address"),
        ("80/sctp", "not tcp or udp"),
        ("8000-8002:80-81", "differ in length"),
        ("[::1]:80:80", "IPv6"),
    ):
        assert why in refused(root, *vm, "-p", spec, IMAGE, "true"), spec
    assert "twice" in refused(root, *vm, "-p", "8000:80", "-p", "8000:81", IMAGE, "true")
    assert "--network none" in refused(root, *vm, "--network", "none", "-p", "80", IMAGE, "true")
    for mode in ("host", "container:abc"):
        line = refused(root, *vm, "--network", mode, IMAGE, "true")
        assert "not supported for VM containers" in line
    # Process containers keep their rules: no NAT, and -p needs a bridge network.
    assert "VM containers" in refused(root, "run", "--rm", "--network", "nat", IMAGE, "true")
    line = refused(root, "run", "--rm", "--network", "none", "-p", "80", IMAGE, "true")
    assert "port publishing" in line
    assert ok(root, "ps", "-a", "-q") == ""
