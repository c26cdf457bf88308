"""``lamina exec`` streamed, in-process and through the daemon (``both_modes``): output
as it comes, stdin with ``-i``, a terminal with ``-t`` (and its size followed), the
exec's exit code as the CLI's; a client that goes away ends its exec and nothing
else (the daemon keeps no process or descriptor of it).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    RemoteMode,
    cli_image_root,
    lamina_cli,
    remove_all_containers,
    until,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.both_modes]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "exec-streams")


@pytest.fixture(scope="module")
def box(image_root: Path) -> Iterator[tuple[Path, str]]:
    """A running container for the module's execs."""
    r = lamina_cli(
        image_root, "run", "-d", "--network", "none", "--name", "box", IMAGE_REF, "sleep", "1000"
    )
    assert r.returncode == 0, r.stderr
    yield image_root, r.stdout.strip()
    remove_all_containers(image_root)


def cli_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    if RemoteMode.on:
        env["LAMINA_HOST"] = RemoteMode.host(root)
    return env


def popen_exec(
    root: Path, *args: str, stdin: int | None = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CLI, "--root", str(root), "exec", *args], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(root))  # fmt: skip


def read_line(stream: object, timeout: float = 20) -> bytes:
    fd = stream.fileno()  # type: ignore[attr-defined]
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, "no output in time"
    return stream.readline()  # type: ignore[attr-defined, no-any-return]


def test_output_comes_as_it_is_written(box: tuple[Path, str]) -> None:
    root, _ = box
    lamina_cli(root, "exec", "box", "rm", "-f", "/tmp/go")
    proc = popen_exec(root, "box", "sh", "-c",
                      "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second >&2; "
                      "exit 7")  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        # "first" arrives while the exec still waits (not at its end).
        assert read_line(proc.stdout) == b"first\n"
        assert proc.poll() is None
        assert lamina_cli(root, "exec", "box", "touch", "/tmp/go").returncode == 0
        assert proc.wait(30) == 7
        assert proc.stderr.read() == b"second\n"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stdin_with_i(box: tuple[Path, str]) -> None:
    root, _ = box
    r = lamina_cli(root, "exec", "-i", "box", "cat", input=b"piped\nlines\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "piped\nlines\n", "")
    r = lamina_cli(root, "exec", "-i", "box", "sh", "-c", "read a; echo got $a >&2; exit 3",
                   input=b"word\n")  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (3, "", "got word\n")
    # Without -i the exec's stdin is empty, whatever ours holds.
    r = lamina_cli(root, "exec", "box", "cat", input=b"not for it\n")
    assert (r.returncode, r.stdout) == (0, "")


def test_a_command_that_cannot_run(box: tuple[Path, str]) -> None:
    root, _ = box
    for flags, code in (([], 127), (["-i"], 127), (["-t"], 127)):
        r = lamina_cli(root, "exec", *flags, "box", "/no/such/tool", input=b"")
        assert r.returncode == code, (flags, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert (
            len(lines) == 1
            and lines[0].startswith("lamina: error: ")
            and "/no/such/tool" in lines[0]
        )


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_a_terminal_with_it_follows_its_size(box: tuple[Path, str]) -> None:
    root, _ = box
    argv = [*CLI, "--root", str(root), "exec", "-it", "box", "sh"]
    env = cli_env(root)
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(argv[0], argv, env)
    _set_size(fd, 30, 100)
    out = b""

    def read_until(marker: bytes, timeout: float = 20) -> bool:
        nonlocal out
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:
                return False
            if not data:
                return False
            out += data
            if marker in out:
                return True
        return False

    try:
        assert read_until(b"# "), out
        os.write(fd, b"echo $((6*7)); stty size\n")
        assert read_until(b"30 100"), out
        assert b"42\r" in out  # "\r\r\n" while the client has yet to make its tty raw
        _set_size(fd, 40, 120)  # SIGWINCH to the CLI, which passes it on
        time.sleep(0)  # the resize is polled below, not waited for
        deadline = time.monotonic() + 20
        while b"40 120" not in out and time.monotonic() < deadline:
            os.write(fd, b"stty size\n")
            read_until(b"\n# ", timeout=2)
        assert b"40 120" in out, out
        os.write(fd, b"exit 5\n")
        read_until(b"\0", timeout=5)  # to EOF
        _, status = os.waitpid(pid, 0)
        lflag = termios.tcgetattr(fd)[3]  # the terminal is back in cooked mode
        assert lflag & termios.ICANON and lflag & termios.ECHO
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5, out


def _sleepers(marker: str) -> list[int]:
    """Host pids of processes whose command line is ``marker`` (the exec's sleep)."""
    want = marker.replace(" ", "\0").encode() + b"\0"
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if f.read() == want:
                        found.append(int(name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("flags", [[], ["-i"], ["-it"]], ids=["plain", "stdin", "tty"])
def test_a_client_that_goes_away_ends_its_exec_only(
    box: tuple[Path, str], flags: list[str]
) -> None:
    if not RemoteMode.on:
        pytest.skip("through the daemon only (in-process, the exec is the CLI's own child)")
    root, cid = box
    daemon = RemoteMode.daemons.get(root)
    if daemon is None:
        RemoteMode.host(root)
        daemon = RemoteMode.daemons[root]
    lamina_cli(root, "ps")  # the daemon's pool warm: its descriptors at rest
    before = daemon.open_files()
    marker = f"sleep 7{len(flags)}3"
    if "-it" in flags:
        argv = [
            *CLI,
            "--root",
            str(root),
            "exec",
            *flags,
            "box",
            "sh",
            "-c",
            f"echo up; exec {marker}",
        ]
        env = cli_env(root)
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            os.execve(argv[0], argv, env)
        try:
            until(lambda: _sleepers(marker), 20)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        finally:
            os.close(fd)
    else:
        proc = popen_exec(root, *flags, "box", "sh", "-c", f"echo up; exec {marker}",
                          stdin=subprocess.PIPE if flags else subprocess.DEVNULL)  # fmt: skip
        assert proc.stdout is not None
        assert read_line(proc.stdout) == b"up\n"
        until(lambda: _sleepers(marker), 20)
        proc.kill()
        proc.wait()
    until(lambda: not _sleepers(marker), 20)  # the exec's process killed
    state = lamina_cli(root, "inspect", "-f", "{{.State.Status}}", cid)
    assert state.stdout.strip() == "running"  # the container is not touched
    until(lambda: daemon.open_files() == before, 20)  # no pipe or socket of it kept
