"""HAProxy's two command sockets: the runtime API of the current worker (``stats
socket``: servers, maps) and the master CLI (``-S``: ``show proc``, ``reload``)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from lamina.ingress._model import IngressError

# Admin state bits (HAProxy's SRV_ADMF_*) meaning "in maintenance", for any reason:
# forced by the API, inherited, resolution, DNS. Not CMAINT (0x04): it only records
# that the config said ``disabled`` and stays after ``state ready`` (which clears the
# FMAINT that ``disabled`` also set), while the server takes traffic.
_MAINT_BITS = 0x01 | 0x02 | 0x20 | 0x40
_DRAIN_BITS = 0x08 | 0x10


def command(sock: Path, line: str, timeout: float = 10.0) -> str:
    """Send one command line and return HAProxy's whole answer."""
    if "\n" in line or "\r" in line:
        raise ValueError("one command line only")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(str(sock))
        conn.sendall(line.encode() + b"\n")
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    except OSError as e:
        raise IngressError(f"HAProxy's socket {sock} does not answer: {e.strerror or e}") from e
    finally:
        conn.close()
    return b"".join(chunks).decode(errors="replace")


def answers(sock: Path) -> bool:
    try:
        command(sock, "show info" if sock.name == "admin.sock" else "show proc", timeout=2.0)
    except IngressError:
        return False
    return True


@dataclass(frozen=True)
class LiveServer:
    """A server as the running worker has it."""

    name: str
    address: str
    port: int
    admin_state: int
    operational_state: int

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & _MAINT_BITS)

    @property
    def drain(self) -> bool:
        return bool(self.admin_state & _DRAIN_BITS)

    @property
    def up(self) -> bool:
        """HAProxy's checks have it up (SRV_ST_RUNNING)."""
        return self.operational_state == 2


def servers(sock: Path, backend: str) -> dict[str, LiveServer]:
    """``show servers state`` of one backend, by server name."""
    text = command(sock, f"show servers state {backend}")
    out: dict[str, LiveServer] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 19 or line.startswith("#") or not fields[0].isdigit():
            continue
        # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ...
        # ... srv_fqdn srv_port (index 18)
        out[fields[3]] = LiveServer(
            name=fields[3],
            address=fields[4],
            port=int(fields[18]),
            admin_state=int(fields[6]),
            operational_state=int(fields[5]),
        )
    return out


def checked(sock: Path, line: str, *ok: str) -> str:
    """Run a command that answers nothing, or a line starting with one of ``ok``, on
    success; any other answer is HAProxy refusing it."""
    answer = command(sock, line).strip()
    if answer and not answer.startswith(ok):
        words = line.split()
        raise IngressError(f"HAProxy refused {' '.join(words[:2])}: {answer.splitlines()[0]}")
    return answer


@dataclass(frozen=True)
class Proc:
    """``show proc`` of the master: its pid, its reload counts, the current worker."""

    master: int
    reloads: int
    failed: int
    workers: list[tuple[int, int]]  # (pid, reloads: 0 is the newest)
    old_workers: list[int]  # workers of earlier configurations finishing their connections

    @property
    def current_worker(self) -> int | None:
        newest = [pid for pid, reloads in self.workers if reloads == 0]
        return newest[0] if newest else None


def show_proc(master_sock: Path) -> Proc:
    text = command(master_sock, "show proc")
    master = reloads = failed = 0
    workers: list[tuple[int, int]] = []
    old_workers: list[int] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("# workers"):
            section = "workers"
            continue
        if line.startswith("# "):
            section = line[2:]
            continue
        fields = line.split()
        if not fields or not fields[0].isdigit():
            continue
        if len(fields) > 1 and fields[1] == "master":
            master = int(fields[0])
            reloads = int(fields[2])
            if "[failed:" in line:
                failed = int(line.split("[failed:")[1].split("]")[0])
        elif section == "workers":
            workers.append((int(fields[0]), int(fields[2])))
        elif section == "old workers":
            old_workers.append(int(fields[0]))
    if not master:
        raise IngressError(f"unexpected answer from HAProxy's master: {text.strip()[:200]}")
    return Proc(master, reloads, failed, workers, old_workers)


def stopping(master_sock: Path, worker: int) -> bool:
    """Whether ``worker`` has stopped taking new connections (or is gone)."""
    try:
        info = command(master_sock, f"@!{worker} show info", timeout=2.0)
    except IngressError:
        return True
    return "Stopping: 0" not in info
