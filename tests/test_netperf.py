"""The shortcuts of the fast run path on bridge networks, end to end with real
netavark, runc and conmon: netavark's setup overlapping the workload's launch (a
failure there undoes the launch too), and whatever else the run path skips or defers
(each with the path it adds: failure, SIGKILL, and what a user sees right after)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import conmons, network_leaks
from runtime_fixtures import (
    IMAGE_REF,
    cli_image_root,
    error_line,
    lamina_cli,
    lamina_ok,
    remove_all_containers,
)

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        not os.path.exists("/usr/lib/podman/netavark"), reason="needs netavark and aardvark-dns"
    ),
]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "netperf")
    yield root
    remove_all_containers(root)
    lamina_cli(root, "network", "prune", "-f")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)
    lamina_cli(image_root, "network", "prune", "-f")
    assert network_leaks(image_root) == []


@pytest.fixture
def squatter() -> Iterator[str]:
    """A host interface (a veth) squatting on a bridge name a network asks for."""
    name = f"lmt{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"],
                   check=True)  # fmt: skip
    yield name
    subprocess.run(["ip", "link", "delete", name], capture_output=True)


def test_setup_failing_beside_the_launch_undoes_the_launch(root: Path, squatter: str) -> None:
    # netavark fails while runc has the workload created (its setup overlaps the
    # launch): the launched workload goes too, the container stays created.
    subprocess.run(["ip", "link", "delete", squatter], check=True)
    lamina_ok(root, "network", "create", "-o", f"com.docker.network.bridge.name={squatter}", "sq")
    subprocess.run(["ip", "link", "add", squatter, "type", "veth", "peer", "name",
                    f"{squatter}p"], check=True)  # fmt: skip
    r = lamina_cli(root, "run", "-d", "--name", "victim", "--network", "sq", IMAGE_REF,
                   "sleep", "300")  # fmt: skip
    assert r.returncode == 125
    assert "is a Veth interface" in error_line(r.stderr)
    assert lamina_ok(root, "ps", "-a", "--format", "{{.Names}} {{.State}}") == "victim created\n"
    assert conmons(root) == []
    assert _entries(root / "runc") == [] and _entries(root / "netns") == []
    # With the bridge name free again, it starts and reaches its gateway.
    subprocess.run(["ip", "link", "delete", squatter], check=True)
    lamina_ok(root, "start", "victim")
    gateway = lamina_ok(root, "exec", "victim", "sh", "-c", "ip route | awk '/default/{print $3}'")
    lamina_ok(root, "exec", "victim", "ping", "-c1", "-W2", gateway.strip())


def _entries(path: Path) -> list[str]:
    return os.listdir(path) if path.exists() else []
