"""Leases: a live owner is told from a dead one by its flock, and what a dead owner
registered (paths, mounts) is cleaned up by the next ``reap``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamina import _leases

_OWNER = """
import sys, time
from pathlib import Path
from lamina import _leases
root = Path(sys.argv[1])
lease = _leases.take(root, "test")
scratch = root / "scratch"
lease.add_path(scratch)
scratch.mkdir()
(scratch / "f").write_text("x")
if len(sys.argv) > 2:
    lease.add_mount(sys.argv[2])
print(lease.id, flush=True)
time.sleep(600)
"""


def _owner(root: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(root), *extra], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lease_id = proc.stdout.readline().strip()
    assert lease_id
    return proc, lease_id


def test_live_owner_is_alive_and_not_reaped(tmp_path: Path) -> None:
    proc, lease_id = _owner(tmp_path)
    try:
        assert _leases.alive(tmp_path, lease_id)
        assert _leases.reap(tmp_path) == []
        assert (tmp_path / "scratch" / "f").exists()
        assert [i.id for i in _leases.live(tmp_path)] == [lease_id]
    finally:
        proc.kill()
        proc.wait()


def test_sigkilled_owner_is_reaped(tmp_path: Path) -> None:
    proc, lease_id = _owner(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not _leases.alive(tmp_path, lease_id)
    reaped = _leases.reap(tmp_path)
    assert [i.id for i in reaped] == [lease_id]
    assert not (tmp_path / "scratch").exists()
    assert list((tmp_path / "leases").iterdir()) == []
    assert _leases.reap(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount")
def test_dead_owners_mount_is_unmounted_before_removal(tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    target.mkdir()
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_text("do not delete through the mount")
    proc, _ = _owner(tmp_path, str(target))
    subprocess.run(["mount", "--bind", str(keep), str(target)], check=True)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _leases.reap(tmp_path)
        assert not os.path.ismount(target)
        assert (keep / "precious").exists()
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def test_released_lease_leaves_nothing_and_is_not_alive(tmp_path: Path) -> None:
    with _leases.take(tmp_path, "test") as lease:
        lease.add_path(tmp_path / "gone-if-dead")
        assert _leases.alive(tmp_path, lease.id)
        # The owner itself sees its own lease alive (flock conflicts within a process).
        assert [i.kind for i in _leases.live(tmp_path)] == ["test"]
    assert not _leases.alive(tmp_path, lease.id)
    assert list((tmp_path / "leases").iterdir()) == []


def test_alive_rejects_odd_ids(tmp_path: Path) -> None:
    assert not _leases.alive(tmp_path, "")
    assert not _leases.alive(tmp_path, "../x")
    assert not _leases.alive(tmp_path, "nonexistent")


def test_reap_is_safe_under_concurrency(tmp_path: Path) -> None:
    owners = [_owner(tmp_path)[0] for _ in range(1)]
    for p in owners:
        p.kill()
        p.wait()
    reapers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; "
                "from lamina import _leases; _leases.reap(Path(sys.argv[1]))",
                str(tmp_path),
            ]
        )
        for _ in range(4)
    ]
    deadline = time.monotonic() + 60
    for r in reapers:
        assert r.wait(timeout=max(1, deadline - time.monotonic())) == 0
    assert list((tmp_path / "leases").iterdir()) == []
