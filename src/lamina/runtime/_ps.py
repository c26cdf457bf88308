"""``ps -ef`` rows from ``/proc/PID/stat`` for ``top``: the process backend reads the
host's /proc, the VM backend the guest's; the row is made the same way for both."""

from __future__ import annotations

import time

TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]


def ps_ef_row(
    stat_raw: bytes, cmdline: bytes, user: str, *, boot_time: float, uptime: float, hz: int
) -> list[str]:
    """UID PID PPID C STIME TTY TIME CMD for one process. ``stat_raw`` is its
    /proc/PID/stat, ``boot_time`` the epoch second its kernel booted, ``uptime`` that
    kernel's seconds since boot now, ``hz`` the clock ticks stat counts in."""
    comm = stat_raw[stat_raw.find(b"(") + 1 : stat_raw.rfind(b")")].decode(errors="replace")
    fields = stat_raw[stat_raw.rfind(b")") + 2 :].split()
    pid = stat_raw.split(b" ", 1)[0].decode()
    ppid = int(fields[1])
    tty_nr = int(fields[4])
    cpu_ticks = int(fields[11]) + int(fields[12])
    start = int(fields[19]) / hz
    elapsed = max(uptime - start, 1e-6)
    c = int(cpu_ticks / hz / elapsed * 100)
    started = boot_time + start
    stime = time.strftime("%H:%M" if elapsed < 86400 else "%b%d", time.localtime(started))
    total = cpu_ticks // hz
    cputime = f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"
    tty = "?"
    if tty_nr:
        major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
        tty = f"pts/{minor}" if 136 <= major <= 143 else f"tty{minor}"
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    cmd = " ".join(args) if args else f"[{comm}]"
    return [user, pid, str(ppid), str(c), stime, tty, cputime, cmd]
