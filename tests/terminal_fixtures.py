"""A command run on a pty of ours, as a user's terminal runs it: what it prints is read
with ``expect``, keys are typed with ``type``, resizes signal it as a terminal
emulator's do. Used for the docker CLI (test_dockerapi_terminals) and lamina's own
(test_detach_keys)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time

from runtime_fixtures import until


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str], *, rows: int = 30,
                 cols: int = 101) -> None:  # fmt: skip
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the command with the pty as its terminal
            os.execvpe(argv[0], argv, env)
        self.resize(rows, cols, signal_it=False)
        self.seen = b""
        self.code: int | None = None

    def resize(self, rows: int, cols: int, *, signal_it: bool = True) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        if signal_it:  # what the kernel does for a terminal emulator's resize
            os.kill(self.pid, signal.SIGWINCH)

    def type(self, text: bytes) -> None:
        os.write(self.fd, text)

    def expect(self, needle: bytes, timeout: float = 30) -> bytes:
        """Read until ``needle`` has been seen since the last expect; what came."""
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} not seen; got {self.seen!r}"
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the command has exited
                    data = b""
                assert data, f"{needle!r} not seen before the end; got {self.seen!r}"
                self.seen += data
        at = self.seen.index(needle) + len(needle)
        got, self.seen = self.seen[:at], self.seen[at:]
        return got

    def retype(self, text: bytes, needle: bytes, tries: int = 30) -> bytes:
        """Type ``text`` until ``needle`` comes back (each try waits a second): input
        typed before the command made its terminal raw is dropped (TCSAFLUSH)."""
        for _ in range(tries):
            self.type(text)
            try:
                return self.expect(needle, timeout=1)
            except AssertionError:
                continue
        raise AssertionError(f"{needle!r} not seen; got {self.seen!r}")

    def rest(self, timeout: float = 30) -> bytes:
        """What it prints until its terminal closes (every holder of it has exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: closed
                    break
                if not data:
                    break
                self.seen += data
        else:
            raise AssertionError(f"the terminal stayed open; got {self.seen!r}")
        got, self.seen = self.seen, b""
        return got

    def exited(self) -> bool:
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code is not None

    def wait(self, timeout: float = 30) -> int:
        until(self.exited, timeout)
        os.close(self.fd)
        assert self.code is not None
        return self.code

    def close(self) -> None:
        if not self.exited():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            os.close(self.fd)
