"""The shortcuts of the fast run path on bridge networks, end to end with real
netavark, runc and conmon: netavark's setup overlapping the workload's launch (a
failure there undoes the launch too), and whatever else the run path skips or defers
(each with the path it adds: failure, SIGKILL, and what a user sees right after)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import clear_networks, conmons, network_leaks
from runtime_fixtures import (
    CLI,
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


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = cli_image_root(tmp_path_factory, "netperf")
    yield root
    remove_all_containers(root)
    lamina_cli(root, "network", "prune", "-f")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    clear_networks(image_root)


@pytest.fixture
def squatter() -> Iterator[str]:
    """A host interface (a veth) squatting on a bridge name a network asks for."""
    name = f"lmt{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"],
                   check=True)  # fmt: skip
    yield name
    # Only the squatter: once the test freed the name, it is the network's bridge
    # (deleting that left netavark's firewall rules of the network on the host).
    if not os.path.exists(f"/sys/class/net/{name}/bridge"):
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


def _down_worker(root: Path) -> int:
    """The PID of the process finishing a removed container's network teardown (it
    holds a ``netdown`` lease); 0 if none."""
    locks = {str(p) for p in (root / "leases").glob("netdown-*.lock")}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in locks:
                        return int(pid)
    return 0


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] == b"T"


def _run_rm_leaving_teardown_stopped(root: Path, *args: str) -> tuple[str, int]:
    """``run --rm ARGS`` whose network teardown worker stops itself: its output and
    the worker's PID (stopped, its teardown not done)."""
    env = {**os.environ, "LAMINA_TEST_STOP_AT": "network:down"}
    r = subprocess.run([*CLI, "--root", str(root), "run", "--rm", *args], env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    found: list[int] = []
    until(lambda: found.append(_down_worker(root)) or found[-1], 10)
    until(lambda: _stopped(found[-1]), 10)
    return r.stdout, found[-1]


@pytest.fixture
def workers() -> Iterator[list[int]]:
    """Stopped teardown workers a test made: let go whatever happens to the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_run_rm_returns_before_its_network_teardown(root: Path, workers: list[int]) -> None:
    lamina_ok(root, "network", "create", "--subnet", "10.67.0.0/24", "later")
    out, worker = _run_rm_leaving_teardown_stopped(
        root, "--name", "gone", "--network", "later", "--ip", "10.67.0.9", IMAGE_REF,
        "ip", "-o", "-4", "addr",
    )  # fmt: skip
    workers.append(worker)
    assert "10.67.0.9/24" in out
    # The container is gone for the user at once; its address is not given again
    # until its teardown is over: a run asking for it waits for the teardown.
    assert lamina_ok(root, "ps", "-a", "-q") == ""
    again = subprocess.Popen([*CLI, "--root", str(root), "run", "--rm", "--network", "later",
                              "--ip", "10.67.0.9", IMAGE_REF, "ip", "-o", "-4", "addr"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    os.kill(worker, signal.SIGCONT)
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert "10.67.0.9/24" in out
    # network rm right after a run --rm on it: refused by nothing left.
    lamina_ok(root, "network", "rm", "later")


def test_teardown_worker_killed_is_finished_by_the_next_command(
    root: Path, workers: list[int]
) -> None:
    _out, worker = _run_rm_leaving_teardown_stopped(root, IMAGE_REF, "true")
    workers.append(worker)
    assert _entries(root / "netns") != []  # its namespace is still there
    os.kill(worker, signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{worker}"), 10)
    r = lamina_cli(root, "ps", "-a", "-q")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert "left over by an interrupted command" in r.stderr
    # Nothing of it is left: namespace, veth, bridge, rules, lease.
    assert network_leaks(root) == []
