"""Bridge networks of process containers, end to end through the CLI with real
netavark, aardvark-dns, runc and conmon: names that resolve on user networks (and not
on the default one), /etc files per case and across a restart, published TCP and UDP
ports answered from the host, a taken port refused with nothing left, --internal and
cross-network isolation, egress through NAT to a namespace the test makes to stand for
the outside world, connect/disconnect of a running container, and the network
commands. Traffic goes only to loopback, the host's own addresses, and namespaces and
bridges the tests make."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import clear_networks, network_leaks
from runtime_fixtures import (
    IMAGE_REF,
    NEEDS_NETAVARK,
    cli_image_root,
    error_line,
    lamina_cli,
    lamina_ok,
    remove_all_containers,
    until,
)

pytestmark = [
    pytest.mark.timeout(180),
    NEEDS_NETAVARK,
]

UDP_ECHO_C = r"""
#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    char buf[512];
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n > 0) sendto(s, buf, n, 0, (struct sockaddr *)&peer, len);
    }
}
"""


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "networks")
    yield root
    remove_all_containers(root)
    for net in lamina_cli(root, "network", "ls", "-q").stdout.split():
        lamina_cli(root, "network", "rm", net)


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    clear_networks(image_root)


def sh(root: Path, *args: str) -> str:
    """stdout of ``lamina run --rm ARGS`` (which must succeed)."""
    return lamina_ok(root, "run", "--rm", *args)


def inspect(root: Path, ref: str) -> dict:  # type: ignore[type-arg]
    return json.loads(lamina_ok(root, "inspect", ref))[0]


def address(root: Path, ref: str, network: str) -> str:
    return str(inspect(root, ref)["NetworkSettings"]["Networks"][network]["IPAddress"])


def gateway(root: Path, network: str) -> str:
    net = json.loads(lamina_ok(root, "network", "inspect", network))[0]
    return str(net["IPAM"]["Config"][0]["Gateway"])


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_address() -> str:
    """One of the host's own non-loopback IPv4 addresses."""
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        addr = line.split()[3].split("/")[0]
        if not addr.startswith("127."):
            return addr
    pytest.skip("the host has no non-loopback IPv4 address")


# -- names --------------------------------------------------------------------------


def test_names_resolve_on_a_user_network_only(root: Path) -> None:
    lamina_ok(root, "network", "create", "names")
    cid = lamina_ok(
        root, "run", "-d", "--name", "db", "--network", "names", "--network-alias", "database",
        IMAGE_REF, "sleep", "300",
    ).strip()  # fmt: skip
    ip = address(root, "db", "names")
    for name in ("db", "database", cid[:12]):
        out = sh(root, "--network", "names", IMAGE_REF, "nslookup", name)
        assert ip in out, (name, out)
    r = lamina_cli(root, "run", "--rm", "--network", "names", IMAGE_REF, "nslookup", "nosuch")
    assert r.returncode != 0
    # The default network gives no names: no resolver of lamina's in resolv.conf, no
    # aardvark-dns entries for it.
    lamina_ok(root, "run", "-d", "--name", "plain", IMAGE_REF, "sleep", "300")
    resolv = sh(root, IMAGE_REF, "cat", "/etc/resolv.conf")
    assert gateway(root, "lamina") not in resolv and gateway(root, "names") not in resolv
    dns_dir = root / "networks" / "netavark" / "aardvark-dns"
    assert "lamina" not in os.listdir(dns_dir)
    assert ip in (dns_dir / "names").read_text()


def test_etc_files_per_network_and_after_restart(root: Path) -> None:
    lamina_ok(root, "network", "create", "etc")
    gw = gateway(root, "etc")
    lamina_ok(
        root, "run", "-d", "--name", "box", "--hostname", "boxhost", "--network", "etc",
        "--add-host", "static.example:10.1.2.3", "--add-host", "hostgw:host-gateway",
        IMAGE_REF, "sleep", "300",
    )  # fmt: skip
    ip = address(root, "box", "etc")

    def files() -> tuple[str, str, str]:
        script = "cat /etc/hosts; echo ==; cat /etc/resolv.conf; echo ==; hostname"
        out = lamina_ok(root, "exec", "box", "sh", "-c", script)
        hosts, resolv, name = out.split("==\n")
        return hosts, resolv, name.strip()

    for _ in range(2):
        hosts, resolv, name = files()
        assert f"{ip}\tboxhost" in hosts
        assert "10.1.2.3\tstatic.example" in hosts and f"{gw}\thostgw" in hosts
        assert resolv.split("\n").count(f"nameserver {gw}") == 1  # aardvark on the gateway
        assert name == "boxhost"
        lamina_ok(root, "restart", "-t", "0", "box")
        assert address(root, "box", "etc") == ip  # the lease is kept
    # On the default network: the host's resolvers minus loopback ones; --dns wins.
    host_servers = [
        line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
        if line.startswith("nameserver") and not line.split()[1].startswith("127.")
    ]  # fmt: skip
    default = sh(root, IMAGE_REF, "cat", "/etc/resolv.conf")
    assert [line.split()[1] for line in default.splitlines() if line.startswith("nameserver")] == (
        host_servers or ["8.8.8.8", "8.8.4.4"]
    )
    custom = sh(root, "--network", "etc", "--dns", "10.9.9.9", "--dns-search", "corp.example",
                "--dns-option", "ndots:3", IMAGE_REF, "cat", "/etc/resolv.conf")  # fmt: skip
    assert custom == "search corp.example\nnameserver 10.9.9.9\noptions ndots:3\n"


# -- ports --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def udp_echo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("udp")
    (d / "udp_echo.c").write_text(UDP_ECHO_C)
    r = subprocess.run(["gcc", "-static", "-O2", "-o", str(d / "udp_echo"), str(d / "udp_echo.c")],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot build a static UDP echo server: {r.stderr}")
    return d / "udp_echo"


def _http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_published_ports_tcp_udp_and_random(root: Path, udp_echo: Path) -> None:
    tcp, udp = free_port(), free_port(socket.SOCK_DGRAM)
    lamina_ok(
        root, "run", "-d", "--name", "srv", "-p", f"{tcp}:80", "-p", f"{udp}:5353/udp",
        "-p", "8080", "-v", f"{udp_echo}:/udp_echo:ro", IMAGE_REF, "sh", "-c",
        "mkdir /www && echo hi > /www/i && httpd -p 80 -h /www && httpd -p 8080 -h /www"
        " && exec /udp_echo 5353",
    )  # fmt: skip
    for host in ("127.0.0.1", host_address()):
        until(lambda h=host: _try(lambda: _http_get(f"http://{h}:{tcp}/i") == "hi\n"), 10)  # type: ignore[misc]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"ping", ("127.0.0.1", udp))
        assert s.recvfrom(64)[0] == b"ping"
    ports = lamina_ok(root, "port", "srv").splitlines()
    random_line = next(line for line in ports if line.startswith("8080/tcp"))
    random_port = int(random_line.rsplit(":", 1)[1])
    assert random_port not in (0, 8080)
    assert _http_get(f"http://127.0.0.1:{random_port}/i") == "hi\n"
    assert f"0.0.0.0:{tcp}->80/tcp" in lamina_ok(root, "ps", "--format", "{{.Ports}}")
    bindings = inspect(root, "srv")["HostConfig"]["PortBindings"]
    assert bindings["8080/tcp"] == [{"HostIp": "", "HostPort": ""}]
    settings = inspect(root, "srv")["NetworkSettings"]["Ports"]
    assert settings["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(tcp)}]
    assert settings["5353/udp"] == [{"HostIp": "0.0.0.0", "HostPort": str(udp)}]


def _try(check: object) -> bool:
    try:
        return bool(check())  # type: ignore[operator]
    except OSError:
        return False


def test_a_taken_port_is_refused_with_nothing_left(root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = lamina_cli(root, "run", "--rm", "-p", f"{port}:80", IMAGE_REF, "true")
        assert r.returncode == 125
        line = error_line(r.stderr)
        assert str(port) in line and "already in use" in line
        # Without --rm the container stays, created, with nothing of a run.
        r = lamina_cli(root, "run", "-d", "--name", "blocked", "-p", f"{port}:80", IMAGE_REF)
        assert r.returncode == 125
    assert lamina_ok(root, "ps", "-a", "--format", "{{.Names}} {{.State}}").split() == [
        "blocked", "created",
    ]  # fmt: skip
    assert not (root / "netns").exists() or not os.listdir(root / "netns")
    assert network_leaks(root) == []
    assert address_lease(root, "blocked")  # its address stays leased while it exists


def address_lease(root: Path, name: str) -> str:
    """A container's lease as ``network_leaks`` names it."""
    import sqlite3

    cid = inspect(root, name)["Id"]
    conn = sqlite3.connect(root / "containers.db")
    try:
        row = conn.execute("SELECT address FROM ip_leases WHERE container_id=?", (cid,)).fetchone()
    finally:
        conn.close()
    return f"{row[0]} ({cid[:12]})"


# -- isolation and egress ---------------------------------------------------------------


@pytest.fixture
def outside() -> Iterator[str]:
    """A namespace standing for the outside world, on a veth from the host, with a TCP
    server on port 8000 that answers with the address the connection came from."""
    tag = os.urandom(3).hex()
    ns, host_if = f"lmt-out-{tag}", f"lmo{tag}"
    third = int(tag[:2], 16)
    host_ip, out_ip = f"198.18.{third}.1", f"198.18.{third}.2"

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    run("ip", "netns", "add", ns)
    server = None
    try:
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "-n", ns, "addr", "add", f"{out_ip}/30", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        code = (
            "import socket\n"
            "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', 8000)); s.listen(16); print('ready', flush=True)\n"
            "while True:\n"
            "    c, a = s.accept(); c.sendall(('from ' + a[0] + '\\n').encode()); c.close()\n"
        )
        server = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", code],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        yield out_ip
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_egress_through_nat_and_none_from_internal(root: Path, outside: str) -> None:
    host_side = outside.rsplit(".", 1)[0] + ".1"
    out = sh(root, IMAGE_REF, "nc", "-w", "3", outside, "8000")
    assert out == f"from {host_side}\n"  # masqueraded behind the host's address
    lamina_ok(root, "network", "create", "--internal", "closed")
    r = lamina_cli(root, "run", "--rm", "--network", "closed", IMAGE_REF,
                   "nc", "-w", "3", outside, "8000")  # fmt: skip
    assert r.returncode != 0 and "from" not in r.stdout


def test_networks_are_isolated_and_a_two_network_container_reaches_both(root: Path) -> None:
    lamina_ok(root, "network", "create", "red")
    lamina_ok(root, "network", "create", "blue")
    lamina_ok(root, "run", "-d", "--name", "r1", "--network", "red", IMAGE_REF, "sleep", "300")
    lamina_ok(root, "run", "-d", "--name", "b1", "--network", "blue", IMAGE_REF, "sleep", "300")
    red_ip, blue_ip = address(root, "r1", "red"), address(root, "b1", "blue")
    ping = ["ping", "-c", "1", "-W", "2"]
    assert (
        lamina_cli(root, "run", "--rm", "--network", "red", IMAGE_REF, *ping, red_ip).returncode
        == 0
    )
    assert (
        lamina_cli(root, "run", "--rm", "--network", "red", IMAGE_REF, *ping, blue_ip).returncode
        != 0
    )
    both = ["run", "--rm", "--network", "red", "--network", "blue", IMAGE_REF]
    out = lamina_ok(
        root,
        *both,
        "sh",
        "-c",
        f"ping -c1 -W2 {red_ip} && ping -c1 -W2 {blue_ip} && ping -c1 -W2 b1 && ip -o -4 addr",
    )
    assert " eth0 " in out and " eth1 " in out


def pings(root: Path, container: str, target: str) -> None:
    """``container`` reaches ``target`` by name, within a few tries: aardvark-dns 1.4
    drops the queries it holds while it reloads (netavark reloads it on every connect
    and start), and busybox's resolver asks once."""
    until(lambda: lamina_cli(root, "exec", container, "ping", "-c1", "-W2", target)
          .returncode == 0, 20)  # fmt: skip


def test_connect_and_disconnect_a_running_container(root: Path) -> None:
    lamina_ok(root, "network", "create", "front")
    lamina_ok(root, "network", "create", "back")
    lamina_ok(root, "run", "-d", "--name", "api", "--network", "front", IMAGE_REF, "sleep", "300")
    lamina_ok(root, "run", "-d", "--name", "store", "--network", "back", IMAGE_REF, "sleep", "300")
    assert lamina_cli(root, "exec", "api", "ping", "-c1", "-W2", "store").returncode != 0
    lamina_ok(root, "network", "connect", "--alias", "apix", "back", "api")
    pings(root, "api", "store")
    assert "eth1" in lamina_ok(root, "exec", "api", "ip", "-o", "link")
    assert gateway(root, "back") in lamina_ok(root, "exec", "api", "cat", "/etc/resolv.conf")
    pings(root, "store", "apix")  # its alias resolves
    containers = json.loads(lamina_ok(root, "network", "inspect", "back"))[0]["Containers"]
    assert sorted(c["Name"] for c in containers.values()) == ["api", "store"]
    r = lamina_cli(root, "network", "rm", "back")
    assert r.returncode != 0 and "active endpoints" in error_line(r.stderr)
    lamina_ok(root, "network", "disconnect", "back", "api")
    api_id = inspect(root, "api")["Id"]
    fmt = "{{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.container}}"
    until_now = str(int(time.time()) + 1)
    events = lamina_ok(root, "events", "--since", "0", "--until", until_now,
                       "--filter", "type=network", "--format", fmt)  # fmt: skip
    lines = events.splitlines()
    assert f"connect back {api_id}" in lines and f"disconnect back {api_id}" in lines
    assert "eth1" not in lamina_ok(root, "exec", "api", "ip", "-o", "link")
    assert (
        lamina_cli(
            root, "exec", "api", "ping", "-c1", "-W2", address(root, "store", "back")
        ).returncode
        != 0
    )
    assert "back" not in inspect(root, "api")["NetworkSettings"]["Networks"]
    # A created container: connected now, joined at its start.
    lamina_ok(root, "create", "--name", "later", "--network", "front", IMAGE_REF, "sleep", "300")
    lamina_ok(root, "network", "connect", "back", "later")
    lamina_ok(root, "start", "later")
    pings(root, "later", "store")


# -- the network commands ------------------------------------------------------------------


def test_network_commands(root: Path) -> None:
    net_id = lamina_ok(
        root, "network", "create", "--subnet", "10.77.0.0/24", "--gateway", "10.77.0.254",
        "--ip-range", "10.77.0.128/25", "--label", "team=a", "-o", "mtu=1400",
        "-o", "com.docker.network.bridge.name=lmt-br0", "custom",
    ).strip()  # fmt: skip
    lamina_ok(root, "network", "create", "--ipv6", "--subnet", "fd00:77::/64", "six")
    net = json.loads(lamina_ok(root, "network", "inspect", "custom"))[0]
    assert net["Id"] == net_id and net["Driver"] == "bridge" and net["Labels"] == {"team": "a"}
    assert net["IPAM"]["Config"] == [
        {"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.254", "IPRange": "10.77.0.128/25"}
    ]
    assert (
        lamina_ok(root, "network", "ls", "--filter", "label=team=a", "--format", "{{.Name}}")
        == "custom\n"
    )
    assert lamina_ok(root, "network", "ls", "-q", "--filter", "name=cus") == net_id[:12] + "\n"
    listed = lamina_ok(root, "network", "ls", "--format", "json").splitlines()
    assert {json.loads(line)["Name"] for line in listed} == {"lamina", "custom", "six"}
    script = "ip -o addr show eth0; ip -o link show eth0; ip route"
    out = sh(root, "--network", "custom", "--ip", "10.77.0.200", "--mac-address",
             "92:d0:c6:0a:29:33", IMAGE_REF, "sh", "-c", script)  # fmt: skip
    assert "10.77.0.200/24" in out and "92:d0:c6:0a:29:33" in out and "mtu 1400" in out
    assert "default via 10.77.0.254" in out
    assert "inet 10.77.0.129/24" in sh(root, "--network", "custom", IMAGE_REF, "ip", "-o", "addr")
    six = sh(root, "--network", "six", IMAGE_REF, "ip", "-o", "addr", "show", "eth0")
    assert "fd00:77::2/64" in six
    for args, why in (
        (["network", "create", "custom"], "already exists"),
        (["network", "create", "--subnet", "10.77.0.0/16", "x"], "overlaps"),
        (
            ["network", "create", "--gateway", "10.1.0.1", "--subnet", "10.2.0.0/24", "x"],
            "not within",
        ),
        (["network", "create", "--driver", "overlay", "x"], "only bridge"),
        (["network", "create", "lamina"], "pre-defined"),
        (["network", "rm", "lamina"], "pre-defined"),
        (["network", "inspect", "nosuch"], "not found"),
        (["run", "--rm", "--network", "nosuch", IMAGE_REF, "true"], "not found"),
        (
            ["run", "--rm", "--network", "custom", "--ip", "10.77.0.254", IMAGE_REF, "true"],
            "reserved",
        ),
        (["run", "--rm", "--network-alias", "x", IMAGE_REF, "true"], "user-defined networks"),
    ):
        r = lamina_cli(root, *args)
        assert r.returncode != 0 and why in error_line(r.stderr), (args, r.stderr)
    lamina_ok(root, "network", "rm", "custom")
    assert sorted(lamina_ok(root, "network", "prune", "-f").split()) == [
        "Deleted",
        "Networks:",
        "six",
    ]
    assert lamina_ok(root, "network", "ls", "--format", "{{.Name}}") == "lamina\n"
