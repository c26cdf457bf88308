"""The docker CLI's terminals under a real pty: ``run -it``, ``exec -it``, ``attach``
with its detach keys, the terminal's size and its resize seen inside."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import terminal_fixtures
from dockerapi_fixtures import DockerEndpoint, docker_endpoint
from runtime_fixtures import IMAGE_REF, cli_image_root, until


class Terminal(terminal_fixtures.Terminal):
    """The docker CLI run on a pty of ours, as a user's terminal runs it."""

    def __init__(self, ep: DockerEndpoint, *args: str, rows: int = 30, cols: int = 101) -> None:
        super().__init__(["docker", *args], ep.env(), rows=rows, cols=cols)


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
