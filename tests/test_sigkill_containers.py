"""SIGKILL of ``run -d``, ``create``, ``start`` and ``rm -f`` at every step they take:
the next command recovers, and nothing is left once the containers are removed.

Each step is reached exactly (``LAMINA_TEST_STOP_AT``: the command stops itself
there, then the test kills it); one test also kills ``run -d`` at delays spread over
its whole duration, as an impatient user or an OOM killer would. The leak check
(``leak_check.leaks``): no mounts under the root, no container or overlay
directories, no runc state, cgroups, conmon processes or image holds.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import assert_clean, container_traces, kill, leaks, start_stopped
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    cli_image_root,
    lamina_cli,
    lamina_ok,
    remove_all_containers,
    until,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "sigkill")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


def ids(root: Path) -> set[str]:
    return set(lamina_ok(root, "ps", "-a", "-q", "--no-trunc").split())


def status(root: Path, cid: str) -> str:
    return lamina_ok(root, "ps", "-a", "--filter", f"id={cid}", "--format", "{{.Status}}").strip()


@pytest.mark.parametrize("point", ["create:held", "create:mounted"])
@pytest.mark.parametrize("command", ["run", "create"])
def test_killed_create_leaves_nothing(root: Path, command: str, point: str) -> None:
    """A create killed after it made its directory, held the image, mounted the root
    filesystem: no container exists, and the next command frees all of it."""
    args = [command, "-d"] if command == "run" else [command]
    proc = start_stopped(root, point, *args, IMAGE_REF, "sleep", "100")
    made = container_traces(root)
    assert len(made) == 1  # its directory, before anything else
    kill(proc)
    r = lamina_cli(root, "ps", "-a")
    assert r.returncode == 0, r.stderr
    assert ids(root) == set()
    [line] = r.stderr.splitlines()
    assert line.startswith(f"lamina: warning: container {next(iter(made))[:12]}: ")
    assert "interrupted" in line
    assert_clean(root, made)


def test_killed_start_before_the_row_says_running(root: Path) -> None:
    """runc made the container under conmon, the row still says created: the next
    command tears that run down (the container stays Created and starts again)."""
    cid = lamina_ok(root, "create", IMAGE_REF, "sh", "-c", "echo ran; sleep 100").strip()
    kill(start_stopped(root, "start:created", "start", cid))
    r = lamina_cli(root, "ps", "-a")
    assert "a start or stop of it was interrupted" in r.stderr
    assert status(root, cid) == "Created"
    assert leaks(root, {cid}) == [
        f"containers/{cid}",
        f"overlay/{cid}",
        f"image hold container:{cid}",
    ]  # what a created container has, and nothing of the killed run
    lamina_ok(root, "start", cid)
    until(lambda: "ran" in lamina_ok(root, "logs", cid))
    lamina_ok(root, "rm", "-f", cid)
    assert_clean(root, {cid})


@pytest.mark.parametrize("command", ["run", "start"])
def test_killed_start_before_the_container_was_let_run(root: Path, command: str) -> None:
    """The row says running but runc's container waits for its start: the next
    command lets it run, as the killed command asked (Docker's daemon would too)."""
    if command == "run":
        proc = start_stopped(root, "start:launched", "run", "-d", IMAGE_REF, "sh", "-c",
                             "echo ran; sleep 100")  # fmt: skip
        kill(proc)
        [cid] = container_traces(root)  # no lamina command yet: each one reconciles
    else:
        cid = lamina_ok(root, "create", IMAGE_REF, "sh", "-c", "echo ran; sleep 100").strip()
        kill(start_stopped(root, "start:launched", "start", cid))
    assert (root / "runc" / cid / "exec.fifo").exists()  # runc waits to let it run
    r = lamina_cli(root, "ps", "-a")
    assert f"container {cid[:12]}: its start was interrupted before it ran; started it" in r.stderr
    until(lambda: "ran" in lamina_ok(root, "logs", cid))
    assert status(root, cid).startswith("Up")
    lamina_ok(root, "rm", "-f", cid)
    assert_clean(root, {cid})


@pytest.mark.parametrize("point", ["remove:removing", "remove:dropping"])
@pytest.mark.parametrize("running", [True, False])
def test_killed_rm_leaves_no_ghost(root: Path, point: str, running: bool) -> None:
    """``rm -f`` killed once the row says removing, or once the directory is gone:
    no "Removal In Progress" ghost; the next command finishes the removal."""
    cid = lamina_ok(root, "run", "-d", IMAGE_REF, "sleep", "100").strip()
    if not running:
        lamina_ok(root, "stop", "-t", "0", cid)
    kill(start_stopped(root, point, "rm", "-f", cid))
    r = lamina_cli(root, "ps", "-a")
    assert r.returncode == 0
    assert f"container {cid[:12]}: its removal was interrupted; removed it" in r.stderr
    assert cid not in ids(root)
    assert_clean(root, {cid})


def test_killed_container_prune_is_finished_by_the_next(root: Path) -> None:
    cid = lamina_ok(root, "create", IMAGE_REF, "true").strip()
    kill(start_stopped(root, "remove:removing", "container", "prune", "-f"))
    r = lamina_cli(root, "container", "prune", "-f")
    assert r.returncode == 0
    assert ids(root) == set()
    assert_clean(root, {cid})


def test_run_killed_at_any_moment_is_recovered(root: Path) -> None:
    """``run -d`` SIGKILLed at 24 moments around the end of its create, where the
    directories and the mount appear (a real race, no stop points; the create's
    last milliseconds are the narrow window). After one ``ps -a`` and removing what
    it lists, nothing is left."""

    def timed(*args: str) -> float:
        t0 = time.monotonic()
        lamina_ok(root, *args)
        return time.monotonic() - t0

    create = min(timed("create", IMAGE_REF, "true") for _ in range(3))
    remove_all_containers(root)
    seen: set[str] = set()
    n = 24
    for i in range(n):
        proc = subprocess.Popen(
            [*CLI, "--root", str(root), "run", "-d", IMAGE_REF, "true"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(create * (0.7 + 0.6 * i / n))
        proc.kill()
        proc.wait()
        seen |= container_traces(root)
    lamina_ok(root, "ps", "-a")
    listed = ids(root)
    assert container_traces(root) <= listed  # only containers that exist have files
    if listed:
        lamina_ok(root, "rm", "-f", *listed)
    assert_clean(root, seen | listed)


# -- micro-VM containers: the same, where it applies ----------------------------------------


def vm_dirs(root: Path) -> set[str]:
    return {d for d in os.listdir(root / "vms") if len(d) == 64}


@pytest.mark.parametrize("point", ["create:held", "remove:removing", "remove:dropping"])
def test_killed_vm_create_or_rm_leaves_nothing(root: Path, point: str) -> None:
    """A VM container's create killed once it made its directory and held the image,
    or its removal killed once its record says removing, or once its directory is
    gone: the next command frees the directory and the hold, as for a process
    container (no VM boots for this)."""
    if point == "create:held":
        proc = start_stopped(root, point, "create", "--isolation", "vm", IMAGE_REF, "true")
        [cid] = vm_dirs(root)
        expected = f"container {cid[:12]}: left over by an interrupted command: removed it"
    else:
        cid = lamina_ok(root, "create", "--isolation", "vm", IMAGE_REF, "true").strip()
        proc = start_stopped(root, point, "rm", cid)
        assert vm_dirs(root) == ({cid} if point == "remove:removing" else set())
        expected = f"container {cid[:12]}: its removal was interrupted; removed it"
    kill(proc)
    r = lamina_cli(root, "ps", "-a")
    assert expected in r.stderr
    assert ids(root) == set()
    assert vm_dirs(root) == set()
    assert leaks(root, set()) == []  # the image hold included
