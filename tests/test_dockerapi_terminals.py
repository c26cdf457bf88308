"""The docker CLI's terminals under a real pty: ``run -it``, ``exec -it``, ``attach``
with its detach keys, the terminal's size and its resize seen inside."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time
from collections.abc import Iterator

import pytest
from dockerapi_fixtures import DockerEndpoint, docker_endpoint
from runtime_fixtures import IMAGE_REF, cli_image_root, until


class Terminal:
    """The docker CLI run on a pty of ours, as a user's terminal runs it."""

    def __init__(self, ep: DockerEndpoint, *args: str, rows: int = 30, cols: int = 101) -> None:
        env = ep.env()
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the docker CLI with the pty as its terminal
            os.execvpe("docker", ["docker", *args], env)
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
                except OSError:  # EIO: the CLI has exited
                    data = b""
                assert data, f"{needle!r} not seen before the end; got {self.seen!r}"
                self.seen += data
        at = self.seen.index(needle) + len(needle)
        got, self.seen = self.seen[:at], self.seen[at:]
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


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEndpoint]:
    root = cli_image_root(tmp_path_factory, "dockerapi-terminals")
    with docker_endpoint(root) as endpoint:
        yield endpoint


def _size_shown(term: Terminal, rows: int, cols: int) -> None:
    """``stty size`` inside shows the pty's size (retyped until a resize has arrived)."""
    want = f"{rows} {cols}\r\n".encode()
    for _ in range(50):
        term.type(b"stty size; echo =done\r")
        shown = term.expect(b"\r\n=done\r\n")
        if want in shown:
            return
    raise AssertionError(f"stty size never showed {want!r}")


def test_run_it_detach_and_attach(ep: DockerEndpoint) -> None:
    name = "term-run"
    term = Terminal(ep, "run", "-it", "--name", name, IMAGE_REF, "sh")
    again: Terminal | None = None
    try:
        term.expect(b"# ")
        term.type(b"echo hel''lo\r")
        term.expect(b"\r\nhello\r\n")  # the command's output, not the echo of the line
        _size_shown(term, 30, 101)
        term.resize(40, 120)
        _size_shown(term, 40, 120)
        attached = ep.daemon.threads()  # counted here: the daemon's own threads (its
        # deployment controller's among them) may have started since the first count
        term.type(b"\x10\x11")  # Ctrl-P Ctrl-Q: detach; the container goes on
        assert term.wait() == 0
        assert ep.docker_ok("inspect", "-f", "{{.State.Status}}", name).strip() == "running"
        until(lambda: ep.daemon.threads() < attached)  # its relay ended with the client

        again = Terminal(ep, "attach", name, rows=25, cols=90)
        _size_shown(again, 25, 90)  # typing reaches it: its stdin stayed open
        again.type(b"exit 3\r")
        assert again.wait() == 3
        assert ep.docker_ok("inspect", "-f", "{{.State.ExitCode}}", name).strip() == "3"
    finally:
        term.close()
        if again is not None:
            again.close()
        ep.docker("rm", "-f", name)


def test_exec_it(ep: DockerEndpoint) -> None:
    name = "term-exec"
    ep.docker_ok("run", "-d", "--name", name, IMAGE_REF, "sleep", "300")
    term = Terminal(ep, "exec", "-it", name, "sh")
    try:
        term.expect(b"# ")
        term.type(b"echo hel''lo\r")
        shown = term.expect(b"hello\r\n")
        assert b"\r\r\n" not in shown  # one terminal's line endings, not two
        _size_shown(term, 30, 101)
        term.resize(40, 120)
        _size_shown(term, 40, 120)
        term.type(b"exit 4\r")
        assert term.wait() == 4
    finally:
        term.close()
        ep.docker("rm", "-f", name)
