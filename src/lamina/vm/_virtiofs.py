"""Host directories in micro-VMs over virtio-fs: one QEMU ``virtiofsd`` per directory.

Lifecycle, driven by ``start_vm`` (``_run``):

1. ``start_daemons(shared, run_dir)``, before QEMU starts: for each directory lamina
   makes the vhost-user socket itself. A listening socket is bound in the VM's run dir,
   lamina connects to it at once and unlinks the name: only QEMU, which inherits the
   connected end (``-chardev socket,fd=N``), can ever talk to that daemon, and no
   socket path length limit applies. ``virtiofsd`` gets the listening socket
   (``--fd``) and accepts that one connection; QEMU's vhost-user handshake waits in the
   socket until it does, so nothing polls for the daemon to be ready.
2. QEMU runs with one ``vhost-user-fs-device`` per daemon (``_qemu.VirtiofsShare``);
   the agent mounts each tag in the container (``lamina.fs=``, docs/VM_AGENT.md).
3. ``stop_daemons`` (``MicroVm.close``, after QEMU is killed) kills and reaps them.

No daemon outlives its VM: a ``virtiofsd`` exits by itself when QEMU's end of its
socket closes (QEMU exited or was killed), and each runs with a parent-death signal
(``setpriv --pdeathsig KILL``), so it dies with the process (the thread, as prctl(2)
says) that started it, e.g. a supervisor killed before QEMU ever connected.

The daemon: C ``virtiofsd`` of QEMU 7.2 (``/usr/lib/qemu/virtiofsd``, package
``qemu-system-common``), run as root with its default sandbox (new mount, PID and
network namespaces, ``pivot_root`` into the directory) and its always-on seccomp
filter. It has no read-only option, so a read-only share is served from a read-only
bind mount of the directory made in a private mount namespace (``unshare``) that only
the daemon sees: the host refuses writes, whatever the guest does. Extended attributes:
``user.*`` pass, file capabilities are kept as ``user.lamina.security.capability``, the
rest is refused (a root guest must not set ``trusted.*`` or ``security.*`` on host
files). Caching is virtiofsd's ``auto``: the guest writes through at once; the
guest sees the host's changes within a second (attribute and entry timeouts).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import LaminaError
from lamina.vm._config import SharedDir

# The C daemon of QEMU <= 8.0; the Rust one that replaces it takes other options.
VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
VIRTIOFSD_PACKAGE = "qemu-system-common"
# user.* xattrs pass unchanged; file capabilities (which virtiofsd insists on mapping)
# are kept on the host as user.lamina.security.capability; every other namespace
# (trusted.*, security.*, system.*) is refused both ways.
XATTR_MAP = ":prefix:all:security.capability:user.lamina.::ok:all:user.:::bad:all:::"
# The read-only share: a private mount namespace where the directory is bound onto
# itself read-only, then virtiofsd (argv after the directory) replaces the shell.
_READ_ONLY = 'mount --bind -- "$0" "$0" && mount -o remount,bind,ro -- "$0" && exec "$@"'


@dataclass
class VirtiofsDaemon:
    """A running ``virtiofsd`` for one shared directory."""

    tag: str
    source: Path
    read_only: bool
    proc: subprocess.Popen[bytes]
    qemu_fd: int  # the connected end of its socket, for QEMU's chardev (fd=)


def virtiofsd_binary() -> Path:
    if os.access(VIRTIOFSD, os.X_OK):
        return VIRTIOFSD
    raise LaminaError(
        f"sharing directories with micro-VMs needs virtiofsd (apt-get install {VIRTIOFSD_PACKAGE})"
    )


def check_shareable(path: Path) -> None:
    """Raise unless virtiofsd can serve ``path``: an existing directory whose name
    fits in its comma-separated options."""
    if "," in str(path):
        raise LaminaError(f"cannot share {path} with a micro-VM: its path has a ','")
    if not path.is_dir():
        raise LaminaError(f"cannot share {path} with a micro-VM: it is not a directory")


def daemon_command(binary: Path, share: SharedDir, listen_fd: int) -> list[str]:
    """The command line of the daemon serving ``share`` on the inherited ``listen_fd``."""
    options = ",".join(
        [
            f"source={share.path}",
            "cache=auto",
            "sandbox=namespace",
            f"xattrmap={XATTR_MAP}",
            "log_level=err",
        ]
    )
    cmd = [str(binary), f"--fd={listen_fd}", "-o", options]
    if share.read_only:
        cmd = ["unshare", "--mount", "--propagation", "private", "--",
               "sh", "-c", _READ_ONLY, str(share.path), *cmd]  # fmt: skip
    return ["setpriv", "--pdeathsig", "KILL", "--", *cmd]


def start_daemons(
    shared: Sequence[SharedDir], run_dir: Path, stderr: Path | None = None
) -> list[VirtiofsDaemon]:
    """One daemon per directory of ``shared``; their errors go to ``stderr`` (a file,
    appended; None: lamina's own stderr). On failure, those already started are
    stopped."""
    if not shared:
        return []
    if os.geteuid() != 0:
        raise LaminaError("sharing directories with micro-VMs needs root (virtiofsd's sandbox)")
    binary = virtiofsd_binary()
    for share in shared:
        check_shareable(share.path)
    daemons: list[VirtiofsDaemon] = []
    try:
        for share in shared:
            daemons.append(_start(binary, share, run_dir, stderr))
    except BaseException:
        stop_daemons(daemons)
        raise
    return daemons


def _start(binary: Path, share: SharedDir, run_dir: Path, stderr: Path | None) -> VirtiofsDaemon:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"fs-{secrets.token_hex(4)}.sock"
    dir_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Through /proc/self/fd: a socket address holds 107 bytes, the run dir may not.
        address = f"/proc/self/fd/{dir_fd}/{name}"
        listener.bind(address)
        listener.listen(1)
        client.connect(address)
        os.unlink(name, dir_fd=dir_fd)  # nobody else can connect now
        cmd = daemon_command(binary, share, listener.fileno())
        log = open(stderr, "ab") if stderr is not None else None  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,  # None: lamina's own
                pass_fds=(listener.fileno(),),
                cwd="/",
                start_new_session=True,  # a ^C to lamina must not reach it behind QEMU's back
            )
        finally:
            if log is not None:
                log.close()
    except OSError as e:
        client.close()
        raise LaminaError(f"cannot start virtiofsd for {share.path}: {e.strerror or e}") from None
    finally:
        os.close(dir_fd)
        listener.close()  # the daemon holds its own copy
    return VirtiofsDaemon(share.tag, share.path, share.read_only, proc, client.detach())


def close_qemu_ends(daemons: Sequence[VirtiofsDaemon]) -> None:
    """Close lamina's copies of the sockets QEMU inherited (once QEMU has started)."""
    for d in daemons:
        if d.qemu_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(d.qemu_fd)
            d.qemu_fd = -1


def stop_daemons(daemons: Sequence[VirtiofsDaemon], timeout: float = 2.0) -> None:
    """Kill and reap every daemon. The guest's writes are already on the host: with
    ``cache=auto`` and no writeback, virtiofsd answers a write once it is done."""
    close_qemu_ends(daemons)
    for d in daemons:
        if d.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.proc.pid, signal.SIGKILL)  # its session: the sandbox child too
    deadline = time.monotonic() + timeout
    for d in daemons:
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.proc.wait(max(0.0, deadline - time.monotonic()))
