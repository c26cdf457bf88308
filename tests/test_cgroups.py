"""Reading real cgroups: a test cgroup made by hand the way runc makes one."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina.errors import InUse
from lamina.runtime._cgroups import (
    cgroup_dirs,
    cgroup_exists,
    cgroup_mode,
    cgroup_procs,
    leftover_cgroups,
    read_oom_kills,
    read_stats,
    remove_cgroup,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups")

_JOIN = ("cpu", "cpuacct", "memory", "pids", "blkio")


def _join_dirs(path: str) -> list[Path]:
    dirs = cgroup_dirs(path)
    if cgroup_mode() == "v2":
        return [dirs["unified"]]
    return list(dict.fromkeys(dirs[c] for c in _JOIN if c in dirs))


@pytest.fixture
def cgroup() -> Iterator[str]:
    path = f"/lamina-test-{secrets.token_hex(4)}"
    for d in _join_dirs(path):
        d.mkdir()
    try:
        yield path
    finally:
        for pid in cgroup_procs(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while cgroup_procs(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        remove_cgroup(path)


def _spawn_in(path: str, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its first act joining the cgroup (as runc's init does)."""
    files = " ".join(str(d / "cgroup.procs") for d in _join_dirs(path))
    script = f'for f in {files}; do echo $$ > "$f" || exit 99; done; exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", script, "sh", *argv])


def _wait_for_procs(path: str, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(cgroup_procs(path)) < n:
        assert time.monotonic() < deadline, "process never joined the cgroup"
        time.sleep(0.01)


def test_mode_and_dirs() -> None:
    mode = cgroup_mode()
    assert mode in ("v1", "hybrid", "v2")
    dirs = cgroup_dirs("/lamina/abc")
    if mode == "v2":
        assert dirs["unified"] == Path("/sys/fs/cgroup/lamina/abc")
    else:
        assert dirs["memory"].parts[-2:] == ("lamina", "abc")
        assert dirs["memory"].parent.parent.is_dir()  # the memory hierarchy's mount


def test_stats_of_a_sleeping_process(cgroup: str) -> None:
    proc = _spawn_in(cgroup, ["sleep", "60"])
    _wait_for_procs(cgroup, 1)
    # The CPU the shell spends joining and exec'ing is charged to the cgroup when the
    # scheduler next accounts it: wait until sleep has gone to sleep.
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] != "S" or (
        Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep"
    ):
        assert time.monotonic() < deadline, "sleep never slept"
        time.sleep(0.01)
    assert cgroup_exists(cgroup)
    assert cgroup_procs(cgroup) == [proc.pid]
    first = read_stats(cgroup, pid=proc.pid)
    assert first.pids == 1
    assert first.memory_used > 0
    assert first.memory_limit > 0  # unlimited: the host's memory
    assert first.cpu_usage_ns > 0
    assert first.cpu_percent == 0.0  # no previous sample
    assert first.timestamp > 0
    second = read_stats(cgroup, pid=proc.pid, previous=first)
    assert second.cpu_percent >= 0.0
    assert second.cpu_usage_ns >= first.cpu_usage_ns


def test_cpu_percent_of_a_busy_process(cgroup: str) -> None:
    _spawn_in(cgroup, [sys.executable, "-c", "while True: pass"])
    _wait_for_procs(cgroup, 1)
    time.sleep(0.2)
    first = read_stats(cgroup)
    time.sleep(0.5)
    second = read_stats(cgroup, previous=first)
    # One busy thread is about 100% (Docker's scale: 100% per CPU).
    assert 40.0 < second.cpu_percent < 110.0, second.cpu_percent


def test_memory_limit_and_oom_kill(cgroup: str) -> None:
    if cgroup_mode() == "v2":
        (cgroup_dirs(cgroup)["unified"] / "memory.max").write_text(str(32 << 20))
        (cgroup_dirs(cgroup)["unified"] / "memory.swap.max").write_text("0")
    else:
        memdir = cgroup_dirs(cgroup)["memory"]
        (memdir / "memory.limit_in_bytes").write_text(str(32 << 20))
        swap = memdir / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(32 << 20))
    assert read_stats(cgroup).memory_limit == 32 << 20
    assert read_oom_kills(cgroup) == 0
    proc = _spawn_in(
        cgroup, [sys.executable, "-c", "b = bytearray(64 << 20); b[::4096] = b'x' * (16 << 10)"]
    )
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert read_oom_kills(cgroup) >= 1


def _enable_throttle_accounting(cgroup: str, path: Path) -> None:
    """Kernels since 5.x count v1 blkio bytes only for cgroups with a throttle rule on
    the device: give the test cgroup one too high to matter."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sysdev = Path(f"/sys/dev/block/{dev}")
    if (sysdev / "partition").exists():
        dev = (sysdev.resolve().parent / "dev").read_text().strip()
    try:
        (cgroup_dirs(cgroup)["blkio"] / "blkio.throttle.write_bps_device").write_text(
            f"{dev} {1 << 40}"
        )
    except OSError:
        pytest.skip(f"{path} is not on a block device the blkio controller throttles")


def test_block_io_is_counted(cgroup: str, tmp_path: Path) -> None:
    if cgroup_mode() != "v2":
        _enable_throttle_accounting(cgroup, tmp_path)
    target = tmp_path / "blob"
    proc = _spawn_in(
        cgroup,
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=4", "oflag=direct", "status=none"],
    )
    assert proc.wait(timeout=30) == 0
    stats = read_stats(cgroup)
    assert stats.block_write >= 4 << 20


def test_net_counters_skip_loopback() -> None:
    from lamina.runtime._cgroups import read_net_dev

    rx, tx = read_net_dev(os.getpid())
    assert rx >= 0 and tx >= 0
    # A fresh network namespace has only lo: nothing to count.
    proc = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", "ip link set lo up 2>/dev/null; sleep 5"]
    )
    try:
        time.sleep(0.2)
        subprocess.run(["true"])
        assert read_net_dev(proc.pid) == (0, 0)
    finally:
        proc.kill()
        proc.wait()
    assert read_net_dev(proc.pid) == (0, 0)  # gone: zero, not an error


def test_missing_cgroup_reads_as_zero() -> None:
    path = f"/lamina-test-{secrets.token_hex(4)}"
    assert not cgroup_exists(path)
    stats = read_stats(path)
    assert (stats.cpu_usage_ns, stats.memory_used, stats.pids) == (0, 0, 0)
    assert read_oom_kills(path) == 0
    assert cgroup_procs(path) == []
    remove_cgroup(path)  # nothing to remove is fine


def test_remove_refuses_while_busy_then_removes_children(cgroup: str) -> None:
    child = f"{cgroup}/abc123"
    for d in _join_dirs(child):
        d.mkdir()
    assert leftover_cgroups(cgroup) == ["abc123"]
    proc = _spawn_in(child, ["sleep", "60"])
    _wait_for_procs(child, 1)
    assert cgroup_procs(cgroup) == [proc.pid]  # children's processes count
    with pytest.raises(InUse, match="still has processes"):
        remove_cgroup(cgroup)
    proc.kill()
    proc.wait()
    remove_cgroup(cgroup)
    assert not cgroup_exists(cgroup)
    assert not cgroup_exists(child)
    assert leftover_cgroups(cgroup) == []
    assert all(not d.exists() for d in cgroup_dirs(cgroup).values())


def test_remove_refuses_root() -> None:
    with pytest.raises(ValueError):
        remove_cgroup("/")
