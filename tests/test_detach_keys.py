"""Docker's detach keys (ctrl-p ctrl-q, or ``--detach-keys``) in every interactive
command, in-process and through the daemon (``both_modes``), under a real pty: the
client leaves, the container or the exec's process runs on (its terminal drained),
a later ``attach`` types into the container again; keys that are not the detach keys
(the default ones when others are set, a lone ctrl-p) reach the container as typed;
a bad ``--detach-keys`` is one line. Docker's Engine API takes them too
(``detachKeys``, an exec's ``DetachKeys``) and acts on them itself.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dockerapi_fixtures import DockerEndpoint, docker_endpoint
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    RemoteMode,
    cli_image_root,
    error_line,
    lamina_cli,
    lamina_ok,
    local_only,
    read_http_head,
    remove_all_containers,
    until,
)
from terminal_fixtures import Terminal

pytestmark = [pytest.mark.timeout(120), pytest.mark.both_modes]

DETACH = b"\x10\x11"  # ctrl-p ctrl-q
DETACHED_LINE = b"read escape sequence\r\n"  # the docker CLI's, for exec and attach


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "detach-keys")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


def lamina_term(root: Path, *args: str) -> Terminal:
    """``lamina ARGS`` on a terminal of ours (through the root's daemon in remote mode)."""
    env = dict(os.environ)
    if RemoteMode.on:
        env["LAMINA_HOST"] = RemoteMode.host(root)
    return Terminal([*CLI, "--root", str(root), *args], env)


def status(root: Path, name: str) -> str:
    return lamina_ok(root, "inspect", "-f", "{{.State.Status}}", name).strip()


def in_container(root: Path, name: str, command: str) -> str:
    return lamina_ok(root, "exec", name, "sh", "-c", command)


def test_run_it_detaches_and_attach_types_into_it_again(root: Path) -> None:
    term = lamina_term(root, "run", "-it", "--name", "det", IMAGE_REF, "sh")
    again: Terminal | None = None
    try:
        term.expect(b"# ")
        term.type(b"echo hel''lo\r")
        term.expect(b"\r\nhello\r\n")  # the command's output, not the echo of the line
        term.type(DETACH)
        left = term.rest()
        assert term.wait() == 0, left
        assert b"read escape sequence" not in left  # run says nothing, as docker's
        assert status(root, "det") == "running"

        again = lamina_term(root, "attach", "det")
        again.retype(b"echo ag''ain\r", b"\r\nagain\r\n")  # its stdin stayed open
        again.type(b"exit 3\r")
        assert again.wait() == 3  # attach ends with the container, with its code
    finally:
        term.close()
        if again is not None:
            again.close()


def test_a_detached_rm_container_is_finished_when_it_ends(root: Path) -> None:
    """Nobody waits for it once detached: its end is still recorded and ``--rm``
    removes it, seen in the journal (which ``events`` reads without reconciling)."""
    script = "echo ready; while [ ! -e /go ]; do sleep 0.05; done"
    term = lamina_term(root, "run", "-it", "--rm", "--name", "gone", IMAGE_REF, "sh", "-c", script)
    try:
        term.expect(b"ready")
        term.type(DETACH)
        term.rest()
        assert term.wait() == 0
    finally:
        term.close()
    lamina_ok(root, "exec", "gone", "touch", "/go")

    def destroyed() -> bool:
        events = lamina_ok(root, "events", "--since", "5m", "--until", "0s", "--filter",
                           "container=gone", "--format", "{{.Action}}")  # fmt: skip
        return "destroy" in events.split()

    until(destroyed, timeout=20)


def test_attach_detaches_with_docker_line(root: Path) -> None:
    lamina_ok(root, "run", "-dit", "--name", "att", IMAGE_REF, "sh")
    term = lamina_term(root, "attach", "att")
    try:
        term.retype(b"echo hel''lo\r", b"\r\nhello\r\n")
        term.type(DETACH)
        assert term.rest().endswith(DETACHED_LINE)
        assert term.wait() == 1  # the docker CLI's code for a detached attach
        assert status(root, "att") == "running"
    finally:
        term.close()


def test_exec_it_detaches_and_its_process_runs_on(root: Path) -> None:
    lamina_ok(root, "run", "-d", "--name", "box", IMAGE_REF, "sleep", "1000")
    # After the detach it writes 2 MB to its terminal: undrained, it would block there.
    script = "echo up; sleep 1; yes | head -c 2000000; touch /detached-done; exec sleep 4321"
    term = lamina_term(root, "exec", "-it", "box", "sh", "-c", script)
    try:
        term.expect(b"up")
        term.type(DETACH)
        left = term.rest()
        assert left.endswith(DETACHED_LINE), left
        assert b"yyy" not in left  # nothing of the exec after the keys
        assert term.wait() == 1  # the docker CLI's code for a detached exec
    finally:
        term.close()
    until(lambda: lamina_cli(root, "exec", "box", "test", "-f", "/detached-done").returncode == 0,
          timeout=30)  # fmt: skip
    until(lambda: "sleep 4321" in in_container(root, "box", "ps -o args"), timeout=10)
    assert status(root, "box") == "running"


def test_other_detach_keys_and_the_default_passed_through(root: Path) -> None:
    script = "stty raw -echo; echo ready; head -c 4 | od -An -tx1; echo =done; sleep 1000"
    term = lamina_term(root, "run", "-it", "--name", "keys", "--detach-keys", "ctrl-a,x",
                       IMAGE_REF, "sh", "-c", script)  # fmt: skip
    try:
        term.expect(b"ready")
        term.type(DETACH + b"\x10a")  # Docker's keys, then a lone ctrl-p: all typed as is
        term.expect(b"10 11 10 61")
        term.expect(b"=done")
        term.type(b"\x01x")  # ctrl-a x
        term.rest()
        assert term.wait() == 0
        assert status(root, "keys") == "running"
    finally:
        term.close()


def test_a_lone_ctrl_p_reaches_an_exec_then_the_keys_detach(root: Path) -> None:
    lamina_ok(root, "run", "-d", "--name", "box", IMAGE_REF, "sleep", "1000")
    script = "stty raw -echo; echo ready; head -c 3 | od -An -tx1; echo =done; exec sleep 4323"
    term = lamina_term(root, "exec", "-it", "box", "sh", "-c", script)
    try:
        term.expect(b"ready")
        term.type(b"\x10")  # held until the next key shows it is no detach
        term.type(b"ab")
        term.expect(b"10 61 62")
        term.expect(b"=done")
        term.type(DETACH)
        assert term.rest().endswith(DETACHED_LINE)
        assert term.wait() == 1
    finally:
        term.close()
    assert "sleep 4323" in in_container(root, "box", "ps -o args")


def test_a_vm_container_detaches_too(root: Path) -> None:
    """The micro-VM backend's pumps watch for the keys as the OCI backend's do."""
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        pytest.skip("needs qemu-system-x86_64")
    local_only("a VM's attach through the daemon reads its client's stdin whole")
    term = lamina_term(root, "run", "-it", "--isolation", "vm", "--network", "none",
                       "--name", "vmdet", IMAGE_REF, "sh")  # fmt: skip
    again: Terminal | None = None
    try:
        term.expect(b"# ", timeout=90)
        term.type(DETACH)
        term.rest()
        assert term.wait() == 0
        assert status(root, "vmdet") == "running"
        term = lamina_term(root, "exec", "-it", "vmdet", "sh", "-c", "echo up; exec sleep 4324")
        term.expect(b"up")
        term.type(DETACH)
        assert term.rest().endswith(DETACHED_LINE)
        assert term.wait() == 1
        assert "sleep 4324" in in_container(root, "vmdet", "ps -o args")
        again = lamina_term(root, "attach", "vmdet")
        again.retype(b"echo ag''ain\r", b"\r\nagain\r\n")  # its stdin stayed open
        again.type(b"exit 3\r")
        assert again.wait() == 3
    finally:
        term.close()
        if again is not None:
            again.close()


@pytest.mark.parametrize("command", ["run", "exec"])
def test_without_a_terminal_the_keys_are_input(root: Path, command: str) -> None:
    """As Docker's: detach keys act on a terminal's input only; piped, they are data."""
    if command == "exec":
        lamina_ok(root, "run", "-d", "--name", "box", IMAGE_REF, "sleep", "1000")
        args = ["exec", "-i", "--detach-keys", "ctrl-a,x", "box"]
    else:
        args = ["run", "-i", "--rm", "--detach-keys", "ctrl-a,x", IMAGE_REF]
    out = lamina_ok(root, *args, "od", "-An", "-tx1", input=b"\x01x" + DETACH + b"z")
    assert out.split() == ["01", "78", "10", "11", "7a"]


@pytest.mark.parametrize("command", ["run", "start", "attach", "exec"])
def test_bad_detach_keys_are_one_line(root: Path, command: str) -> None:
    rest = {"run": ["-it", IMAGE_REF, "sh"], "start": ["-ai", "x"], "attach": ["x"],
            "exec": ["-it", "x", "sh"]}[command]  # fmt: skip
    r = lamina_cli(root, command, "--detach-keys", "ctrl-a,shift-b", *rest)
    assert r.returncode == 125, r.stderr
    line = error_line(r.stderr)
    assert line.startswith("lamina: error: invalid detach keys (ctrl-a,shift-b): "), line
    assert "'shift-b'" in line
    assert lamina_ok(root, "ps", "-a", "-q") == ""  # nothing made


def test_the_keys_notation_and_matching() -> None:
    """Docker's notation (moby's term.ToBytes), and the matcher on input that comes in
    pieces: keys split across reads detach; a prefix not followed by the rest is
    passed on as typed, the held byte at the input's end too."""
    from lamina.runtime._term import DetachKeys, format_detach_keys, parse_detach_keys

    assert parse_detach_keys("") == DETACH
    assert parse_detach_keys("ctrl-a,x,ctrl-@,ctrl-\\,ctrl-_,DEL,X") == b"\x01x\x00\x1c\x1f\x7fX"
    assert format_detach_keys(b"\x01x\x00\x1c\x7f") == "ctrl-a,x,ctrl-@,ctrl-\\,DEL"
    for bad in ("shift-a", "ctrl-A", "ctrl-1", "a,,b", "ab", "é"):
        with pytest.raises(Exception, match="invalid detach keys"):
            parse_detach_keys(bad)

    watch = DetachKeys()
    assert watch.feed(b"ab\x10") == b"ab"
    assert (watch.feed(b"\x11cd"), watch.detached) == (b"", True)
    watch = DetachKeys()
    assert watch.feed(b"ab\x10") + watch.feed(b"x\x10") + watch.flush() == b"ab\x10x\x10"
    assert not watch.detached
    watch = DetachKeys()
    assert (watch.feed(b"\x10\x10\x11rest"), watch.detached) == (b"\x10", True)
    watch = DetachKeys(b"\x01x")
    assert (watch.feed(DETACH + b"\x01"), watch.detached) == (DETACH, False)
    assert (watch.feed(b"x"), watch.detached) == (b"", True)


# -- Docker's Engine API: the daemon acts on the keys (not only the docker CLI) ----------


@pytest.fixture
def ep(root: Path) -> Iterator[DockerEndpoint]:
    if RemoteMode.on:
        pytest.skip("Docker's API has a daemon of its own on the root (tested once)")
    with docker_endpoint(root) as endpoint:
        yield endpoint


def _hijacked(
    ep: DockerEndpoint, path: str, body: dict[str, object] | None = None
) -> socket.socket:
    """A hijacked stream of Docker's API (after its 101), as docker-py opens one."""
    data = json.dumps(body).encode() if body is not None else b""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(str(ep.socket))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\n"
                 "Upgrade: tcp\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)  # fmt: skip
    head = read_http_head(sock)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _read_until(sock: socket.socket, needle: bytes) -> None:
    got = b""
    while needle not in got:
        chunk = sock.recv(65536)  # the socket's timeout fails a wait too long
        assert chunk, got
        got += chunk


def _until_closed(sock: socket.socket) -> bytes:
    """What the stream carries until the daemon ends it (a timeout fails)."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def test_docker_api_attach_and_exec_take_detach_keys(ep: DockerEndpoint) -> None:
    ep.docker_ok("run", "-dit", "--network", "none", "--name", "api", IMAGE_REF, "sh")
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(ep.socket)),
                      base_url="http://docker") as api:  # fmt: skip
        bad = api.post("/containers/api/attach", params={"stream": 1, "detachKeys": "shift-a"})
        assert bad.status_code == 400 and "invalid detach keys" in bad.json()["message"]
        path = "/containers/api/attach?stream=1&stdin=1&stdout=1&stderr=1&detachKeys=ctrl-a,x"
        with _hijacked(ep, path) as sock:
            sock.sendall(b"echo hel''lo\r")
            _read_until(sock, b"hello")
            sock.sendall(DETACH + b"\x15echo wor''ld\r")  # not its keys (^U: a clean line)
            _read_until(sock, b"world")
            sock.sendall(b"\x01x")
            _until_closed(sock)
        assert ep.docker_ok("inspect", "-f", "{{.State.Status}}", "api").strip() == "running"

        bad = api.post("/containers/api/exec", json={"Cmd": ["sh"], "DetachKeys": "ctrl-,"})
        assert bad.status_code == 400 and "invalid detach keys" in bad.json()["message"]
        script = "stty raw -echo; echo up; head -c 2 | od -An -tx1; exec sleep 4322"
        made = api.post("/containers/api/exec", json={
            "Cmd": ["sh", "-c", script], "Tty": True, "AttachStdin": True,
            "AttachStdout": True, "DetachKeys": "ctrl-a,x"})  # fmt: skip
        exec_id = made.json()["Id"]
        with _hijacked(ep, f"/exec/{exec_id}/start", {"Tty": True}) as sock:
            _read_until(sock, b"up")
            sock.sendall(DETACH)  # not this exec's keys: typed into it
            _read_until(sock, b"10 11")
            sock.sendall(b"\x01x")
            _until_closed(sock)
        assert api.get(f"/exec/{exec_id}/json").json()["Running"] is True
        assert "sleep 4322" in ep.docker_ok("exec", "api", "ps", "-o", "args")
        ep.docker_ok("exec", "api", "sh", "-c", "kill $(pidof sleep)")  # its end: still its own
        until(lambda: api.get(f"/exec/{exec_id}/json").json()["Running"] is False, timeout=20)
        assert api.get(f"/exec/{exec_id}/json").json()["ExitCode"] == 143


def test_docker_cli_exec_it_detach_leaves_the_exec_running(ep: DockerEndpoint) -> None:
    """The docker CLI reads the keys itself and just leaves (nothing reaches the
    daemon): as on dockerd, its terminal exec runs on, what it prints then dropped."""
    ep.docker_ok("run", "-dit", "--network", "none", "--name", "cli", IMAGE_REF, "sh")
    script = "echo up; sleep 1; echo after; touch /after; exec sleep 4326"
    term = Terminal(["docker", "exec", "-it", "cli", "sh", "-c", script], ep.env())
    try:
        term.expect(b"up")
        term.type(DETACH)
        assert term.rest().endswith(DETACHED_LINE)
        assert term.wait() == 1
    finally:
        term.close()
    until(lambda: ep.docker("exec", "cli", "test", "-f", "/after").returncode == 0, timeout=20)
    assert "sleep 4326" in ep.docker_ok("exec", "cli", "ps", "-o", "args")
    ep.docker_ok("exec", "cli", "sh", "-c", "kill $(pidof sleep)")  # its relay ends with it
