"""conmon: the per-container monitor that outlives lamina.

``launch`` starts ``conmon`` for a bundle the way podman does. conmon forks
itself into the background (its first process exits at once), runs ``runc
create`` and reports the container's host PID, or runc's error, as one JSON line
on the ``_OCI_SYNCPIPE`` pipe. From then on conmon alone holds the container's
stdio: it writes the k8s-file log, serves the attach socket, takes resize requests
on the ``ctl`` FIFO, and when the container exits writes ``exit/<id>`` (the exit
code, 128+N for signal N) and runs the exit command (the engine's).

Files conmon makes in the bundle: ``attach`` (SOCK_SEQPACKET; packets from
conmon begin with one byte, 2 = stdout and 3 = stderr; bytes sent to it are the
container's stdin; shutdown(SHUT_WR) closes stdin), ``ctl`` and ``winsz`` FIFOs,
``conmon.pid``, ``pidfile`` (container PID), ``ctr.log``, and on an OOM kill
``oom`` (conmon writes that one into its working directory, and ``oom`` and
``exit`` into ``--persist-dir``): conmon runs with the bundle as its working
directory and ``persist/`` in it as its persist dir, so it never writes into the
caller's working directory.

The OCI runtime is ``runc`` unless the container was created with another one
(``OciBinary``: crun or any runc-compatible binary); each runtime keeps its state
under a root of its own inside the lamina root.

The attach socket lives in the bundle (``--full-attach``), whose path may exceed
the 108-byte limit of unix socket addresses, so clients connect through
``/proc/self/fd/<dirfd>/attach``, as podman does.

The log's format, its rotation and reading it are ``_logs``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lamina.errors import LaminaError
from lamina.runtime._logs import LogSettings

# error_exit_code is imported from here, too, by VM supervisors started before the engine.
from lamina.runtime.common import StartFailed, error_exit_code

if TYPE_CHECKING:
    import socket

CONMON = "/usr/bin/conmon"
RUNC = "/usr/sbin/runc"  # the runtime of containers whose row names none (made before crun)
# Where runtimes live when PATH lacks the sbin directories (a non-login root shell).
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")
HYBRID_CRUN = (
    "crun cannot run containers on this host: cgroups are in hybrid mode (v1 controllers "
    "plus a v2 mount), which crun refuses; use --runtime runc"
)

_DEFAULT_LOG = LogSettings()
STDOUT_PIPE = 2
STDERR_PIPE = 3
ATTACH_BUFSIZE = 8192 + 1


@dataclass(frozen=True)
class OciBinary:
    """An OCI runtime binary (runc, crun, ...) and the directory it keeps container
    state in (its ``--root``)."""

    path: str  # absolute
    state_root: Path

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def is_runc(self) -> bool:
        """runc's own state layout (``exec.fifo``, ``state.json``) may be relied on."""
        return self.name == "runc"

    @classmethod
    def at(cls, path: str, lamina_root: Path) -> OciBinary:
        """The runtime at ``path`` with its state under ``lamina_root``: runc keeps
        ``<root>/runc``; any other runtime ``<root>/runtimes/<name>``."""
        name = os.path.basename(path)
        state = lamina_root / "runc" if name == "runc" else lamina_root / "runtimes" / name
        return cls(path, state)


def find_oci_runtime(spec: str) -> str:
    """The absolute path of the OCI runtime ``spec``: a name looked up in PATH (and
    the sbin directories), or a path. Refuses crun on hybrid-cgroup hosts, which crun
    cannot run containers on, before anything is created."""
    spec = spec.strip()
    if not spec:
        raise LaminaError("no OCI runtime given: use --runtime runc, crun or an absolute path")
    name = os.path.basename(spec.rstrip("/"))
    if name == "crun":
        from lamina.runtime._cgroups import cgroup_mode

        if cgroup_mode() == "hybrid":
            raise LaminaError(HYBRID_CRUN)
    if "/" in spec:
        path = os.path.abspath(spec)
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise LaminaError(f"OCI runtime {spec} not found or not executable")
        return path
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    found = shutil.which(spec, path=search)
    if found is None:
        raise LaminaError(
            f"OCI runtime {spec!r} not found in PATH: install it, or give --runtime "
            f"runc, crun or the runtime's absolute path"
        )
    return os.path.abspath(found)


@dataclass(frozen=True)
class Bundle:
    """Paths of one container's bundle directory."""

    dir: Path
    cid: str

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def log(self) -> Path:
        return self.dir / "ctr.log"

    @property
    def exit_dir(self) -> Path:
        return self.dir / "exit"

    @property
    def exit_file(self) -> Path:
        return self.dir / "exit" / self.cid

    @property
    def conmon_pidfile(self) -> Path:
        return self.dir / "conmon.pid"

    @property
    def pidfile(self) -> Path:
        return self.dir / "pidfile"

    @property
    def conmon_err(self) -> Path:
        return self.dir / "conmon.err"

    @property
    def waiter(self) -> Path:
        return self.dir / "waiter"

    @property
    def persist_dir(self) -> Path:
        return self.dir / "persist"

    def runtime_files(self) -> list[Path]:
        """What one run leaves in the bundle, removed before the next run."""
        d = self.dir
        return [
            d / "attach",
            d / "ctl",
            d / "winsz",
            self.conmon_pidfile,
            self.pidfile,
            self.exit_file,
            d / "oom",
            self.persist_dir / "oom",
            self.persist_dir / "exit",
            self.waiter,
            d / "ctr.log.tmp",  # a log reopen conmon did not finish
        ]


def launch(
    bundle: Bundle,
    *,
    name: str,
    runtime: OciBinary,
    tty: bool,
    stdin: bool,
    exit_cmd: list[str],
    log: LogSettings = _DEFAULT_LOG,
    rotator: Path | None = None,
    keep_fds: tuple[int, ...] = (),
) -> int:
    """Start conmon, which runs ``<runtime> create``; returns the container's host PID.
    ``log``: where the output goes (``none``: nowhere but attached clients). A log
    with max-size is cut by conmon (max-file 1) or rotated by the helper ``rotator``
    (``_logrotate``), started before the container runs (see ``_logs``). ``keep_fds``:
    descriptors conmon inherits and holds until it exits (sockets bound to published
    host ports, as podman has conmon keep them; the runtime closes them for the
    container)."""
    bundle.exit_dir.mkdir(exist_ok=True)
    bundle.persist_dir.mkdir(exist_ok=True)
    argv = [
        CONMON,
        "--api-version", "1",
        "-c", bundle.cid,
        "-u", bundle.cid,
        "-r", runtime.path,
        "-b", str(bundle.dir),
        "-p", str(bundle.pidfile),
        "-n", name,
        "--exit-dir", str(bundle.exit_dir),
        "-l", f"k8s-file:{bundle.log}" if log.enabled else "none",
        "--log-level", "error",
        # No sync(2) of every filesystem when the container stops: it cost tens of
        # ms per container here; the log is as durable as Docker's (page cache).
        "--no-sync-log",
        "--runtime-arg", f"--root={runtime.state_root}",
        "--persist-dir", str(bundle.persist_dir),
        "--conmon-pidfile", str(bundle.conmon_pidfile),
        "--socket-dir-path", str(bundle.dir),
        "--full-attach",
        "--exit-command", exit_cmd[0],
    ]  # fmt: skip
    for arg in exit_cmd[1:]:
        argv += ["--exit-command-arg", arg]
    if tty:
        argv.append("-t")
    if stdin:
        argv.append("-i")
        if tty:  # Docker's rule: a terminal's client leaving (a detach) keeps its stdin open
            argv.append("--leave-stdin-open")
    if log.enabled and log.max_size is not None and not log.keeps_rotated:
        argv += ["--log-size-max", str(log.max_size)]
        with contextlib.suppress(FileNotFoundError):
            if bundle.log.stat().st_size >= log.max_size:  # Docker cuts it at the next line
                bundle.log.unlink()  # conmon makes a new one: a follower sees a new file
    pid = _run_conmon(argv, bundle.dir, bundle.conmon_err, runtime.name, keep_fds=keep_fds)
    if rotator is not None and log.keeps_rotated:
        from lamina.runtime import _logrotate

        _logrotate.start(rotator, bundle.log, log, read_pidfile(bundle.conmon_pidfile))
    return pid


def launch_exec(
    *,
    cid: str,
    name: str,
    exec_dir: Path,
    process_file: Path,
    runtime: OciBinary,
) -> int:
    """``exec --detach`` under conmon, which reaps the process when it exits (with
    plain ``runc exec --detach`` it would be orphaned to the host's init). Returns its
    host PID once started; conmon writes ``exec_dir/exit/<cid>`` when it ends."""
    (exec_dir / "exit").mkdir(parents=True, exist_ok=True)
    argv = [
        CONMON,
        "--api-version", "1",
        "-c", cid,
        "-u", exec_dir.name,
        "-r", runtime.path,
        "-b", str(exec_dir),
        "-p", str(exec_dir / "pid"),
        "-n", name,
        "--exit-dir", str(exec_dir / "exit"),
        "-l", "none",
        "--log-level", "error",
        "--runtime-arg", f"--root={runtime.state_root}",
        "--persist-dir", str(exec_dir / "persist"),
        "--socket-dir-path", str(exec_dir),
        "--full-attach",
        "--exec",
        "--exec-process-spec", str(process_file),
    ]  # fmt: skip
    return _run_conmon(argv, exec_dir, exec_dir / "conmon.err", runtime.name, what="exec")


def _run_conmon(
    argv: list[str],
    cwd: Path,
    err_path: Path,
    runtime_name: str,
    what: str = "create",
    keep_fds: tuple[int, ...] = (),
) -> int:
    r, w = os.pipe()
    try:
        env = dict(os.environ)
        env["_OCI_SYNCPIPE"] = str(w)
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                argv,
                pass_fds=(w, *keep_fds),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=cwd,  # conmon writes "oom" into its working directory
                start_new_session=True,
            )
        os.close(w)
        w = -1
        proc.wait()  # the first conmon process exits once its daemon child is forked
        data = _read_all(r)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return _parse_sync(data, err_path, runtime_name, what)


def _read_all(fd: int) -> bytes:
    # conmon writes the create result and, for api v1, closes the pipe only when it
    # exits: stop at the first complete line.
    buf = b""
    while b"\n" not in buf:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    return buf


def _parse_sync(data: bytes, err_path: Path, runtime_name: str, what: str) -> int:
    line = data.split(b"\n", 1)[0].strip()
    if not line:
        detail = ""
        with contextlib.suppress(OSError, IndexError):
            detail = err_path.read_text(errors="replace").strip().splitlines()[-1]
        raise StartFailed(f"conmon failed to start the container: {detail or 'no reply'}")
    try:
        msg = json.loads(line)
        pid = int(msg["data"])
    except (ValueError, KeyError, TypeError):
        raise StartFailed(f"conmon sent an unreadable reply: {line[:200]!r}") from None
    if pid <= 0:
        text = runc_error_text(str(msg.get("message", "")))
        text = text or f"{runtime_name} {what} failed"
        raise StartFailed(text, exit_code=error_exit_code(text))
    return pid


_LOGRUS_MSG = r'msg="((?:[^"\\]|\\.)*)"'  # compiled by re when first used


def runc_error_text(raw: str) -> str:
    """The message of runc's logrus line(s), unescaped and on one line."""
    msgs = []
    for m in re.finditer(_LOGRUS_MSG, raw):
        try:
            msgs.append(json.loads(f'"{m.group(1)}"'))
        except ValueError:
            msgs.append(m.group(1))
    text = "; ".join(msgs) if msgs else raw.strip()
    text = text.replace("\n", " ").strip()
    return re.sub(_RUNTIME_FAILED, "", text, count=1)


# "runc create failed: ", "crun exec failed: ": the runtime's prefix, which says nothing.
_RUNTIME_FAILED = r"^[\w.-]+ (?:create|exec) failed: "


def read_exit_file(bundle: Bundle) -> int | None:
    try:
        text = bundle.exit_file.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None  # conmon is still writing it
    try:
        return int(text)
    except ValueError:
        return None


def read_pidfile(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


# -- attach and resize -----------------------------------------------------------


def connect_attach(bundle: Bundle) -> socket.socket:
    import socket  # not on the detached-run hot path

    dfd = os.open(bundle.dir, os.O_PATH | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(f"/proc/self/fd/{dfd}/attach")
    except OSError as e:
        sock.close()
        raise LaminaError(f"cannot attach to container {bundle.cid[:12]}: {e.strerror}") from None
    finally:
        os.close(dfd)
    return sock


def resize(bundle: Bundle, height: int, width: int) -> None:
    """Ask conmon to resize the container's terminal (type 1 on the ctl FIFO)."""
    try:
        fd = os.open(bundle.dir / "ctl", os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        raise LaminaError(f"cannot resize container {bundle.cid[:12]}: {e.strerror}") from None
    try:
        os.write(fd, f"1 {height} {width}\n".encode())
    finally:
        os.close(fd)
