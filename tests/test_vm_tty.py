"""Terminals and interactive stdin for micro-VM containers, through the CLI under a real
pseudo-terminal: ``run -it``, ``exec -it``, ``run -dit`` then ``start -ai``, the window
size following the caller's terminal, and ``run -i`` piping stdin without a TTY.

Under TCG each boot is about 2 s: one VM serves ``run -it``; one ``run -dit`` VM (its
workload an interactive shell) serves ``exec -it`` and the later attach; one more
checks ``run -i``.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_fixtures import CLI, IMAGE_REF, cli_image_root, lamina_cli, remove_all_containers
from runtime_fixtures import lamina_ok as ok

from lamina.runtime._term import set_window_size

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

IMAGE = IMAGE_REF


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    root = cli_image_root(tmp_path_factory, "vm-tty")
    yield root
    remove_all_containers(root)


class Terminal:
    """``lamina ARGS`` on the slave of a fresh pty (its controlling terminal, ``rows`` x
    ``cols``); the test is the user at the master."""

    def __init__(self, root: Path, *args: str, rows: int = 24, cols: int = 80) -> None:
        argv = [*CLI, "--root", str(root), *args]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child
            set_window_size(0, rows, cols)
            os.execv(argv[0], argv)
        self.out = b""

    def expect(self, pattern: bytes, timeout: float = 90) -> re.Match[bytes]:
        """Read until ``pattern`` (a regex) matches output after the previous match."""
        end = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.out)
            if found:
                self.out = self.out[found.end() :]
                return found
            left = end - time.monotonic()
            assert left > 0, (pattern, self.out)
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:
                    data = b""
                assert data, ("EOF before", pattern, self.out)
                self.out += data

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def resize(self, rows: int, cols: int) -> None:
        set_window_size(self.fd, rows, cols)  # SIGWINCH to lamina, as a terminal emulator

    def exit_code(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            assert time.monotonic() < end, self.out
            with_data, _, _ = select.select([self.fd], [], [], 0.2)
            if with_data:
                try:
                    self.out += os.read(self.fd, 4096)
                except OSError:
                    pass

    def cooked(self) -> bool:
        """Whether lamina put the terminal back the way it found it."""
        lflag = termios.tcgetattr(self.fd)[3]
        return bool(lflag & termios.ICANON and lflag & termios.ECHO)

    def close(self) -> None:
        with_child = True
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            with_child = False
        if with_child:
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_run_it_shell(root: Path) -> None:
    term = Terminal(root, "run", "--rm", "-it", "--isolation", "vm", IMAGE, "sh",
                    rows=31, cols=97)  # fmt: skip
    try:
        term.expect(rb"# ")
        # The size at start came with the workload's EXEC; TERM is Docker's default.
        term.type("stty size; echo $TERM; echo $((6*7)); tty; exit 3\r")
        assert term.expect(rb"\r\n31 97\r\nxterm\r\n42\r\n(/dev/pts/\d+)\r\n")
        assert term.exit_code() == 3
        assert term.cooked()
    finally:
        term.close()
    assert ok(root, "ps", "-a", "-q") == ""  # --rm


@pytest.fixture(scope="module")
def shell(root: Path) -> Iterator[str]:
    """A VM container whose workload is an interactive shell on a terminal, detached."""
    ok(root, "run", "-dit", "--isolation", "vm", "--name", "shell", IMAGE, "sh")
    yield "shell"
    lamina_cli(root, "rm", "-f", "shell")


def test_exec_it_follows_the_window_size(root: Path, shell: str) -> None:
    term = Terminal(root, "exec", "-it", shell, "sh", rows=20, cols=70)
    try:
        term.expect(rb"# ")
        term.type("echo $((6*7)); tty; stty size\r")
        found = term.expect(rb"\r\n42\r\n(/dev/pts/\d+)\r\n20 70\r\n")
        term.expect(rb"# ")
        term.resize(44, 132)
        # SIGWINCH -> RESIZE, queued before the keys typed next: stty sees the new size.
        time.sleep(0.2)
        term.type("stty size; exit 3\r")
        term.expect(rb"\r\n44 132\r\n")
        assert term.exit_code() == 3
        assert term.cooked()
    finally:
        term.close()
    # The workload keeps its own terminal; the exec's went with it.
    left = [n for n in ok(root, "exec", shell, "ls", "/dev/pts").split() if n.isdigit()]
    assert len(left) == 1 and f"/dev/pts/{left[0]}".encode() != found.group(1)


def test_detached_tty_workload_then_start_ai(root: Path, shell: str) -> None:
    term = Terminal(root, "start", "-ai", shell, rows=25, cols=90)
    try:
        term.expect(rb"# ")  # the log from the start: the shell's first prompt
        term.type("stty size; echo attached-$((2*21)); exit 7\r")
        term.expect(rb"\r\n25 90\r\nattached-42\r\n")
        assert term.exit_code() == 7
        assert term.cooked()
    finally:
        term.close()
    # With a TTY the log holds the terminal's stream, as stdout.
    r = lamina_cli(root, "logs", shell)
    assert "attached-42\n" in r.stdout and r.stderr == ""  # (text mode: \r\n read as \n)
    assert ok(root, "wait", shell) == "7\n"


def test_run_i_pipes_stdin_without_a_tty(root: Path) -> None:
    r = lamina_cli(root, "run", "--rm", "-i", "--isolation", "vm", IMAGE, "sh", "-c",
                   "cat; tty; echo done", input=b"hi\nthere\n", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi\nthere\nnot a tty\ndone\n"
