"""The commands the remote CLI sends to the daemon since issue 12's last part: events,
version/info, system df/prune, the prune commands, update, commit, save/load/import,
pull/push progress. Each runs with ``--host`` and a client ``--root`` that is empty
(the daemon's root is another): what the client shows comes from the daemon, never
from a root the client happens to share with it, and matches the in-process output
of the daemon's root where the two can be compared."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_fixtures import Daemon
from registry_server import RegistryServer
from runtime_fixtures import CLI, IMAGE_REF, cli_image_root, error_line, until

pytestmark = pytest.mark.timeout(180)


class Sides:
    """The daemon's root in-process (``local``) and through the daemon from a client
    whose own root is empty (``remote``)."""

    def __init__(self, root: Path, daemon: Daemon, client_root: Path) -> None:
        self.root = root
        self.daemon = daemon
        self.client_root = client_root

    def local(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return _run(["--root", str(self.root), *args], input)

    def remote(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        host = f"unix://{self.daemon.socket}"
        return _run(["--root", str(self.client_root), "--host", host, *args], input)

    def remote_ok(self, *args: str) -> str:
        r = self.remote(*args)
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout


def _run(args: list[str], input: bytes | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env,
                          input=input.decode("latin-1") if input is not None else None,
                          stdin=None if input is not None else subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sides]:
    root = cli_image_root(tmp_path_factory, "remote-commands")
    client_root = tmp_path_factory.mktemp("client-root")
    daemon = Daemon(root)
    try:
        yield Sides(root, daemon, client_root)
    finally:
        daemon.stop()


def test_events_come_from_the_daemons_journal(sides: Sides) -> None:
    start = time.time()
    follow = subprocess.Popen(
        [*CLI, "--root", str(sides.client_root), "--host", f"unix://{sides.daemon.socket}",
         "events", "--since", f"{start:.9f}", "--filter", "container=ev1",
         "--format", "{{.Action}}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # From the test's start on, then as they come: a follower that connects after
        # the create (a slow start under load) still sees it.
        sides.remote_ok("create", "--name", "ev1", IMAGE_REF, "true")
        assert follow.stdout is not None
        assert follow.stdout.readline() == "create\n"  # as it comes, not at the end
        sides.remote_ok("rm", "ev1")
        assert follow.stdout.readline() == "destroy\n"
    finally:
        follow.terminate()
        follow.wait(10)
    window = ["--since", f"{start:.9f}", "--until", f"{time.time():.9f}",
              "--filter", "container=ev1"]  # fmt: skip
    local = sides.local("events", *window)
    remote = sides.remote("events", *window)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and " container create " in remote.stdout
    as_json = sides.remote_ok("events", *window, "--format", "json").splitlines()
    assert [json.loads(line)["Action"] for line in as_json] == ["create", "destroy"]
    # An event's own time selects it, to the nanosecond (as in-process).
    first_ns = json.loads(as_json[0])["timeNano"]
    exact = ["--since", f"{first_ns // 10**9}.{first_ns % 10**9:09d}", "--until",
             f"{first_ns // 10**9}.{first_ns % 10**9:09d}"]  # fmt: skip
    assert sides.remote_ok("events", *exact, "--format", "{{.Action}}") == "create\n"
    bad = sides.remote("events", "--filter", "colour=red")
    assert bad.returncode == 125 and "colour" in error_line(bad.stderr)


def test_version_and_info_are_the_daemons(sides: Sides) -> None:
    server = json.loads(sides.remote_ok("version", "--format", "{{json .Server}}"))
    assert server["Components"][0]["Name"] == "Engine"
    client = sides.remote_ok("version", "--format", "{{.Client.Version}}").strip()
    assert client and client == server["Version"]
    assert sides.remote_ok("info", "--format", "{{.Root}}") == f"{sides.root}\n"
    text = sides.remote_ok("info")
    assert f"Root: {sides.root}\n" in text and "Images: 1\n" in text


def test_system_df_is_the_daemons(sides: Sides) -> None:
    fmt = ["--format", "{{.Type}} {{.TotalCount}} {{.Active}}"]
    remote = sides.remote_ok("system", "df", *fmt)
    assert remote == sides.local("system", "df", *fmt).stdout
    assert remote.startswith("Images 1 ")
    verbose = json.loads(sides.remote_ok("system", "df", "-v", "--format", "json"))
    assert [i["Repository"] for i in verbose["Images"]] == ["example.com/test/busybox"]


def test_prunes_through_the_daemon(sides: Sides) -> None:
    cid = sides.remote_ok("create", "--label", "keep=no", IMAGE_REF, "true").strip()
    kept = sides.remote_ok("create", "--label", "keep=yes", IMAGE_REF, "true").strip()
    out = sides.remote_ok("container", "prune", "-f", "--filter", "label=keep=no")
    assert out.startswith(f"Deleted Containers:\n{cid}\n\nTotal reclaimed space: ")
    # A dangling image (imported without a name) and a volume no container uses.
    tar = _tar_of({"hello.txt": b"hi\n"})
    image_id = _import(sides, tar)
    sides.remote_ok("volume", "create", "spare")
    out = sides.remote_ok("system", "prune", "-f", "--volumes")
    assert f"Deleted Containers:\n{kept}\n" in out
    assert f"deleted: {image_id}" in out
    assert out.rstrip().splitlines()[-1].startswith("Total reclaimed space: ")
    assert sides.remote_ok("ps", "-a", "-q") == ""
    image_id = _import(sides, tar)
    assert sides.remote_ok("image", "prune", "-f").startswith(f"Deleted: {image_id}\n")
    sides.remote_ok("volume", "create", "spare2")
    assert "spare2" in sides.remote_ok("volume", "prune", "-f", "-a")
    assert sides.remote_ok("images", "-q") != ""  # the named image stays


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _import(sides: Sides, tar: bytes) -> str:
    r = sides.remote("import", "-", input=tar)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_update_and_commit(sides: Sides) -> None:
    sides.remote_ok("run", "-d", "--name", "upd", IMAGE_REF, "sleep", "60")
    try:
        assert sides.remote_ok("update", "--memory", "64m", "--restart", "on-failure:3",
                               "upd") == "upd\n"  # fmt: skip
        host = json.loads(sides.remote_ok("inspect", "upd"))[0]["HostConfig"]
        assert host["Memory"] == 64 * 1024 * 1024
        assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
        bad = sides.remote("update", "--memory", "1k", "upd")
        assert bad.returncode != 0 and "minimum" in error_line(bad.stderr)
        sides.remote_ok("exec", "upd", "sh", "-c", "echo committed > /marker")
        image_id = sides.remote_ok("commit", "-c", "ENV FROM_COMMIT=1", "upd",
                                   "committed:1").strip()  # fmt: skip
        assert image_id.startswith("sha256:")
        run = sides.remote_ok("run", "--rm", "committed:1", "sh", "-c",
                              "cat /marker; echo $FROM_COMMIT")  # fmt: skip
        assert run == "committed\n1\n"
        missing = sides.remote("commit", "nosuch")
        assert missing.returncode == 1 and "nosuch" in error_line(missing.stderr)
    finally:
        sides.remote("rm", "-f", "upd")
        sides.remote("rmi", "committed:1")


def test_save_load_and_import(sides: Sides, tmp_path: Path) -> None:
    archive = tmp_path / "saved.tar"
    sides.remote_ok("tag", IMAGE_REF, "saved:1")
    sides.remote_ok("save", "-o", str(archive), "saved:1")
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    host = f"unix://{sides.daemon.socket}"
    piped = subprocess.run([*CLI, "--host", host, "save", "saved:1"], capture_output=True,
                           timeout=60, check=True).stdout  # to stdout: the same members
    with tarfile.open(fileobj=io.BytesIO(piped)) as tar, tarfile.open(archive) as saved:
        assert tar.getnames() == saved.getnames()
    assert sorted(os.listdir(tmp_path)) == ["saved.tar"]  # no partial file left
    sides.remote_ok("rmi", "saved:1")
    assert sides.remote_ok("load", "-i", str(archive)) == "Loaded image: saved:1\n"
    bad = sides.remote("save", "-o", str(tmp_path / "x.tar"), "nosuch:1")
    assert bad.returncode != 0 and "nosuch" in error_line(bad.stderr)
    assert sorted(os.listdir(tmp_path)) == ["saved.tar"]
    # import of a directory the client has (the daemon never sees the path)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "greeting").write_text("from the client\n")
    image_id = sides.remote_ok("import", str(rootfs), "imported:1").strip()
    assert image_id.startswith("sha256:")
    assert sides.remote_ok("images", "-q", "imported:1") == image_id.removeprefix("sha256:")[
        :12] + "\n"  # fmt: skip
    sides.remote_ok("rmi", "saved:1", "imported:1")


def test_pull_and_push_progress_as_in_process(
    sides: Sides, registry: RegistryServer, tmp_path: Path
) -> None:
    ref = f"{registry.host}/remote/progress:1"
    sides.remote_ok("tag", IMAGE_REF, ref)
    push = sides.remote("push", ref)
    assert push.returncode == 0, push.stderr
    assert "Pushing" in push.stderr or "uploading" in push.stderr.lower(), push.stderr
    assert push.stdout.startswith("Digest: sha256:")
    sides.remote_ok("rmi", ref)
    pull = sides.remote("pull", ref)
    assert pull.returncode == 0, pull.stderr
    sides.remote_ok("rmi", ref)
    local = sides.local("pull", ref)  # the same store, in the same state, in-process
    assert local.returncode == 0, local.stderr
    assert pull.stdout == local.stdout
    assert _shape(pull.stderr) == _shape(local.stderr) and pull.stderr.strip()
    sides.remote_ok("rmi", ref)
    run = sides.remote("run", "--rm", ref, "echo", "pulled")
    assert run.returncode == 0 and run.stdout == "pulled\n", run.stderr
    assert run.stderr.startswith(f"Unable to find image '{ref}' locally\n")
    assert _shape(run.stderr.split("\n", 1)[1]) == _shape(pull.stderr)
    sides.remote_ok("rmi", ref)
    until(lambda: ref not in sides.remote_ok("images"))


def _shape(lines: str) -> list[str]:
    """Progress lines without sizes that depend on what the store holds already."""
    return [line.split(" ", 1)[0] for line in lines.splitlines()]


class _CountingRelay:
    """A unix socket in front of the daemon's that counts the connections made through
    it (each request of the remote CLI is a connection of its own)."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path = path
        self.connections = 0
        self._target = str(target)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            self.connections += 1
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self._target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()


def _stats_client(sides: Sides, host: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
    return subprocess.Popen([*CLI, "--root", str(sides.client_root), "--host", host, "stats",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, env=env)  # fmt: skip


def _sockets(daemon: Daemon) -> set[str]:
    """The daemon's open sockets, by inode."""
    fd_dir = f"/proc/{daemon.proc.pid}/fd"
    out = set()
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"{fd_dir}/{fd}")).startswith("socket:"):
                out.add(target)
    return out


def test_stats_reads_the_daemons_stream(sides: Sides, tmp_path: Path) -> None:
    """A request a second was the old way: the samples now come on one connection per
    container; the output is the in-process one; a client killed mid-stream leaves
    neither a thread nor a descriptor in the daemon."""
    sides.remote_ok("run", "-d", "--name", "st", IMAGE_REF, "sleep", "120")
    relay = _CountingRelay(tmp_path / "relay.sock", sides.daemon.socket)
    try:
        fmt = "{{.Name}} {{.ID}} {{.PIDs}}"
        one = _run(["--root", str(sides.client_root), "--host", f"unix://{relay.path}",
                    "stats", "--no-stream", "--format", fmt, "st"], None)  # fmt: skip
        assert one.returncode == 0, one.stderr
        assert one.stdout == sides.local("stats", "--no-stream", "--format", fmt, "st").stdout
        assert one.stdout.startswith("st ") and one.stdout.endswith(" 1\n"), one.stdout
        assert relay.connections <= 2  # the container's lookup, then its stream

        streaming = _stats_client(sides, f"unix://{relay.path}", "--format", fmt, "st")
        assert streaming.stdout is not None
        try:
            assert streaming.stdout.readline() == one.stdout
            at_first = relay.connections
            for _ in range(3):  # three more samples, a second apart
                assert streaming.stdout.readline() == one.stdout
            assert relay.connections == at_first
        finally:
            streaming.kill()
            streaming.communicate()

        before = _sockets(sides.daemon)
        killed = _stats_client(sides, f"unix://{sides.daemon.socket}", "--format", fmt, "st")
        assert killed.stdout is not None and killed.stdout.readline() == one.stdout
        streams = _sockets(sides.daemon) - before
        assert streams  # the daemon's end of the stream
        killed.kill()
        killed.communicate()
        until(lambda: not streams & _sockets(sides.daemon), timeout=10)
    finally:
        relay.close()
        sides.remote("rm", "-f", "st")


def test_detaching_from_exec_it_leaves_the_exec_running(sides: Sides) -> None:
    """ctrl-p ctrl-q (Docker's detach keys) in ``exec -it``: the client exits 1 with
    Docker's line (as the docker CLI), the exec runs on in the container (its output
    after the detach goes nowhere and does not end it)."""
    sides.remote_ok("run", "-d", "--name", "det", IMAGE_REF, "sleep", "120")
    try:
        script = "echo up; sleep 1; echo after; touch /detached-done; sleep 1; echo more"
        host = f"unix://{sides.daemon.socket}"
        argv = [*CLI, "--root", str(sides.client_root), "--host", host,
                "exec", "-it", "det", "sh", "-c", script]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "LAMINA_HOST"}
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            os.execve(argv[0], argv, env)
        out = b""
        try:
            while b"up" not in out:
                ready, _, _ = select.select([fd], [], [], 20)
                assert ready, out
                out += os.read(fd, 4096)
            os.write(fd, b"\x10\x11")
            with contextlib.suppress(OSError):  # EIO: the client has exited
                while data := os.read(fd, 4096) if select.select([fd], [], [], 20)[0] else b"":
                    out += data
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(fd)
        assert os.waitstatus_to_exitcode(status) == 1, out
        assert out.endswith(b"read escape sequence\r\n"), out
        until(lambda: sides.remote("exec", "det", "test", "-f", "/detached-done").returncode == 0,
              timeout=20)  # fmt: skip
    finally:
        sides.remote("rm", "-f", "det")
