"""Address leases under concurrency and after SIGKILL: 50 ``lamina run -d`` racing on
one network get 50 different addresses (and every one is freed with its container);
a ``run`` killed at each step of its network setup leaves nothing the next command
does not clean (namespace, veth, bridge, firewall rules, aardvark-dns entries and
process, leases)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import clear_networks, kill, start_stopped
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    NEEDS_NETAVARK,
    cli_image_root,
    lamina_cli,
    lamina_ok,
    remove_all_containers,
)

pytestmark = [
    pytest.mark.timeout(300),
    NEEDS_NETAVARK,
]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "ipam")
    yield root
    remove_all_containers(root)
    lamina_cli(root, "network", "prune", "-f")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    clear_networks(image_root)


def test_fifty_racing_runs_get_unique_addresses(root: Path) -> None:
    lamina_ok(root, "network", "create", "--subnet", "10.66.0.0/24", "race")
    procs = [
        subprocess.Popen(
            [
                *CLI,
                "--root",
                str(root),
                "run",
                "-d",
                "--network",
                "race",
                IMAGE_REF,
                "sleep",
                "300",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(50)
    ]
    results = [p.communicate(timeout=240) for p in procs]
    failed = [
        (p.returncode, err) for p, (_, err) in zip(procs, results, strict=True) if p.returncode
    ]
    assert failed == []
    ids = [out.strip() for out, _ in results]
    found = json.loads(lamina_ok(root, "inspect", *ids))
    addresses = [c["NetworkSettings"]["Networks"]["race"]["IPAddress"] for c in found]
    assert len(set(addresses)) == 50 and all(a.startswith("10.66.0.") for a in addresses)
    assert len({c["NetworkSettings"]["Networks"]["race"]["MacAddress"] for c in found}) == 50
    members = json.loads(lamina_ok(root, "network", "inspect", "race"))[0]["Containers"]
    assert len(members) == 50
    lamina_ok(root, "rm", "-f", *ids)
    assert json.loads(lamina_ok(root, "network", "inspect", "race"))[0]["Containers"] == {}
    # Freed: the lowest address is given again.
    again = lamina_ok(root, "run", "--rm", "--network", "race", IMAGE_REF, "ip", "-o", "-4", "addr")
    assert "10.66.0.2/24" in again


@pytest.mark.parametrize("point", ["network:recorded", "network:netns", "network:setup"])
def test_run_killed_during_network_setup_leaves_nothing(root: Path, point: str) -> None:
    lamina_ok(root, "network", "create", "killed")
    # One container keeps the bridge up, so a half-done setup is not hidden by netavark
    # removing the bridge with its last container.
    lamina_ok(
        root, "run", "-d", "--name", "keeper", "--network", "killed", IMAGE_REF, "sleep", "300"
    )
    proc = start_stopped(root, point, "run", "-d", "--name", "victim", "--network", "killed",
                         "-p", "80", IMAGE_REF, "sleep", "300")  # fmt: skip
    kill(proc)
    # The next command tears down what the killed one made.
    r = lamina_cli(root, "ps", "-a", "--format", "{{.Names}} {{.State}}")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split("\n")[:-1]) == ["keeper running", "victim created"]
    assert os.listdir(root / "netns") == [_id(root, "keeper")]
    dns = (root / "networks" / "netavark" / "aardvark-dns" / "killed").read_text()
    assert "keeper" in dns and "victim" not in dns
    # It can start after all, and everything goes with the containers.
    lamina_ok(root, "start", "victim")
    lamina_ok(root, "exec", "victim", "ping", "-c1", "-W2", "keeper")
    lamina_ok(root, "rm", "-f", "keeper", "victim")
    lamina_ok(root, "network", "rm", "killed")


def _id(root: Path, name: str) -> str:
    return lamina_ok(root, "inspect", "--format", "{{.Id}}", name).strip()
