"""VM containers on bridge networks: the guest takes over the links of a network
namespace through taps redirected with tc (``lamina.vm._tapnet``), and the agent
configures its NICs from the links (MAC, addresses, MTU, default routes) and writes the
container's /etc files.

First the VM layer alone, on namespaces, bridges and veths the test makes (``ip``);
then end to end through the CLI with real netavark and aardvark-dns: a VM container and
process containers reaching each other by name on user networks, a VM on two networks,
its published port answered from the host, disconnect while it runs, SIGKILL of its
QEMU or its supervisor followed by cleanup, and the refusals. Traffic goes only to
loopback and to addresses of namespaces and bridges the tests make. Each VM boot costs
~2 s under TCG: one boot checks several things.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from leak_check import network_leaks, zombie
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

from lamina.image import LocalImages, import_rootfs
from lamina.testing import make_busybox_rootfs
from lamina.vm._agent import Msg, exec_payload, parse_exit
from lamina.vm._config import NetworkAttachment, VmConfig, VmConfigError
from lamina.vm._run import MicroVm, start_vm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None
        or not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")),
        reason="needs qemu-system-x86 and linux-image-cloud-amd64",
    ),
]

IMAGE = "vmnet/busybox:latest"
PATH_ENV = ["PATH=/bin:/sbin:/usr/bin:/usr/sbin"]


def ip(*args: str) -> str:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


def in_ns(ns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


@dataclass
class Namespaces:
    """``world``: two bridges (10.213.0.1/24 + fd00:213::1/64, 10.214.0.1/24) and an
    address only a default route reaches (10.215.0.1 on its loopback); ``vm``: the
    VM's namespace, eth0 and eth1 veths into those bridges, as netavark would make."""

    world: str
    vm: str

    @property
    def vm_path(self) -> str:
        return f"/run/netns/{self.vm}"


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    tag = f"lmvn{os.getpid() % 100000}"
    ns = Namespaces(f"{tag}-w", f"{tag}-v")
    ip("netns", "add", ns.world)
    ip("netns", "add", ns.vm)
    try:
        w, v = ("-n", ns.world), ("-n", ns.vm)
        ip(*w, "link", "set", "lo", "up")
        ip(*w, "addr", "add", "10.215.0.1/32", "dev", "lo")
        for i, (gw, v6) in enumerate((("10.213.0.1/24", "fd00:213::1/64"), ("10.214.0.1/24", ""))):
            ip(*w, "link", "add", f"br{i}", "type", "bridge")
            ip(*w, "addr", "add", gw, "dev", f"br{i}")
            if v6:
                ip(*w, "addr", "add", v6, "dev", f"br{i}", "nodad")
            ip(*w, "link", "set", f"br{i}", "up")
            ip(*w, "link", "add", f"veth{i}", "type", "veth", "peer", "name", f"eth{i}",
               "netns", ns.vm)  # fmt: skip
            ip(*w, "link", "set", f"veth{i}", "master", f"br{i}", "up")
        ip(*v, "link", "set", "eth0", "mtu", "1400", "address", "02:42:0a:d5:00:02")
        ip(*v, "addr", "add", "10.213.0.2/24", "dev", "eth0")
        ip(*v, "addr", "add", "fd00:213::2/64", "dev", "eth0", "nodad")
        ip(*v, "addr", "add", "10.214.0.2/24", "dev", "eth1")
        for link in ("eth0", "eth1"):
            ip(*v, "link", "set", link, "up")
        ip(*v, "route", "add", "default", "via", "10.213.0.1")
        ip(*v, "-6", "route", "add", "default", "via", "fd00:213::1")
        yield ns
    finally:
        for name in (ns.vm, ns.world):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> LocalImages:
    base = tmp_path_factory.mktemp("vmnet")
    images = LocalImages.open(base / "root")
    import_rootfs(images, make_busybox_rootfs(base / "rootfs"), reference=IMAGE)
    return images


def run(vm: MicroVm, session: int, script: str, timeout: float = 60) -> tuple[int, str]:
    """``sh -c script`` in the guest: its exit code and its stdout and stderr."""
    vm.conn.send(Msg.EXEC, session, exec_payload(["sh", "-c", script], PATH_ENV))
    out = bytearray()
    deadline = time.monotonic() + timeout
    while not vm.conn.closed and time.monotonic() < deadline:
        for f in vm.conn.poll(1.0):
            if f.session == 0 and f.type == Msg.ERROR:
                raise AssertionError(f"the VM failed: {f.payload.decode()}")
            if f.session != session:
                continue
            if f.type in (Msg.STDOUT, Msg.STDERR, Msg.ERROR):
                out += f.payload
            elif f.type == Msg.EXIT:
                return parse_exit(f.payload).exit_code, out.decode()
    raise AssertionError(f"no exit from {script!r}: {out.decode()}")


def fetch(ns: str, url: str) -> str:
    """What busybox wget gets from ``url`` inside ``ns`` ("" on any failure)."""
    try:
        r = in_ns(ns, "busybox", "wget", "-q", "-O", "-", url, timeout=5)
    except subprocess.TimeoutExpired:
        return ""
    return r.stdout if r.returncode == 0 else ""


def tc_filters(ns: str, link: str) -> str:
    return in_ns(ns, "tc", "filter", "show", "dev", link, "ingress").stdout


def test_vm_takes_over_the_links_of_its_namespace(
    local: LocalImages, namespaces: Namespaces
) -> None:
    links = tuple(NetworkAttachment("netns", netns=namespaces.vm_path, link=name)
                  for name in ("eth0", "eth1"))  # fmt: skip
    config = VmConfig(vcpus=1, memory_mib=256, networks=links)
    files = {
        "hostname": "webvm\n",
        "hosts": "127.0.0.1\tlocalhost\n10.213.0.2\twebvm\n",
        "resolv.conf": "nameserver 10.213.0.1\n",
    }
    vm = start_vm(local, local.require(IMAGE), config, accel="tcg", hostname="webvm",
                  guest_files=files)  # fmt: skip
    try:
        # The taps and their redirects exist while QEMU runs, in the VM's namespace.
        assert "Egress Redirect to device tap0" in tc_filters(namespaces.vm, "eth0")
        assert "Egress Redirect to device eth1" in tc_filters(namespaces.vm, "tap1")
        code, out = run(vm, 1, "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; "
                               "ip -o addr show; ip route; ip -6 route; cat /etc/hostname "
                               "/etc/hosts /etc/resolv.conf")  # fmt: skip
        assert code == 0, out
        assert out.startswith("02:42:0a:d5:00:02\n1400\n"), out  # the veth's MAC and MTU
        assert "eth0    inet 10.213.0.2/24" in out and "eth1    inet 10.214.0.2/24" in out, out
        assert "inet6 fd00:213::2/64" in out, out
        assert "default via 10.213.0.1 dev eth0" in out, out
        assert "default via fd00:213::1 dev eth0" in out, out
        assert out.endswith("webvm\n" + files["hosts"] + files["resolv.conf"]), out
        # Out: the far address only through the default route; both bridges; IPv6.
        code, out = run(vm, 2, "ping -c1 -W5 10.215.0.1 && ping -c1 -W5 10.214.0.1 && "
                               "ping -c1 -W5 fd00:213::1")  # fmt: skip
        assert code == 0, out
        # In: the world reaches a server in the guest by the links' addresses.
        vm.conn.send(Msg.EXEC, 3, exec_payload(
            ["sh", "-c", "mkdir /www && echo hello-from-the-vm > /www/index.html && "
                         "exec httpd -f -p 8080 -h /www"], PATH_ENV))  # fmt: skip
        for address in ("10.214.0.2", "10.213.0.2", "[fd00:213::2]"):

            def answered(address: str = address) -> bool:
                vm.conn.poll(0)
                return fetch(namespaces.world, f"http://{address}:8080/") == "hello-from-the-vm\n"

            until(answered, timeout=30)
    finally:
        vm.close()
    # The taps died with QEMU; the veths are the namespace's, as they were.
    until(lambda: "tap" not in ip("-n", namespaces.vm, "-o", "link"), timeout=10)
    assert "eth0" in ip("-n", namespaces.vm, "-o", "link")


def test_netns_attachments_are_checked(namespaces: Namespaces) -> None:
    with pytest.raises(VmConfigError, match="no such network namespace"):
        VmConfig(networks=(NetworkAttachment("netns", netns="/run/netns/absent", link="eth0"),))
    with pytest.raises(VmConfigError, match="not a valid interface name"):
        VmConfig(networks=(NetworkAttachment("netns", netns=namespaces.vm_path, link="a/b"),))
    with pytest.raises(VmConfigError, match="at most 8"):
        VmConfig(networks=tuple(NetworkAttachment("netns", netns=namespaces.vm_path,
                                                  link=f"eth{i}") for i in range(9)))  # fmt: skip
    two = (NetworkAttachment("netns", netns=namespaces.vm_path, link="eth0"),
           NetworkAttachment("netns", netns="/proc/1/ns/net", link="eth0"))  # fmt: skip
    with pytest.raises(VmConfigError, match="one namespace"):
        VmConfig(networks=two)


# -- through the CLI, with netavark ------------------------------------------------------

HTTPD = "mkdir -p /www && echo {} > /www/index.html && exec httpd -f -p 80 -h /www"
VM = ("--isolation", "vm")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "vm-networks")
    yield root
    remove_all_containers(root)
    lamina_cli(root, "network", "prune", "-f")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)
    lamina_cli(image_root, "network", "prune", "-f")
    assert network_leaks(image_root) == []


def inspect(root: Path, ref: str) -> dict:  # type: ignore[type-arg]
    return json.loads(lamina_ok(root, "inspect", ref))[0]


def get(root: Path, network: str, url: str) -> str:
    """What a process container on ``network`` fetches from ``url`` ("" on failure)."""
    r = lamina_cli(root, "run", "--rm", "--network", network, IMAGE_REF,
                   "wget", "-q", "-O", "-", url)  # fmt: skip
    return r.stdout if r.returncode == 0 else ""


@NEEDS_NETAVARK
def test_vm_and_process_containers_share_networks(root: Path) -> None:
    lamina_ok(root, "network", "create", "front")
    lamina_ok(root, "network", "create", "back")
    lamina_ok(root, "run", "-d", "--name", "web", "--network", "front", IMAGE_REF,
              "sh", "-c", HTTPD.format("from-the-process"))  # fmt: skip
    lamina_ok(
        root, "run", "-d", *VM, "--name", "vmweb", "--network", "front", "--network", "back",
        "--network-alias", "vmalias", "-p", "127.0.0.1::80", IMAGE_REF,
        "sh", "-c", HTTPD.format("from-the-vm"),
    )  # fmt: skip
    nets = inspect(root, "vmweb")["NetworkSettings"]["Networks"]
    front, back = nets["front"]["IPAddress"], nets["back"]["IPAddress"]
    assert front and back
    # The guest owns the addresses netavark's veths had, eth0 and eth1 in order.
    addrs = lamina_ok(root, "exec", "vmweb", "ip", "-o", "-4", "addr")
    assert f"eth0    inet {front}/" in addrs and f"eth1    inet {back}/" in addrs, addrs
    # The VM finds the process container by name (aardvark-dns on front's gateway) ...
    until(lambda: lamina_cli(root, "exec", "vmweb", "wget", "-q", "-O", "-", "http://web/")
          .stdout == "from-the-process\n", timeout=30)  # fmt: skip
    # ... process containers find it by name and alias, on both of its networks ...
    assert get(root, "front", "http://vmweb/") == "from-the-vm\n"
    assert get(root, "front", "http://vmalias/") == "from-the-vm\n"
    assert get(root, "back", "http://vmweb/") == "from-the-vm\n"
    # ... and the host reaches its published port (netavark's DNAT to its address).
    host_port = lamina_ok(root, "port", "vmweb", "80").strip().rsplit(":", 1)[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=30) as r:
        assert r.read() == b"from-the-vm\n"
    # A running VM cannot get a NIC more (no hotplug); leaving a network takes its NIC
    # down and its name out of that network.
    lamina_ok(root, "network", "create", "third")
    r = lamina_cli(root, "network", "connect", "third", "vmweb")
    assert r.returncode != 0 and "running VM" in error_line(r.stderr)
    lamina_ok(root, "network", "disconnect", "back", "vmweb")
    assert get(root, "back", "http://vmweb/") == ""
    links = lamina_ok(root, "exec", "vmweb", "ip", "-o", "link", "show", "up")
    assert "eth0" in links and "eth1" not in links, links
    assert get(root, "front", "http://vmweb/") == "from-the-vm\n"
    # The published port goes on through front; back's forwarding left with back.
    with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=30) as r:
        assert r.read() == b"from-the-vm\n"
    cid = inspect(root, "vmweb")["Id"]
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert [line for line in nat.splitlines() if f"dnat name: back id: {cid}" in line] == []


def _vm_pids(root: Path, cid: str) -> tuple[int, int]:
    vmdir = root / "vms" / cid
    return int((vmdir / "supervisor.pid").read_text()), int((vmdir / "qemu.pid").read_text())


@NEEDS_NETAVARK
@pytest.mark.parametrize("victim", ["qemu", "supervisor"])
def test_sigkill_of_a_bridged_vm_leaves_nothing(root: Path, victim: str) -> None:
    cid = lamina_ok(root, "run", "-d", *VM, IMAGE_REF, "sleep", "300").strip()
    netns = root / "netns" / cid
    assert netns.exists()
    supervisor, qemu = _vm_pids(root, cid)
    os.kill(qemu if victim == "qemu" else supervisor, signal.SIGKILL)
    # The supervisor sees its QEMU go and ends the run; a killed supervisor is found
    # dead by the next command, which kills its QEMU. Either way the run's namespace
    # (its veth, the taps and their redirects) and netavark's part are torn down.
    until(lambda: "Exited" in lamina_ok(root, "ps", "-a", "--filter", f"id={cid}"), timeout=30)
    until(lambda: not netns.exists(), timeout=10)
    for pid in (supervisor, qemu):
        until(lambda pid=pid: zombie(pid), timeout=10)
    lamina_ok(root, "rm", cid)
    assert network_leaks(root) == []


@NEEDS_NETAVARK
def test_vm_network_refusals_are_one_line(root: Path) -> None:
    for i in range(9):
        lamina_ok(root, "network", "create", f"n{i}")
    many = [a for i in range(9) for a in ("--network", f"n{i}")]
    r = lamina_cli(root, "run", "--rm", *VM, *many, IMAGE_REF, "true")
    assert r.returncode == 125 and "at most 8 networks" in error_line(r.stderr), r.stderr
    for mode in ("host", "container:abc"):
        r = lamina_cli(root, "run", "--rm", *VM, "--network", mode, IMAGE_REF, "true")
        assert "not supported for VM containers" in error_line(r.stderr), r.stderr
    r = lamina_cli(root, "run", "--rm", *VM, "--network", "nat", "-P", IMAGE_REF, "true")
    assert "needs a bridge network" in error_line(r.stderr), r.stderr
    assert lamina_ok(root, "ps", "-a", "-q") == ""
