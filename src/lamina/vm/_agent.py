"""The guest agent: building it, and the host side of its protocol (docs/VM_AGENT.md).

The agent is ``agent.c`` (package data), compiled on first use with ``gcc -static -Os``
(for a foreign architecture its cross compiler, e.g. ``aarch64-linux-gnu-gcc``: ``_arch``)
into ``<root>/vm/agent/<key>/lamina-agent``, the key hashing the source, the flags, the
architecture and the compiler, and put into the initramfs as ``/init``. Static glibc is
enough: the guest has no other userland.

The host talks to it over a virtio-serial port backed by one end of a socketpair QEMU
inherits. ``AgentConnection`` wraps the host end: non-blocking, with an outgoing buffer,
so that a large stdin never blocks the host while the guest is blocked writing output.
Frames are ``Frame(type, session, payload)``; helpers build EXEC (with ``tty=``: a
pseudo-terminal in the guest), RESIZE and CONFIGURE payloads and decode HELLO and EXIT.
``unread`` puts frames back for the next ``poll``: a VM restored from a snapshot
(``_run``) has its HELLO read before the caller gets the connection, and the caller
must still see HELLO first.
"""

from __future__ import annotations

import enum
import hashlib
import os
import selectors
import shutil
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lamina._cbuild import compile_c
from lamina.errors import LaminaError
from lamina.vm._arch import Arch, get_arch

PROTO_VERSION = 1
HEADER = struct.Struct("!BxxxII")  # type, 3 reserved bytes, session, payload length
MAX_PAYLOAD = 1 << 20
STDIN_CHUNK = 64 * 1024
AGENT_SOURCE = Path(__file__).with_name("agent.c")
CFLAGS = ("-static", "-Os", "-s", "-Wall")
PORT_NAME = "lamina.agent"


class Msg(enum.IntEnum):
    # host -> guest
    PING = 0x01
    EXEC = 0x02
    STDIN = 0x03
    SIGNAL = 0x04
    SHUTDOWN = 0x05
    CONFIGURE = 0x06
    RESIZE = 0x07
    NETWORK = 0x08
    # guest -> host
    HELLO = 0x81
    PONG = 0x82
    STARTED = 0x83
    STDOUT = 0x84
    STDERR = 0x85
    EXIT = 0x86
    ERROR = 0x87


EXEC_STDIN = 1  # EXEC flag: the process reads STDIN frames (else /dev/null)
EXEC_HOST = 2  # EXEC flag: run unchrooted, in the agent's root (the initramfs)
EXEC_TOOL = 4  # EXEC flag: the agent's /bin/busybox, chrooted into the container
EXEC_TTY = 8  # EXEC flag: a pseudo-terminal as stdin/stdout/stderr (output as STDOUT)
_WHERE = {"container": 0, "tool": EXEC_TOOL, "host": EXEC_HOST}


@dataclass(frozen=True)
class Frame:
    type: int
    session: int
    payload: bytes


def frame(type: int, session: int = 0, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise LaminaError(f"agent frame of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(type, session, len(payload)) + payload


def exec_payload(
    argv: Sequence[str],
    env: Sequence[str],
    *,
    cwd: str = "/",
    uid: int = 0,
    gid: int = 0,
    groups: Sequence[int] = (),
    stdin: bool = False,
    where: str = "container",
    tty: bool = False,
    size: tuple[int, int] | None = None,
) -> bytes:
    """EXEC's payload: NUL-terminated fields uid, gid, groups, cwd, flags, argc, argv...,
    envc, env... (no field may contain a NUL). ``where``: "container" (a workload or
    exec), "tool" (the agent's busybox, chrooted into the container: argv[0] names the
    applet) or "host" (unchrooted, in the agent's own root where /newroot and /rw are).
    ``tty``: a pseudo-terminal, ``size`` its (rows, cols) (two more fields after env;
    None or zeros leave it 0x0 until a RESIZE)."""
    if not argv:
        raise LaminaError("no command specified")
    if where not in _WHERE:
        raise LaminaError(f"unknown EXEC place {where!r}")
    flags = (EXEC_STDIN if stdin else 0) | (EXEC_TTY if tty else 0) | _WHERE[where]
    fields = [str(uid), str(gid), ",".join(str(g) for g in groups), cwd]
    fields += [str(flags), str(len(argv)), *argv, str(len(env)), *env]
    if tty:
        rows, cols = size or (0, 0)
        fields += [str(rows), str(cols)]
    for f in fields:
        if "\0" in f:
            raise LaminaError(f"argument or environment value contains a NUL byte: {f!r}")
    return b"".join(f.encode() + b"\0" for f in fields)


def resize_payload(rows: int, cols: int) -> bytes:
    """RESIZE's payload: u16 rows, u16 cols (clamped to what a winsize holds)."""
    return struct.pack("!HH", max(0, min(rows, 0xFFFF)), max(0, min(cols, 0xFFFF)))


MAX_HOSTNAME = 64  # the kernel's HOST_NAME_MAX
SEED_BYTES = 64


def configure_payload(realtime_ns: int, hostname: str, seed: bytes) -> bytes:
    """CONFIGURE's payload: u64 CLOCK_REALTIME ns, u32 hostname length, the hostname,
    then the seed (the rest, at most 512 bytes) for the guest's random number generator."""
    name = hostname.encode()
    if not 0 < len(name) <= MAX_HOSTNAME or b"\0" in name:
        raise LaminaError(f"invalid hostname for the VM: {hostname!r}")
    if len(seed) > 512:
        raise LaminaError("a CONFIGURE seed is at most 512 bytes")
    return struct.pack("!QI", realtime_ns, len(name)) + name + seed


@dataclass(frozen=True)
class Hello:
    """The agent's first message. Times are the guest's CLOCK_BOOTTIME in ns, TSC values
    raw ticks (under TCG: host ticks since the VM started)."""

    version: int
    init_ns: int  # /init started
    modules_ns: int  # modules loaded
    port_ns: int  # control port open
    root_ns: int  # root filesystem mounted
    hello_ns: int
    tsc_init: int
    tsc_hello: int


def parse_hello(payload: bytes) -> Hello:
    if len(payload) < 8:
        raise LaminaError("guest agent sent a malformed HELLO")
    version, count = struct.unpack_from("!II", payload)
    values = list(struct.unpack_from(f"!{count}Q", payload, 8))
    values += [0] * (7 - len(values))
    return Hello(version, *values[:7])


@dataclass(frozen=True)
class ExitStatus:
    signaled: bool
    core_dumped: bool
    code: int  # exit status, or the signal number when signaled
    at_ns: int  # guest CLOCK_BOOTTIME when it was reaped

    @property
    def exit_code(self) -> int:
        """The shell's convention, which Docker follows: 128+N when killed by signal N."""
        return 128 + self.code if self.signaled else self.code


def parse_exit(payload: bytes) -> ExitStatus:
    if len(payload) < 16:
        raise LaminaError("guest agent sent a malformed EXIT")
    signaled, core, code, at = struct.unpack_from("!BBxxIQ", payload)
    return ExitStatus(bool(signaled), bool(core), code, at)


def agent_path(root: Path, arch: Arch | None = None) -> Path:
    """Where ``build_agent`` keeps the agent for today's source, flags, architecture
    and compiler (whether or not it is built yet)."""
    arch = arch or get_arch()
    cc = shutil.which(arch.cc)
    compiler = os.path.realpath(cc) if cc else arch.cc  # gcc -> x86_64-linux-gnu-gcc-12
    ident = f"{' '.join(CFLAGS)}\n{arch.name} {compiler}".encode()
    key = hashlib.sha256(AGENT_SOURCE.read_bytes() + ident).hexdigest()[:16]
    return Path(root) / "vm" / "agent" / key / "lamina-agent"


def build_agent(root: Path, arch: Arch | None = None) -> Path:
    """The compiled agent for ``arch`` (default: the host's), built once per source,
    flags, architecture and compiler (``root``: the lamina root)."""
    arch = arch or get_arch()
    out = agent_path(root, arch)
    if out.is_file():
        return out
    cc = shutil.which(arch.cc)
    if cc is None or not arch.libc_a.exists():
        raise LaminaError(
            f"building the {arch.name} micro-VM guest agent needs {arch.cc} and static glibc "
            f"({arch.cc_hint})"
        )
    compile_c(root, cc, CFLAGS, AGENT_SOURCE, out, "the guest agent")
    return out


class AgentConnection:
    """The host end of the agent channel: queue frames, pump I/O, get frames back."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._out = bytearray()
        self._in = bytearray()
        self._unread: list[Frame] = []
        self.closed = False
        self._sel = selectors.DefaultSelector()
        self._sel.register(sock, selectors.EVENT_READ)

    @property
    def pending(self) -> int:
        """Bytes queued but not yet taken by the other end (for backpressure)."""
        return len(self._out)

    def send(self, type: int, session: int = 0, payload: bytes = b"") -> None:
        self._out += frame(type, session, payload)
        self._flush()

    def send_stdin(self, session: int, data: bytes) -> None:
        """Queue ``data`` for a process's stdin, then its end (an empty STDIN frame)."""
        view = memoryview(data)
        for i in range(0, len(view), STDIN_CHUNK):
            self._out += frame(Msg.STDIN, session, bytes(view[i : i + STDIN_CHUNK]))
        self._out += frame(Msg.STDIN, session)
        self._flush()

    def _flush(self) -> None:
        while self._out and not self.closed:
            try:
                n = self.sock.send(self._out)
            except BlockingIOError:
                break
            except OSError:
                self.closed = True  # QEMU is gone; reads will see EOF
                break
            del self._out[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0)
        self._sel.modify(self.sock, events)

    def unread(self, frames: Sequence[Frame]) -> None:
        """Give ``frames`` back: the next ``poll`` returns them first, without waiting."""
        self._unread[:0] = frames

    def poll(self, timeout: float | None) -> list[Frame]:
        """Wait up to ``timeout`` for I/O; the frames that arrived. At EOF ``closed``
        becomes True and the remaining complete frames are returned."""
        if self._unread:
            timeout = 0
        if self.closed:
            return self._frames()
        for _, events in self._sel.select(timeout):
            if events & selectors.EVENT_WRITE:
                self._flush()
            if events & selectors.EVENT_READ:
                try:
                    data = self.sock.recv(256 * 1024)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.closed = True
                self._in += data
        return self._frames()

    def _frames(self) -> list[Frame]:
        out, self._unread = self._unread, []
        while len(self._in) >= HEADER.size:
            type_, session, length = HEADER.unpack_from(self._in)
            if length > MAX_PAYLOAD:
                raise LaminaError(f"guest agent sent a frame of {length} bytes")
            end = HEADER.size + length
            if len(self._in) < end:
                break
            out.append(Frame(type_, session, bytes(self._in[HEADER.size : end])))
            del self._in[:end]
        return out

    def close(self) -> None:
        self._sel.close()
        self.sock.close()
        self.closed = True
