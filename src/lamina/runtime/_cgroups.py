"""Reading and removing the cgroups runc makes for containers (cgroupfs driver).

Contract: runc creates a container's cgroup at ``cgroupsPath`` (``/lamina/<id>``)
in every hierarchy: on cgroup v1 (and hybrid) one directory per mounted
controller, ``/sys/fs/cgroup/<controller>/lamina/<id>``; on v2 the single
``/sys/fs/cgroup/lamina/<id>``. This module never creates or configures cgroups
(runc does); it finds them from ``/proc/self/mountinfo``, reads usage the way
``docker stats`` does, and removes what a dead container left behind.

A cgroup path here is always the path inside the hierarchy (``/lamina/<id>``),
never a filesystem path. Missing files read as zero: a container that just
exited has no usage, which is not an error.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import InUse
from lamina.runtime._types import Stats
from lamina.runtime.common import host_cpu_ns

_UNIFIED = "unified"  # key of the v2 directory in cgroup_dirs() (hybrid and v2)
_CLK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_RMDIR_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class _Hierarchy:
    """One mounted cgroup hierarchy."""

    controllers: tuple[str, ...]  # v1: ("cpu", "cpuacct") or ("name=systemd",); v2: ()
    mount_point: Path
    root: str  # the hierarchy path mounted there ("/" unless in a cgroup namespace)
    v2: bool


@functools.cache
def _hierarchies() -> tuple[_Hierarchy, ...]:
    found: list[_Hierarchy] = []
    seen: set[tuple[str, ...]] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, super_opts = fields[sep + 1], fields[sep + 3]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            v2 = fstype == "cgroup2"
            controllers: tuple[str, ...] = ()
            if not v2:
                controllers = tuple(o for o in super_opts.split(",") if _is_controller(o))
            key = ("<v2>",) if v2 else controllers
            if key in seen:  # the same hierarchy mounted twice: the first one will do
                continue
            seen.add(key)
            found.append(
                _Hierarchy(controllers, Path(_unescape(fields[4])), _unescape(fields[3]), v2)
            )
    return tuple(found)


_V1_NON_CONTROLLER_OPTS = frozenset(
    {"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods"}
)


def _is_controller(option: str) -> bool:
    if option.startswith("name="):
        return True
    return "=" not in option and option not in _V1_NON_CONTROLLER_OPTS  # not release_agent=


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return (
        s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
    )


@functools.cache
def cgroup_mode() -> str:
    """The cgroup layout: "v1", "hybrid" (v1 controllers and a v2 mount) or "v2"."""
    hierarchies = _hierarchies()
    has_v1 = any(not h.v2 and h.controllers and not _named(h) for h in hierarchies)
    has_v2 = any(h.v2 for h in hierarchies)
    if has_v1:
        return "hybrid" if has_v2 else "v1"
    return "v2"


def _named(h: _Hierarchy) -> bool:
    return all(c.startswith("name=") for c in h.controllers)


def _join(h: _Hierarchy, cgroup_path: str) -> Path:
    rel = cgroup_path
    if h.root != "/" and (rel == h.root or rel.startswith(h.root.rstrip("/") + "/")):
        rel = rel[len(h.root) :]
    return h.mount_point / rel.lstrip("/")


def cgroup_dirs(cgroup_path: str) -> dict[str, Path]:
    """Controller name -> directory of ``cgroup_path`` in that controller's hierarchy.

    v1 controllers that share a hierarchy (``cpu,cpuacct``) map to the same directory;
    named hierarchies appear as ``name=systemd``. The v2 directory is under the key
    ``"unified"``; on pure v2 every enabled controller maps to it as well. The
    directories need not exist.
    """
    dirs: dict[str, Path] = {}
    for h in _hierarchies():
        path = _join(h, cgroup_path)
        if h.v2:
            dirs[_UNIFIED] = path
            if cgroup_mode() == "v2":
                for c in _read(h.mount_point / "cgroup.controllers").split():
                    dirs.setdefault(c, path)
        else:
            for c in h.controllers:
                dirs.setdefault(c, path)
    return dirs


def _distinct_dirs(cgroup_path: str) -> list[Path]:
    out: list[Path] = []
    for d in cgroup_dirs(cgroup_path).values():
        if d not in out:
            out.append(d)
    return out


# -- small readers -----------------------------------------------------------


def _read(path: Path) -> str:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, OSError):
        return ""


def _read_int(path: Path) -> int | None:
    text = _read(path).strip()
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed file (memory.stat, cpu.stat, memory.events): ``key value`` lines."""
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def host_memory() -> int:
    """Total host memory in bytes (MemTotal)."""
    for line in _read(Path("/proc/meminfo")).splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def online_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return os.cpu_count() or 1


# -- stats -------------------------------------------------------------------


def _cpu_usage_ns(dirs: dict[str, Path], v2: bool) -> int:
    if v2:
        return _keyed(dirs[_UNIFIED] / "cpu.stat").get("usage_usec", 0) * 1000
    if "cpuacct" in dirs:
        return _read_int(dirs["cpuacct"] / "cpuacct.usage") or 0
    return 0


def _memory(dirs: dict[str, Path], v2: bool) -> tuple[int, int]:
    """(used, limit) as docker stats shows them: page cache that can be dropped
    (inactive files) is not "used"; an unlimited cgroup shows the host's memory."""
    host = host_memory()
    if v2:
        d = dirs[_UNIFIED]
        usage = _read_int(d / "memory.current") or 0
        inactive = _keyed(d / "memory.stat").get("inactive_file", 0)
        limit = _read_int(d / "memory.max")
    elif "memory" in dirs:
        d = dirs["memory"]
        usage = _read_int(d / "memory.usage_in_bytes") or 0
        mstat = _keyed(d / "memory.stat")
        inactive = mstat.get("total_inactive_file", mstat.get("inactive_file", 0))
        limit = _read_int(d / "memory.limit_in_bytes")
    else:
        return 0, host
    used = usage - inactive if inactive < usage else usage
    if limit is None or (host and limit > host):
        limit = host
    return used, limit


def _pids(dirs: dict[str, Path], v2: bool) -> int:
    d = dirs.get(_UNIFIED) if v2 else dirs.get("pids")
    current = _read_int(d / "pids.current") if d is not None else None
    if current is not None:
        return current
    # No pids controller: count the threads, which is what pids.current counts.
    name = "cgroup.threads" if v2 else "tasks"
    return len(_read(_procs_dir(dirs, v2) / name).split())


def _blkio(dirs: dict[str, Path], v2: bool) -> tuple[int, int]:
    if v2:
        read = write = 0
        for line in _read(dirs[_UNIFIED] / "io.stat").splitlines():
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                if key == "rbytes":
                    read += int(value)
                elif key == "wbytes":
                    write += int(value)
        return read, write
    d = dirs.get("blkio")
    if d is None:
        return 0, 0
    # The throttle files count every bio; on blk-mq kernels the CFQ files are gone and
    # BFQ's exist only under that scheduler. Take the first file that saw any IO.
    for name in (
        "blkio.throttle.io_service_bytes_recursive",
        "blkio.throttle.io_service_bytes",
        "blkio.bfq.io_service_bytes_recursive",
        "blkio.io_service_bytes_recursive",
    ):
        read = write = 0
        for line in _read(d / name).splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue  # the closing "Total N" line
            if parts[1] == "Read":
                read += int(parts[2])
            elif parts[1] == "Write":
                write += int(parts[2])
        if read or write:
            return read, write
    return 0, 0


def read_net_dev(pid: int) -> tuple[int, int]:
    """(rx, tx) bytes over every interface but ``lo`` in the network namespace of ``pid``."""
    rx = tx = 0
    for line in _read(Path(f"/proc/{pid}/net/dev")).splitlines()[2:]:
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            continue
        values = counters.split()
        if len(values) >= 9:
            rx += int(values[0])
            tx += int(values[8])
    return rx, tx


def read_stats(cgroup_path: str, *, pid: int | None = None, previous: Stats | None = None) -> Stats:
    """One usage sample of a container's cgroup.

    ``cpu_percent`` is Docker's: the container's CPU time over the host's CPU time
    since ``previous`` (a sample from this function), times the number of CPUs; 0
    without a previous sample. Network counters need ``pid`` (any process in the
    container's network namespace).
    """
    v2 = cgroup_mode() == "v2"
    dirs = cgroup_dirs(cgroup_path)
    now = time.time()
    host_now = host_cpu_ns()
    stats = Stats(timestamp=now)
    stats.cpu_usage_ns = _cpu_usage_ns(dirs, v2)
    stats.memory_used, stats.memory_limit = _memory(dirs, v2)
    stats.pids = _pids(dirs, v2)
    stats.block_read, stats.block_write = _blkio(dirs, v2)
    if pid:
        stats.net_rx, stats.net_tx = read_net_dev(pid)
    # Carried on the sample so that the next one can compute a delta (Stats has no
    # field for it; a plain dataclass instance takes the attribute).
    vars(stats)["system_cpu_ns"] = host_now
    if previous is not None:
        stats.cpu_percent = _cpu_percent(stats, previous, host_now)
    return stats


def _cpu_percent(now: Stats, previous: Stats, host_now: int) -> float:
    cpu_delta = now.cpu_usage_ns - previous.cpu_usage_ns
    prev_host = int(getattr(previous, "system_cpu_ns", 0) or 0)
    ncpu = online_cpus()
    if prev_host:
        system_delta = host_now - prev_host
    else:  # a sample from elsewhere: the host's CPU time is wall time on every CPU
        system_delta = int((now.timestamp - previous.timestamp) * 1e9 * ncpu)
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return cpu_delta / system_delta * ncpu * 100.0


def read_oom_kills(cgroup_path: str) -> int:
    """How many processes the kernel's OOM killer killed in this cgroup (0 if unknown)."""
    dirs = cgroup_dirs(cgroup_path)
    if cgroup_mode() == "v2":
        return _keyed(dirs[_UNIFIED] / "memory.events").get("oom_kill", 0)
    if "memory" not in dirs:
        return 0
    # oom_kill appeared in memory.oom_control with Linux 4.13; older kernels report
    # nothing, and memory.failcnt (limit hits, reclaimed or not) is no substitute.
    return _keyed(dirs["memory"] / "memory.oom_control").get("oom_kill", 0)


def _procs_dir(dirs: dict[str, Path], v2: bool) -> Path:
    if v2:
        return dirs[_UNIFIED]
    for c in ("pids", "memory", "cpu", "freezer", "name=systemd"):
        if c in dirs:
            return dirs[c]
    return next(iter(dirs.values()), Path("/nonexistent"))


def cgroup_procs(cgroup_path: str) -> list[int]:
    """PIDs (host namespace) of the processes in the cgroup and its children, sorted."""
    base = _procs_dir(cgroup_dirs(cgroup_path), cgroup_mode() == "v2")
    pids: set[int] = set()
    for dirpath, _dirs, _files in os.walk(base):
        for value in _read(Path(dirpath) / "cgroup.procs").split():
            with contextlib.suppress(ValueError):
                pids.add(int(value))
    return sorted(pids)


def cgroup_exists(cgroup_path: str) -> bool:
    return any(d.is_dir() for d in _distinct_dirs(cgroup_path))


def remove_cgroup(cgroup_path: str) -> None:
    """rmdir the cgroup in every hierarchy, children first; missing ones are fine.

    A cgroup whose last process is still exiting refuses rmdir with EBUSY for a few
    milliseconds, so that is retried briefly; still busy after that raises InUse.
    """
    if cgroup_path.strip("/") == "":
        raise ValueError("refusing to remove the root cgroup")
    deadline = time.monotonic() + _RMDIR_RETRY_SECONDS
    for base in _distinct_dirs(cgroup_path):
        if not base.is_dir():
            continue
        children = [Path(p) for p, _d, _f in os.walk(base, topdown=False)]
        for d in children:
            _rmdir(d, deadline, cgroup_path)


def _rmdir(d: Path, deadline: float, cgroup_path: str) -> None:
    delay = 0.005
    while True:
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                if e.errno == errno.EBUSY:
                    raise InUse(f"cgroup {cgroup_path} still has processes in {d}") from None
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def leftover_cgroups(parent: str = "/lamina") -> list[str]:
    """Names (container IDs) of the cgroups under ``parent`` in any hierarchy, sorted."""
    names: set[str] = set()
    for base in _distinct_dirs(parent):
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            continue
        names.update(e.name for e in entries if e.is_dir(follow_symlinks=False))
    return sorted(names)


def thaw(cgroup_path: str) -> None:
    """Unfreeze a frozen (paused) cgroup: its processes run again, and so receive
    what was sent to them. For when the OCI runtime cannot resume the container."""
    dirs = cgroup_dirs(cgroup_path)
    if cgroup_mode() == "v2":
        targets = [(dirs[_UNIFIED] / "cgroup.freeze", "0")]
    else:
        targets = [(dirs["freezer"] / "freezer.state", "THAWED")] if "freezer" in dirs else []
    for path, value in targets:
        with contextlib.suppress(OSError):
            path.write_text(value)


def kill_cgroup(cgroup_path: str, timeout: float = 5.0) -> int:
    """SIGKILL every process in the cgroup (thawed first, or SIGKILL would wait for a
    thaw) and wait up to ``timeout`` seconds until they are gone; returns how many
    were killed."""
    import signal

    thaw(cgroup_path)
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_procs(cgroup_path)
        if not pids:
            return len(killed)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        if time.monotonic() >= deadline:
            return len(killed)
        time.sleep(0.01)
