"""What a lamina root must not keep once its containers are gone, and helpers to stop
and kill a lamina command at a named point (``lamina._hooks``).

``container_traces(root)``: IDs that any container state under the root names
(bundle and overlay directories, runc state). ``leaks(root, ids)``: every trace of
those containers that is left (mounts, directories, runc state, cgroups, conmon
processes, image holds, and of the root's networks: network namespaces, bridges and
veths, firewall rules, aardvark-dns entries and processes, address leases), as
readable lines; empty when the root is clean.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from runtime_fixtures import CLI, lamina_cgroups, overlay_mounts, settle_network, until

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


def _live_processes() -> Iterator[tuple[int, list[bytes]]]:
    """(PID, argv) of every process that is not a zombie."""
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
        if state != b"Z":
            yield int(pid), argv


def conmons(root: Path) -> list[int]:
    """PIDs of conmon processes working for containers of this root."""
    mark = str(root).encode()
    return [
        pid
        for pid, argv in _live_processes()
        if os.path.basename(argv[0]) == b"conmon" and any(mark in a for a in argv)
    ]


def restarters(root: Path, cid: str = "") -> list[int]:
    """PIDs of the restart policy's restarters (``lamina.engine.restarter``) working
    for containers of this root (for container ``cid``)."""
    return [
        pid
        for pid, argv in _live_processes()
        if b"lamina.engine.restarter" in argv
        and str(root).encode() in argv
        and (not cid or cid.encode() in argv)
    ]


def health_runners(root: Path) -> list[int]:
    """PIDs of the root's health runner (``lamina.engine.health_runner``), zombies aside."""
    return [
        pid
        for pid, argv in _live_processes()
        if b"lamina.engine.health_runner" in argv and str(root).encode() in argv
    ]


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


def _networks(root: Path) -> list[tuple[str, str, list[str]]]:
    """(name, bridge, subnets) of every network the root has a record of."""
    import json

    db = root / "containers.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT config FROM networks").fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    nets = [json.loads(r[0]) for r in rows]
    return [(n["name"], n["interface"], [s["subnet"] for s in n["subnets"]]) for n in nets]


def _leases(root: Path) -> list[str]:
    db = root / "containers.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            f"{a} ({c[:12]})"
            for a, c in conn.execute(
                "SELECT address, container_id FROM ip_leases "
                "WHERE container_id NOT IN (SELECT id FROM containers)"
            )
        ]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def aardvarks(root: Path) -> list[int]:
    """PIDs of aardvark-dns processes serving a config dir under ``root``."""
    mark = str(root).encode()
    return [
        pid
        for pid, argv in _live_processes()
        if b"aardvark-dns" in argv[0] and any(mark in a for a in argv)
    ]


def vm_processes(root: Path) -> list[int]:
    """PIDs of VM supervisors and QEMU processes working for this root (a live QEMU
    keeps its network namespace, with its taps and their tc redirects, alive even once
    the namespace's file is gone)."""
    mark = str(root).encode()
    return [
        pid
        for pid, argv in _live_processes()
        if any(mark in a for a in argv)
        and (b"qemu-system" in argv[0] or b"lamina.vm._backend" in argv)
    ]


def network_leaks(root: Path) -> list[str]:
    """What the root's networks leave on the host with no container running: network
    namespaces, bridges (and their veths), iptables rules naming their subnets,
    aardvark-dns entries and processes, address leases."""
    out = [f"netns {n}" for n in sorted(_entries(root / "netns"))]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    rules6 = subprocess.run(["ip6tables-save"], capture_output=True, text=True).stdout
    for name, bridge, subnets in _networks(root):
        out += [f"link {line.split(':')[1].strip()} (network {name})" for line in links.splitlines()
                if f" {bridge}:" in line or f"master {bridge} " in line]  # fmt: skip
        for subnet in subnets:
            out += [f"rule {line} (network {name})" for line in (rules + rules6).splitlines()
                    if subnet in line]  # fmt: skip
    dns_dir = root / "networks" / "netavark" / "aardvark-dns"
    out += [f"aardvark-dns entries {n}" for n in sorted(_entries(dns_dir)) if n != "aardvark.pid"]
    out += [f"aardvark-dns process {pid}" for pid in aardvarks(root)]
    out += [f"lease {lease}" for lease in _leases(root)]
    out += [f"VM process {pid}" for pid in vm_processes(root)]
    return out


def leaks(root: Path, ids: set[str]) -> list[str]:
    """Everything left of containers ``ids`` and of any container under ``root``,
    when the root should have none."""
    settle_network(root)
    out = [f"mount {m}" for m in overlay_mounts(root)]
    for sub in ("containers", "overlay", "runc"):
        out += [f"{sub}/{n}" for n in sorted(_entries(root / sub))]
    out += [f"cgroup {d}" for cid in sorted(ids) for d in lamina_cgroups(cid)]
    out += [f"conmon process {pid}" for pid in conmons(root)]
    out += [f"restarter process {pid}" for pid in restarters(root)]
    out += [f"health runner {pid}" for pid in health_runners(root)]
    out += [f"image hold {h}" for h in container_holds(root)]
    out += network_leaks(root)
    return out


def clear_networks(root: Path) -> None:
    """After a network test: its containers and networks removed, nothing of them left."""
    from runtime_fixtures import lamina_cli, remove_all_containers

    remove_all_containers(root)
    lamina_cli(root, "network", "prune", "-f")
    assert network_leaks(root) == []


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
    return pid_stopped(proc.pid)


def pid_stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (SIGSTOP: at a stop point)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
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
