"""What every task backend shares, public by name: whether a process is still the
one that was started (pid reuse), the failures of a workload or an exec that could
not start (Docker's 125/126/127), Docker's rules for mount targets and tmpfs
options, environment merging and the command of a container from its image, and
the host's CPU time.

The process backend (``_conmon``, ``_exec``, ``_spec``, ``_cgroups``) and the micro-VM
backend (``lamina.vm``) both use these; neither imports the other's private names.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from lamina.errors import LaminaError, NotFound

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# -- processes ----------------------------------------------------------------------


def _stat_fields(pid: int) -> list[bytes]:
    """Fields of /proc/<pid>/stat after the command name (state first); [] if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return []
    return data[data.rfind(b")") + 2 :].split()


def process_start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot; 0 if gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if len(fields) > 19 else 0


def alive(pid: int, start_time: int) -> bool:
    """True when ``pid`` runs (not a zombie) and is the same process: its start time
    matches ``start_time`` when that is known."""
    if pid <= 0:
        return False
    fields = _stat_fields(pid)
    if len(fields) <= 19 or fields[0] in (b"Z", b"X"):
        return False
    return not start_time or int(fields[19]) == start_time


_CLK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def host_cpu_ns() -> int:
    """Host CPU time in ns summed over all CPUs and states, as Docker's
    system_cpu_usage (the ``cpu`` line of /proc/stat, first 8 fields)."""
    try:
        text = Path("/proc/stat").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("cpu "):
            return sum(int(v) for v in line.split()[1:9]) * _CLK_NS
    return 0


# -- failures to start ------------------------------------------------------------------


class StartFailed(LaminaError):
    """The workload (or an exec) could not start: bad command, mount, user..."""

    def __init__(self, message: str, exit_code: int = 125) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def error_exit_code(text: str) -> int:
    """Docker's exit codes for a process that could not start."""
    low = text.lower()
    if "no such file or directory" in low or "not found" in low:
        return 127
    if "permission denied" in low or "is a directory" in low:
        return 126
    return 125


def exec_exit_code(error: str, command: str = "") -> int:
    """Docker's exit code for an exec whose process never started: 127 when the command
    (``command``, when known, must be the one named) was not found, 126 otherwise:
    found but not executable, or anything else (a bad user or working directory)."""
    low = error.lower()
    named = not command or command.lower() in low
    missing = ("executable file not found", "no such file or directory", "not a directory")
    if named and any(m in low for m in missing):
        return 127
    return 126


def exec_failed(error: str, command: str = "") -> StartFailed:
    """The one error of an exec that could not start, worded once as runc words it."""
    text = error.strip().removeprefix("exec failed: ")
    return StartFailed(f"exec failed: {text}", exit_code=exec_exit_code(text, command))


def not_found(path: str) -> NotFound:
    """A path that is not in the container (``cp``)."""
    return NotFound(f"Could not find the file {path} in container")


# -- the process and its mounts ---------------------------------------------------------


def process_args(
    entrypoint: list[str] | None,
    command: list[str] | None,
    image_entrypoint: list[str] | None,
    image_cmd: list[str] | None,
) -> list[str]:
    """Docker's rules: a user entrypoint (even ``[]``) drops the image's CMD; a user
    command replaces the image's CMD."""
    if entrypoint is not None:
        args = list(entrypoint) + list(command or [])
    else:
        cmd = command if command is not None else image_cmd
        args = list(image_entrypoint or []) + list(cmd or [])
    if not args:
        raise LaminaError("no command specified")
    return args


def merge_env(base: list[str], overrides: Iterable[str]) -> list[str]:
    """Docker's ReplaceOrAppendEnvValues: ``K=V`` replaces K in place or appends;
    a bare ``K`` removes K (the CLI resolves bare names from its own environment
    before they get here)."""
    env: dict[str, str] = {}
    for item in base:
        key, _, _ = item.partition("=")
        env[key] = item
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not key:
            raise LaminaError(f"invalid environment variable: {item!r}")
        if sep:
            env[key] = item
        else:
            env.pop(key, None)
    return list(env.values())


def check_mount_target(target: str) -> str:
    """A mount target, normalised; LaminaError when not absolute or the root."""
    if not target.startswith("/"):
        raise LaminaError(f"invalid mount target {target!r}: it must be an absolute path")
    clean = posixpath.normpath(target)
    if clean == "/":
        raise LaminaError("invalid mount target '/': it cannot be the root of the container")
    return clean


TMPFS_DEFAULTS = ("noexec", "nosuid", "nodev")
# mount flags with an opposite: the last one given wins (Docker's MergeTmpfsOptions)
_FLAG_PAIRS = {
    "exec": "noexec",
    "suid": "nosuid",
    "dev": "nodev",
    "atime": "noatime",
    "diratime": "nodiratime",
    "ro": "rw",
}
_OPPOSITE = {**_FLAG_PAIRS, **{v: k for k, v in _FLAG_PAIRS.items()}}


def merge_mount_options(defaults: Iterable[str], user: Iterable[str]) -> list[str]:
    """Later options win: ``exec`` cancels a default ``noexec``, ``size=`` replaces."""
    out: dict[str, str] = {}
    for opt in (*defaults, *user):
        opt = opt.strip()
        if not opt:
            continue
        key = opt.split("=", 1)[0]
        if key in _OPPOSITE:
            out.pop(_OPPOSITE[key], None)
        out.pop(key, None)
        out[key] = opt
    return list(out.values())


def tmpfs_options(options: Iterable[str], read_only: bool = False) -> list[str]:
    """A tmpfs mount's options: Docker's defaults (noexec, nosuid, nodev) merged with
    the user's."""
    return merge_mount_options(TMPFS_DEFAULTS, [*options, *(["ro"] if read_only else [])])
