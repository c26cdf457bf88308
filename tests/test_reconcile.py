"""Containers reconciled from what is real: the image held before it is used,
runtime state or container directories deleted by hand, a first start that fails,
and containers whose owner (a lease) died. Real runc, conmon and cgroups; the CLI
in subprocesses, as a user runs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from leak_check import assert_clean, conmons, leaks, resume, start_stopped, zombie
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    busybox_rootfs,
    cli_image_root,
    lamina_cgroups,
    lamina_cli,
    lamina_ok,
    remove_all_containers,
    until,
)

from lamina.image import LocalImages, chain_ids, import_rootfs
from lamina.runtime import ContainerConfig

pytestmark = pytest.mark.timeout(180)

RACER = "example.com/test/racer:latest"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "reconcile")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


@pytest.fixture(scope="module")
def racer_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_rootfs(tmp_path_factory.mktemp("racer") / "rootfs")


def import_racer(root: Path, rootfs: Path) -> None:
    """``RACER``: an image only the rmi races use (and delete)."""
    local = LocalImages.open(root)
    try:
        import_rootfs(local, rootfs, reference=RACER, changes=['CMD ["/bin/sh"]'])
    finally:
        local.close()


def ids(root: Path) -> set[str]:
    return set(lamina_ok(root, "ps", "-a", "-q", "--no-trunc").split())


def status(root: Path, cid: str) -> str:
    return lamina_ok(root, "ps", "-a", "--filter", f"id={cid}", "--format", "{{.Status}}").strip()


# -- rmi racing create --------------------------------------------------------------------


def test_rmi_while_create_holds_the_image_is_refused(root: Path, racer_rootfs: Path) -> None:
    import_racer(root, racer_rootfs)
    proc = start_stopped(root, "create:held", "run", "-d", RACER, "sleep", "100")
    r = lamina_cli(root, "rmi", RACER)
    assert r.returncode != 0 and "is using its referenced image" in r.stderr, r.stderr
    done = resume(proc)
    assert done.returncode == 0, done.stderr
    cid = done.stdout.strip()
    assert "root:x:0:0" in lamina_ok(root, "exec", cid, "cat", "/etc/passwd")


def test_rmi_before_create_holds_the_image_fails_the_create_cleanly(
    root: Path, racer_rootfs: Path
) -> None:
    import_racer(root, racer_rootfs)
    proc = start_stopped(root, "create:found", "run", "-d", RACER, "sleep", "100")
    lamina_ok(root, "rmi", RACER)
    done = resume(proc)
    assert done.returncode == 125
    assert done.stderr.splitlines() == [
        f"lamina: error: image not known locally: {RACER} (it was just removed)"
    ]
    assert ids(root) == set()
    assert_clean(root, set())


_READY_CLI = """
import sys
from lamina.cli import main, _images, _run  # imported before the go: fast to act
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.read(1)
main.main(sys.argv[1:])
"""


def test_rmi_while_run_unpacks_the_image(root: Path, tmp_path: Path) -> None:
    """``rmi`` while ``run -d`` unpacks its image (a layer of 1500 files, seen by its
    half-made snapshot directory; rmi started beforehand with its imports done, so
    it acts within milliseconds): rmi must be refused, and the container keeps its
    files through a later garbage collection. Before the fix rmi deleted the image
    there, and the next GC emptied the running container's root filesystem."""
    rootfs = busybox_rootfs(tmp_path / "bulk")
    for i in range(1500):
        (rootfs / "etc" / f"bulk-{i}").write_text(f"{i}\n")  # a layer of its own
    bulk = "example.com/test/bulk:1"
    snapshots = root / "snapshots"
    local = LocalImages.open(root)
    try:
        record = import_rootfs(local, rootfs, reference=bulk)
        # An import leaves its image unpacked: undo that, for run to unpack it.
        for chain in chain_ids(local.diff_ids(record)):
            local.snapshots.remove(chain)
        assert not local.is_unpacked(local.images.resolve(bulk))
    finally:
        local.close()
    rmi = subprocess.Popen(
        [sys.executable, "-c", _READY_CLI, "--root", str(root), "rmi", bulk],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert rmi.stdin is not None and rmi.stdout is not None
    assert rmi.stdout.readline() == "ready\n"
    run = subprocess.Popen(
        [*CLI, "--root", str(root), "run", "-d", bulk, "sleep", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".tmp-") for p in snapshots.iterdir()):
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.002)
    rmi_out, rmi_err = rmi.communicate("x", timeout=60)  # go
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert rmi.returncode != 0 and "is using its referenced image" in rmi_err, (rmi_out, rmi_err)
    cid = out.strip()
    lamina_ok(root, "image", "prune", "-f")  # garbage collection
    assert lamina_ok(root, "exec", cid, "cat", "/etc/bulk-1499") == "1499\n"
    lamina_ok(root, "rm", "-f", cid)
    lamina_ok(root, "rmi", bulk)


# -- runtime state or directories deleted by hand ------------------------------------------


def one_line(r: subprocess.CompletedProcess[str], needle: str) -> str:
    lines = [x for x in r.stderr.splitlines() if needle in x]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_stop_with_runc_state_deleted_stops_the_real_process(root: Path) -> None:
    cid = lamina_ok(root, "run", "-d", IMAGE_REF, "sleep", "1000").strip()
    pid = int(lamina_ok(root, "inspect", "--format", "{{.State.Pid}}", cid))
    shutil.rmtree(root / "runc" / cid)
    r = lamina_cli(root, "stop", "-t", "1", cid)
    assert r.returncode == 0, r.stderr
    line = one_line(r, "runtime state is gone")
    assert line.startswith(f"lamina: warning: container {cid[:12]}: its runtime state is gone; ")
    assert "sent SIGTERM to its process" in line and ", then SIGKILL to its processes" in line
    assert f"in cgroup /lamina/{cid} directly" in line
    assert not os.path.exists(f"/proc/{pid}") or zombie(pid)
    assert status(root, cid).startswith("Exited (137)")
    assert lamina_cgroups(cid) == []
    lamina_ok(root, "rm", cid)
    assert_clean(root, {cid})


def test_kill_with_runc_state_deleted_signals_the_real_process(root: Path) -> None:
    cid = lamina_ok(root, "run", "-d", IMAGE_REF, "sh", "-c",
                    "trap 'echo got USR1' USR1; while true; do sleep 0.1; done")  # fmt: skip
    cid = cid.strip()
    shutil.rmtree(root / "runc" / cid)
    r = lamina_cli(root, "kill", "-s", "USR1", cid)
    assert r.returncode == 0, r.stderr
    assert "sent SIGUSR1 to its process" in one_line(r, "runtime state is gone")
    until(lambda: "got USR1" in lamina_ok(root, "logs", cid))
    assert status(root, cid).startswith("Up")
    r = lamina_cli(root, "kill", cid)
    assert r.returncode == 0, r.stderr
    until(lambda: status(root, cid).startswith("Exited (137)"))
    lamina_ok(root, "rm", cid)
    assert_clean(root, {cid})


def test_rm_force_with_runc_state_deleted(root: Path) -> None:
    cid = lamina_ok(root, "run", "-d", IMAGE_REF, "sleep", "1000").strip()
    shutil.rmtree(root / "runc" / cid)
    t0 = time.monotonic()
    r = lamina_cli(root, "rm", "-f", cid)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 8  # it killed the process; nothing timed out
    assert cid not in ids(root)
    assert_clean(root, {cid})


def test_dead_monitor_and_runc_state_deleted_kills_what_is_left(root: Path) -> None:
    """conmon killed and runc's state gone: the container's process would run on
    with nothing to stop it. The next command kills it and says so."""
    cid = lamina_ok(root, "run", "-d", IMAGE_REF, "sleep", "1000").strip()
    conmon = int((root / "containers" / cid / "conmon.pid").read_text())
    shutil.rmtree(root / "runc" / cid)
    os.kill(conmon, signal.SIGKILL)
    until(lambda: zombie(conmon))
    r = lamina_cli(root, "ps", "-a")
    line = one_line(r, "runtime state is gone")
    assert f"killed 1 process left in its cgroup /lamina/{cid}" in line
    assert status(root, cid).startswith("Exited (137)")
    assert lamina_cgroups(cid) == []
    lamina_ok(root, "rm", cid)
    assert_clean(root, {cid})


def test_container_directory_deleted_while_running(root: Path) -> None:
    """``containers/<id>`` deleted under a running container: it is still shown
    running while it runs, stop works, and once it is dead it is shown exited."""
    cid = lamina_ok(root, "run", "-d", IMAGE_REF, "sh", "-c", "sleep 1000; exit 3").strip()
    shutil.rmtree(root / "containers" / cid)
    r = lamina_cli(root, "ps")
    assert f"its directory {root / 'containers' / cid} was gone; made it again" in one_line(
        r, "directory"
    )
    assert status(root, cid).startswith("Up")
    pid = int(lamina_ok(root, "inspect", "--format", "{{.State.Pid}}", cid))
    sleeper = int(lamina_ok(root, "exec", cid, "pidof", "sleep"))
    lamina_ok(root, "exec", cid, "kill", str(sleeper))
    until(lambda: status(root, cid).startswith("Exited (3)"))  # conmon could record it
    assert not os.path.exists(f"/proc/{pid}") or zombie(pid)
    lamina_ok(root, "start", cid)  # its bundle is made again from the row
    assert status(root, cid).startswith("Up")
    lamina_ok(root, "rm", "-f", cid)
    assert_clean(root, {cid})


def test_container_directory_deleted_then_the_container_exits(root: Path) -> None:
    """The workload ends by itself after its directory was deleted (conmon cannot
    write the exit file): ``ps`` must not show it Up forever."""
    cid = lamina_ok(root, "run", "-d", IMAGE_REF, "sleep", "1").strip()
    shutil.rmtree(root / "containers" / cid)
    until(lambda: status(root, cid).startswith("Exited"), 30)
    lamina_ok(root, "rm", cid)
    assert_clean(root, {cid})


# -- a first start that fails --------------------------------------------------------------


def test_failed_first_start_leaves_only_the_record(root: Path) -> None:
    r = lamina_cli(root, "run", "-d", "--name", "nocmd", IMAGE_REF, "nonexistent-command")
    assert r.returncode == 127
    assert r.stderr.splitlines() == [
        'lamina: error: unable to start container process: exec: "nonexistent-command": '
        "executable file not found in $PATH"
    ]
    [cid] = ids(root)
    assert status(root, cid) == "Created"  # as Docker shows a container that never ran
    state = lamina_ok(root, "ps", "-a", "--filter", "status=created", "-q", "--no-trunc")
    assert state.split() == [cid]
    assert lamina_ok(root, "inspect", "--format", "{{.State.ExitCode}}", cid).strip() == "127"
    assert leaks(root, {cid}) == [
        f"containers/{cid}",
        f"overlay/{cid}",
        f"image hold container:{cid}",
    ]  # the record's own: no mount, runc state, cgroup or monitor
    out = lamina_ok(root, "container", "prune", "-f")
    assert out.splitlines()[:2] == ["Deleted Containers:", cid]
    assert_clean(root, {cid})


# -- disposable containers of a dead owner -------------------------------------------------

_LEASE_HOLDER = """
import sys, time
from pathlib import Path
from lamina import _leases
lease = _leases.take(Path(sys.argv[1]), "build")
print(lease.id, flush=True)
time.sleep(1000)
"""


def _lease_holder(root: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _LEASE_HOLDER, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_containers_of_a_dead_owner_are_removed(root: Path) -> None:
    """A build's RUN step container (``ContainerConfig.owner``) outlives a killed
    build: the next command removes it, killing it first; a live owner's stays."""
    from lamina.engine import open_engine

    dead, dead_lease = _lease_holder(root)
    live, live_lease = _lease_holder(root)
    rt = open_engine(root)
    try:
        orphan = rt.create(ContainerConfig(image=IMAGE_REF, command=["sleep", "1000"],
                                           owner=dead_lease))  # fmt: skip
        rt.start(orphan.id)
        kept = rt.create(ContainerConfig(image=IMAGE_REF, command=["true"], owner=live_lease))
    finally:
        rt.close()
    dead.kill()
    dead.wait()
    r = lamina_cli(root, "ps", "-a")
    assert f"container {orphan.id[:12]}: its owner {dead_lease} is gone; removed it" in r.stderr
    assert ids(root) == {kept.id}
    live.kill()
    live.wait()
    lamina_ok(root, "ps", "-a")
    assert ids(root) == set()
    assert conmons(root) == []
    assert_clean(root, {orphan.id, kept.id})

