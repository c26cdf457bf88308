"""What a lamina root must not keep once its containers are gone, and helpers to stop
and kill a lamina command at a named point (``lamina._hooks``).

``container_traces(root)``: IDs that any container state under the root names
(bundle and overlay directories, runc state). ``leaks(root, ids)``: every trace of
those containers that is left (mounts, directories, runc state, cgroups, conmon
processes, image holds), as readable lines; empty when the root is clean.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from runtime_fixtures import CLI, lamina_cgroups, overlay_mounts, until

from lamina.image import LocalImages


def zombie(pid: int) -> bool:
    """Whether ``pid`` is a zombie or gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _entries(d: Path) -> set[str]:
    try:
        return set(os.listdir(d))
    except FileNotFoundError:
        return set()


def container_traces(root: Path) -> set[str]:
    """Container IDs named by anything under the root's container directories."""
    names = _entries(root / "containers") | _entries(root / "overlay") | _entries(root / "runc")
    return {n for n in names if len(n) == 64}


def conmons(root: Path) -> list[int]:
    """PIDs of conmon processes working for containers of this root."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            os.path.basename(argv[0]) == b"conmon"
            and state != b"Z"
            and any(str(root).encode() in a for a in argv)
        ):
            found.append(int(pid))
    return found


def health_runners(root: Path) -> list[int]:
    """PIDs of the root's health runner (``lamina.engine.health_runner``), zombies aside."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        runner = b"lamina.engine.health_runner" in argv and str(root).encode() in argv
        if runner and not zombie(int(pid)):
            found.append(int(pid))
    return found


def container_holds(root: Path) -> list[str]:
    """Image holds of containers ("container:<id>")."""
    local = LocalImages.open(root)
    try:
        return [
            h
            for rec in local.images.list()
            for h in local.images.holders(rec.digest)
            if h.startswith("container:")
        ]
    finally:
        local.close()


def leaks(root: Path, ids: set[str]) -> list[str]:
    """Everything left of containers ``ids`` and of any container under ``root``,
    when the root should have none."""
    out = [f"mount {m}" for m in overlay_mounts(root)]
    for sub in ("containers", "overlay", "runc"):
        out += [f"{sub}/{n}" for n in sorted(_entries(root / sub))]
    out += [f"cgroup {d}" for cid in sorted(ids) for d in lamina_cgroups(cid)]
    out += [f"conmon process {pid}" for pid in conmons(root)]
    out += [f"health runner {pid}" for pid in health_runners(root)]
    out += [f"image hold {h}" for h in container_holds(root)]
    return out


def assert_clean(root: Path, ids: set[str]) -> None:
    """No trace of any container is left (waits briefly for exiting monitors)."""
    deadline = time.monotonic() + 20
    while (found := leaks(root, ids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert found == []


# -- stopping a command at a point ----------------------------------------------------


def start_stopped(root: Path, point: str, *args: str) -> subprocess.Popen[bytes]:
    """``lamina --root ROOT ARGS`` that stops itself (SIGSTOP) at ``point``; returns
    once it is stopped there."""
    env = {**os.environ, "LAMINA_TEST_STOP_AT": point}
    proc = subprocess.Popen(
        [*CLI, "--root", str(root), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    until(lambda: _stopped(proc), 30)
    return proc


def _stopped(proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        _out, err = proc.communicate()
        raise AssertionError(f"exited before the stop point: {proc.returncode} {err!r}")
    try:
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"T"
    except OSError:
        return False


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a (stopped) lamina command and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def resume(proc: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[str]:
    """Let a stopped command go on; its result."""
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
