"""``lamina build --network default|none|host`` (Docker's flag) and ``RUN --network``:
RUN steps get the engine's default bridge network unless told otherwise, with NAT
egress to a namespace the test makes to stand for the outside world (``outside``,
shared with tests/test_networks.py); ``none`` has loopback only, ``host`` the host's
interfaces. Traffic goes only to that namespace."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import network_leaks
from runtime_fixtures import (
    IMAGE_REF,
    NEEDS_NETAVARK,
    cli_image_root,
    lamina_cli,
    lamina_ok,
    remove_all_containers,
)
from test_networks import outside

pytestmark = [
    pytest.mark.timeout(180),
    NEEDS_NETAVARK,
]
__all__ = ["outside"]  # a fixture of this module too


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "build-network")
    yield root
    remove_all_containers(root)


def build(root: Path, context: Path, *args: str) -> str:
    """``lamina build`` of ``context`` with ``args``; the image's ID."""
    r = lamina_cli(root, "build", "-q", "--no-cache", *args, str(context))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def files(root: Path, image: str, *paths: str) -> list[str]:
    out = lamina_ok(root, "run", "--rm", "--network", "none", image,
                    "sh", "-c", "for f; do cat $f; echo ==; done", "sh", *paths)  # fmt: skip
    return out.split("==\n")[:-1]


def test_run_steps_get_the_default_bridge_unless_told_otherwise(
    root: Path, tmp_path: Path, outside: str
) -> None:
    host_side = outside.rsplit(".", 1)[0] + ".1"
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {IMAGE_REF}\n"
        f"RUN (nc -w 3 {outside} 8000 || echo no-egress) > /egress; "
        "ls /sys/class/net > /links; (ip -o -4 addr show eth0 || true) > /addr\n"
        "RUN --network=none ls /sys/class/net > /links-none\n"
    )
    default = build(root, context)
    egress, links, addr, links_none = files(root, default, "/egress", "/links", "/addr",
                                            "/links-none")  # fmt: skip
    # NAT out of the default bridge, behind the host's address; a namespace of its own.
    assert egress == f"from {host_side}\n"
    assert links == "eth0\nlo\n"
    subnet = json.loads(lamina_ok(root, "network", "inspect", "lamina"))[0]["IPAM"]["Config"]
    prefix = subnet[0]["Subnet"].rsplit(".", 1)[0] + "."
    assert f"inet {prefix}" in addr, (addr, subnet)
    assert links_none == "lo\n"  # RUN --network=none wins over the build's default

    egress, links = files(root, build(root, context, "--network", "none"), "/egress", "/links")
    assert (egress, links) == ("no-egress\n", "lo\n")

    egress, links = files(root, build(root, context, "--network", "host"), "/egress", "/links")
    assert egress == f"from {host_side}\n"
    # The host's own interfaces: the veth to the outside namespace among them.
    found = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    veth = next(line.split()[1] for line in found.splitlines() if f" {host_side}/" in line)
    assert veth in links.split(), links

    # Every step's container, namespace, veth and lease is gone.
    assert lamina_ok(root, "ps", "-a", "-q") == ""
    assert network_leaks(root) == []
