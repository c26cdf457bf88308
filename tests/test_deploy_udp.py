"""A deployment's public UDP endpoint, end to end: a real controller with its ingress
(UDP goes through the kernel's NAT, not HAProxy), replicas running a UDP echo server,
datagrams from the host's loopback answered by them; ``down`` takes the rules away."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from deploy_fixtures import deploy_root, spec
from runtime_fixtures import IMAGE_REF, until
from test_deploy_ingress import Controller, controller
from test_networks import free_port, udp_echo

from lamina.ingress import _udp

__all__ = ["controller", "deploy_root", "udp_echo"]

pytestmark = pytest.mark.timeout(240)


def echo(port: int) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a new flow each
        sock.settimeout(2)
        sock.sendto(b"ping", ("127.0.0.1", port))
        try:
            return sock.recv(100)
        except TimeoutError:
            return None


def nat_rules() -> str:
    return subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def test_a_public_udp_endpoint_answers_from_the_replicas(
    controller: Controller, udp_echo: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (iptables)")
    port = free_port(socket.SOCK_DGRAM)
    service = {
        "image": {"name": IMAGE_REF, "pull_policy": "never"},
        "command": {"entrypoint": ["/udp_echo"], "args": ["5353"]},
        "storage": [{"type": "bind", "source": str(udp_echo), "target": "/udp_echo",
                     "readonly": True}],
        "scale": {"mode": "fixed", "replicas": 2},
        "endpoints": [{"name": "dns", "protocol": "udp", "port": port, "target_port": 5353,
                       "expose": "public"}],
        "stop_grace_period": "1s",
    }  # fmt: skip
    d = controller.d
    d.apply(spec("udpdep", dns=service))
    d.wait("udpdep", timeout=60)
    until(lambda: echo(port) == b"ping", 20)
    assert all(echo(port) == b"ping" for _ in range(5))
    chain = _udp.chain_name(controller.root)
    assert chain in nat_rules()
    d.down("udpdep")
    until(lambda: echo(port) is None, 20)
