"""The container commands of the ``lamina`` CLI, end to end: the real CLI in a
subprocess, real runc and conmon, a busybox image imported into a tmp root.

What is checked is what a user sees: exit codes (the container's; 125 for lamina's
own failures; 126/127 for a command that cannot run), which stream output lands on,
stdin and terminal passthrough, listings, files copied in and out, volumes.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import tarfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_fixtures import (
    CLI,
    IMAGE_REF,
    cli_image_root,
    lamina_cli,
    local_only,
    remove_all_containers,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.both_modes]

IMAGE = IMAGE_REF
lamina = lamina_cli


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "cli-containers")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    """The shared root with the image; every container a test made is removed after it."""
    yield image_root
    remove_all_containers(image_root)


def ok(root: Path, *args: str, input: bytes | None = None) -> str:
    r = lamina(root, *args, input=input)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    return r.stdout


def assert_one_line_error(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("lamina: error: "), r.stderr


# -- run: exit codes, streams, stdin ---------------------------------------------------


def test_run_exit_code_and_streams(root: Path) -> None:
    r = lamina(root, "run", "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    assert ok(root, "ps", "-a", "-q") == ""  # --rm removed it


def test_run_without_rm_keeps_the_container(root: Path) -> None:
    r = lamina(root, "run", "--name", "kept", IMAGE, "sh", "-c", "exit 0")
    assert r.returncode == 0
    status = ok(root, "ps", "-a", "--filter", "name=kept", "--format", "{{.Status}}").strip()
    assert re.fullmatch(r"Exited \(0\) .* ago", status), status


def test_stdin_passthrough(root: Path) -> None:
    r = lamina(root, "run", "--rm", "-i", IMAGE, "cat", input=b"hi\nthere\n")
    assert (r.returncode, r.stdout) == (0, "hi\nthere\n")
    # without -i the container's stdin is closed: cat reads nothing
    r = lamina(root, "run", "--rm", IMAGE, "cat", input=b"ignored\n")
    assert (r.returncode, r.stdout) == (0, "")


def test_command_not_found_or_not_executable(root: Path) -> None:
    r = lamina(root, "run", "--rm", IMAGE, "/no/such/binary")
    assert r.returncode == 127
    assert_one_line_error(r)
    r = lamina(root, "run", "--rm", IMAGE, "/etc/passwd")
    assert r.returncode == 126
    assert_one_line_error(r)
    assert ok(root, "ps", "-a", "-q") == ""


def test_env_workdir_user_hostname_entrypoint(root: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\nHOSTVAR\n")
    r = subprocess.run(
        [*CLI, "--root", str(root), "run", "--rm", "--env-file", str(env_file), "-e", "A=b",
         "-w", "/tmp", "-u", "1000:1000", "-h", "box", IMAGE,
         "sh", "-c", 'echo "$FROM_FILE $HOSTVAR $A $(pwd) $(id -u) $(hostname)"'],
        capture_output=True, text=True, env={**os.environ, "HOSTVAR": "hv"}, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "1 hv b /tmp 1000 box\n"), r.stderr
    r = lamina(root, "run", "--rm", "--entrypoint", "echo", IMAGE, "via", "entrypoint")
    assert r.stdout == "via entrypoint\n"


def test_signals_are_forwarded_to_the_container(root: Path) -> None:
    script = "trap 'echo got-term; exit 9' TERM; echo ready; sleep 1000 & wait"
    proc = subprocess.Popen(
        [*CLI, "--root", str(root), "run", "--rm", IMAGE, "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, out) == (9, b"got-term\n"), err


def test_oom_kill_is_shown(root: Path) -> None:
    hog = 'x=$(head -c 50000000 /dev/zero | tr "\\0" a); echo survived'
    r = lamina(root, "run", "--name", "hog", "-m", "8m", "--memory-swap", "8m", IMAGE, "sh", "-c",
               hog)  # fmt: skip
    assert r.returncode == 137
    status = ok(root, "ps", "-a", "--format", "{{.Status}}")
    assert status.startswith("Exited (137)") and "(OOMKilled)" in status


def test_interactive_tty(root: Path) -> None:
    argv = [*CLI, "--root", str(root), "run", "--rm", "-it", IMAGE, "sh"]
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(argv[0], argv)
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
        os.write(fd, b"echo $((6*7))\n")
        assert read_until(b"42"), out
        os.write(fd, b"exit 5\n")
        read_until(b"\0", timeout=5)  # to EOF
        _, status = os.waitpid(pid, 0)
        lflag = termios.tcgetattr(fd)[3]  # the terminal is back in cooked mode
        assert lflag & termios.ICANON and lflag & termios.ECHO
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5, out
    assert b"42\r\n" in out


# -- detached containers: ps, logs, exec, stop, rm --------------------------------------


def test_detached_lifecycle(root: Path) -> None:
    cid = ok(root, "run", "-d", "--name", "web", IMAGE, "sh", "-c", "echo started; sleep 1000")
    assert re.fullmatch(r"[0-9a-f]{64}\n", cid)
    cid = cid.strip()

    table = ok(root, "ps").splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                "PORTS", "NAMES"]  # fmt: skip
    row = next(line for line in table if line.endswith("web"))
    assert row.startswith(cid[:12])
    assert '"sh -c echo started;…"' in row
    assert re.search(r"Up (Less than a second|\d+ seconds?)", row)

    deadline = time.monotonic() + 10
    while "started" not in ok(root, "logs", "web") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ok(root, "logs", "web") == "started\n"
    stamped = ok(root, "logs", "-t", "web")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z started\n", stamped)

    r = lamina(root, "exec", "web", "sh", "-c", "echo $((1+2)); echo e >&2; exit 4")
    assert (r.returncode, r.stdout, r.stderr) == (4, "3\n", "e\n")
    r = lamina(root, "exec", "-i", "web", "cat", input=b"piped\n")
    assert (r.returncode, r.stdout) == (0, "piped\n")

    ok(root, "pause", "web")
    assert "(Paused)" in ok(root, "ps")
    ok(root, "unpause", "web")

    assert ok(root, "stop", "-t", "1", "web") == "web\n"
    assert ok(root, "ps", "-q") == ""
    status = ok(root, "ps", "-a", "--format", "{{.Names}} {{.Status}}")
    assert re.fullmatch(r"web Exited \(137\) .* ago\n", status), status  # sh ignores SIGTERM
    assert ok(root, "wait", "web") == "137\n"

    r = lamina(root, "rm", "web", "nosuch")
    assert r.returncode == 1
    assert r.stdout == "web\n"
    assert_one_line_error(r)
    assert ok(root, "ps", "-a", "-q") == ""
    # -f: a container that is not there is said, but no failure (Docker's CLI)
    ok(root, "create", "--name", "gone", IMAGE, "true")
    r = lamina(root, "rm", "-f", "nosuch", "gone")
    assert (r.returncode, r.stdout) == (0, "gone\n")
    assert_one_line_error(r)
    assert "nosuch" in r.stderr


def test_logs_follow_tail_and_stats(root: Path) -> None:
    # Running for 2 s: a remote stats --no-stream reads the daemon's two samples 1 s apart.
    ok(root, "run", "-d", "--name", "talk", IMAGE, "sh", "-c",
       "echo a; echo b >&2; sleep 2; echo c")  # fmt: skip
    out = ok(root, "stats", "--no-stream", "--format", "json", "talk")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["Name"] == "talk" and row["Container"] == "talk" and int(row["PIDs"]) >= 1
    r = lamina(root, "logs", "-f", "talk")  # returns once the container has exited
    assert (r.stdout, r.stderr) == ("a\nc\n", "b\n")
    assert ok(root, "logs", "--tail", "1", "talk") == "c\n"
    assert ok(root, "logs", "--until", "2000-01-01T00:00:00Z", "talk") == ""
    assert ok(root, "logs", "--since", "1h", "talk") == "a\nc\n"
    r = lamina(root, "logs", "--since", "yesterday", "talk")
    assert r.returncode == 125
    assert_one_line_error(r)


def test_create_then_start_attached(root: Path) -> None:
    cid = ok(root, "create", "--name", "later", IMAGE, "sh", "-c", "echo hello; exit 7").strip()
    assert ok(root, "ps", "-a", "--format", "{{.Status}}") == "Created\n"
    r = lamina(root, "start", "-a", "later")
    assert (r.returncode, r.stdout) == (7, "hello\n")
    assert ok(root, "wait", cid[:12]) == "7\n"


def test_ps_format_json_and_filters(root: Path) -> None:
    ok(root, "run", "-d", "--name", "one", "-l", "tier=front", IMAGE, "sleep", "1000")
    ok(root, "run", "--name", "two", "-l", "tier=back", IMAGE, "true")
    rows = [json.loads(line) for line in ok(root, "ps", "--format", "json").splitlines()]
    assert [r["Names"] for r in rows] == ["one"]
    one = rows[0]
    assert one["State"] == "running"
    assert one["Labels"] == "tier=front"  # Docker's fields are text
    assert one["Image"] == IMAGE
    assert one["Command"] == '"sleep 1000"'
    assert re.fullmatch(r"[0-9a-f]{12}", one["ID"])
    out = ok(root, "ps", "-a", "--format", "json")
    all_rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["Names"] for r in all_rows) == ["one", "two"]
    assert ok(root, "ps", "-a", "--filter", "label=tier=back", "--format", "{{.Names}}") == "two\n"
    assert ok(root, "ps", "-a", "--filter", "status=exited", "--format", "{{.Names}}") == "two\n"
    assert ok(root, "ps", "-a", "--filter", f"ancestor={IMAGE}", "-q").count("\n") == 2
    assert ok(root, "container", "ls", "-q") == ok(root, "ps", "-q")


def test_inspect_containers_then_images(root: Path) -> None:
    ok(root, "create", "--name", "insp", IMAGE, "true")
    [c] = json.loads(ok(root, "inspect", "insp"))
    assert c["Name"] == "/insp"
    assert c["State"]["Status"] == "created"
    assert ok(root, "inspect", "-f", "{{.State.Status}} {{json .Config.Cmd}}", "insp") == (
        'created ["true"]\n'
    )
    [img] = json.loads(ok(root, "inspect", IMAGE))
    assert img["Id"].startswith("sha256:")
    r = lamina(root, "inspect", "--type", "container", IMAGE)
    assert r.returncode == 1
    assert_one_line_error(r)


# -- files ---------------------------------------------------------------------------------


def test_cp_round_trip(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello\n")
    (src / "sub" / "b.txt").write_text("deep\n")
    ok(root, "run", "-d", "--name", "box", IMAGE, "sleep", "1000")

    ok(root, "cp", str(src / "a.txt"), "box:/tmp/")  # into an existing directory
    ok(root, "cp", str(src / "a.txt"), "box:/tmp/renamed.txt")  # to a new name
    ok(root, "cp", str(src), "box:/tmp/tree")  # a directory to a new name
    listing = ok(root, "exec", "box", "sh", "-c",
                 "cat /tmp/a.txt /tmp/renamed.txt /tmp/tree/sub/b.txt")  # fmt: skip
    assert listing == "hello\nhello\ndeep\n"

    back = tmp_path / "back"
    back.mkdir()
    ok(root, "cp", "box:/tmp/tree", str(back))  # into an existing directory
    assert (back / "tree" / "sub" / "b.txt").read_text() == "deep\n"
    ok(root, "cp", "box:/tmp/renamed.txt", str(back / "file.txt"))  # to a new name
    assert (back / "file.txt").read_text() == "hello\n"
    ok(root, "cp", "box:/tmp/tree/.", str(back / "contents"))  # DIR/. copies the contents
    assert sorted(os.listdir(back / "contents")) == ["a.txt", "sub"]

    r = lamina(root, "cp", "box:/no/such/file", str(back))
    assert r.returncode == 1
    assert_one_line_error(r)
    r = lamina(root, "cp", str(src), "box:/tmp/a.txt")
    assert r.returncode == 1
    assert_one_line_error(r)

    # '-': a tar stream on stdout, and from stdin
    raw = subprocess.run([*CLI, "--root", str(root), "cp", "box:/tmp/a.txt", "-"],
                         capture_output=True, check=True, timeout=60).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        member = tf.getmember("a.txt")
        data = tf.extractfile(member)
        assert data is not None and data.read() == b"hello\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("from-stdin.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"in\n"))
    subprocess.run([*CLI, "--root", str(root), "cp", "-", "box:/root"], input=buf.getvalue(),
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    assert ok(root, "exec", "box", "cat", "/root/from-stdin.txt") == "in\n"


def test_diff_and_commit(root: Path) -> None:
    local_only("the daemon serves no commit yet")
    ok(root, "run", "--name", "changed", IMAGE, "sh", "-c",
       "echo new > /tmp/new.txt && rm /bin/vi && echo x >> /etc/passwd")  # fmt: skip
    changes = ok(root, "diff", "changed").splitlines()
    for expected in ("C /tmp", "A /tmp/new.txt", "D /bin/vi", "C /etc/passwd"):
        assert expected in changes, changes
    image_id = ok(root, "commit", "-c", 'CMD ["cat", "/tmp/new.txt"]', "-m", "msg", "changed",
                  "committed:1").strip()  # fmt: skip
    assert image_id.startswith("sha256:")
    assert lamina(root, "run", "--rm", "committed:1").stdout == "new\n"
    ok(root, "rmi", "committed:1")


# -- volumes -------------------------------------------------------------------------------


def test_volumes_persist_across_containers(root: Path, tmp_path: Path) -> None:
    assert ok(root, "volume", "create", "data") == "data\n"
    ok(root, "run", "--rm", "-v", "data:/data", IMAGE, "sh", "-c", "echo kept > /data/f")
    assert ok(root, "run", "--rm", "-v", "data:/data:ro", IMAGE, "cat", "/data/f") == "kept\n"
    r = lamina(root, "run", "--rm", "-v", "data:/data:ro", IMAGE, "touch", "/data/g")
    assert r.returncode != 0  # read-only
    mounted = ok(root, "run", "--rm", "--mount", "type=volume,source=data,target=/m",
                 IMAGE, "cat", "/m/f")  # fmt: skip
    assert mounted == "kept\n"

    # a bind mount: the host sees what the container wrote
    host = tmp_path / "bind"
    ok(root, "run", "--rm", "-v", f"{host}:/out", IMAGE, "sh", "-c", "echo b > /out/x")
    assert (host / "x").read_text() == "b\n"  # -v created the missing host directory

    [info] = json.loads(ok(root, "volume", "inspect", "data"))
    assert (info["Name"], info["Driver"]) == ("data", "local")
    assert "data" in ok(root, "volume", "ls", "-q").split()

    ok(root, "run", "-d", "--name", "user", "-v", "data:/data", IMAGE, "sleep", "1000")
    r = lamina(root, "volume", "rm", "data")
    assert r.returncode == 1
    assert_one_line_error(r)
    ok(root, "rm", "-f", "user")
    assert ok(root, "volume", "rm", "data") == "data\n"
    assert "data" not in ok(root, "volume", "ls", "-q").split()


def test_anonymous_volumes_go_with_their_container(root: Path) -> None:
    def volumes() -> set[str]:
        return set(ok(root, "volume", "ls", "-q").split())

    before = volumes()
    ok(root, "run", "--rm", "-v", "/data", IMAGE, "sh", "-c", "echo x > /data/f")
    assert volumes() == before
    cid = ok(root, "run", "-d", "-v", "/data", "-v", "named1:/n", IMAGE, "true").strip()
    ok(root, "wait", cid)
    assert len(volumes() - before) == 2
    ok(root, "rm", "-v", cid)
    assert volumes() - before == {"named1"}  # named volumes outlive rm -v, as in Docker
    ok(root, "volume", "rm", "named1")
    # run -d --rm: conmon's exit command removes container and volume
    ok(root, "run", "-d", "--rm", "-v", "/data", IMAGE, "true")
    deadline = time.monotonic() + 10
    while ok(root, "ps", "-a", "-q") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ok(root, "ps", "-a", "-q") == ""
    assert volumes() == before


def test_image_volumes_become_anonymous_volumes(root: Path) -> None:
    local_only("the daemon serves no commit yet")
    ok(root, "create", "--name", "volbase", IMAGE)
    ok(root, "commit", "-c", "VOLUME /vol", "volbase", "withvol:1")
    try:
        before = set(ok(root, "volume", "ls", "-q").split())
        # a volume is mounted there
        out = ok(root, "run", "--rm", "withvol:1", "sh", "-c", "grep -c ' /vol ' /proc/mounts")
        assert out == "1\n"
        cid = ok(root, "run", "-d", "withvol:1", "sh", "-c", "echo kept > /vol/f").strip()
        ok(root, "wait", cid)
        [mount] = json.loads(ok(root, "inspect", cid))[0]["Mounts"]
        assert (mount["Type"], mount["Destination"]) == ("volume", "/vol")
        assert (Path(mount["Source"]) / "f").read_text() == "kept\n"
        # a mount of the user's at that path replaces the image's volume
        out = ok(root, "run", "--rm", "--tmpfs", "/vol", "withvol:1", "sh", "-c",
                 "grep ' /vol ' /proc/mounts | cut -d' ' -f3")  # fmt: skip
        assert out == "tmpfs\n"
        ok(root, "rm", "-v", cid)
        assert set(ok(root, "volume", "ls", "-q").split()) == before
    finally:
        lamina(root, "rmi", "-f", "withvol:1")


def test_diff_hides_mount_stubs(root: Path, tmp_path: Path) -> None:
    """The image has no /etc/hosts, /anon, /bind or /scratch: the stubs runc makes to
    mount on are not the container's changes (Docker hides them too)."""
    host = tmp_path / "b"
    host.mkdir()
    ok(root, "run", "--name", "stubs", "-v", f"{host}:/bind/dir", "-v", "/anon",
       "--tmpfs", "/scratch", IMAGE, "sh", "-c", "echo hi > /tmp/x")  # fmt: skip
    assert ok(root, "diff", "stubs").splitlines() == ["C /tmp", "A /tmp/x"]
    # a change next to a stub still shows, and so does its directory
    ok(root, "run", "--name", "etc", IMAGE, "sh", "-c", "echo x > /etc/motd")
    assert ok(root, "diff", "etc").splitlines() == ["C /etc", "A /etc/motd"]


def test_oom_kill_writes_nothing_into_the_callers_cwd(root: Path, tmp_path: Path) -> None:
    """conmon writes an ``oom`` file into its working directory: it must be the
    container's bundle, never the directory lamina was run from."""
    hog = 'x=$(head -c 50000000 /dev/zero | tr "\\0" a); echo survived'
    limits = ("-m", "8m", "--memory-swap", "8m")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = lamina(root, "run", "--rm", *limits, IMAGE, "sh", "-c", hog, cwd=cwd)
    assert r.returncode == 137, r.stderr
    cid = lamina(root, "run", "-d", *limits, IMAGE, "sh", "-c", hog, cwd=cwd).stdout.strip()
    assert lamina(root, "wait", cid, cwd=cwd).stdout == "137\n"
    assert ok(root, "inspect", "-f", "{{.State.OOMKilled}}", cid) == "true\n"
    assert os.listdir(cwd) == []


# -- the OCI runtime: --runtime ------------------------------------------------------------


def test_crun_is_refused_at_once_on_hybrid_cgroups(root: Path) -> None:
    local_only("--runtime is the daemon's, not the client's")
    from lamina.runtime._cgroups import cgroup_mode

    if cgroup_mode() != "hybrid":
        pytest.skip("this host's cgroups are not in hybrid mode")
    before = sorted(os.listdir(root / "containers"))
    for r in (
        lamina(root, "--runtime", "crun", "run", "--rm", IMAGE, "true"),
        lamina(root, "run", "--rm", IMAGE, "true", env={"LAMINA_RUNTIME": "/usr/bin/crun"}),
    ):
        assert r.returncode == 125, r.stderr
        assert_one_line_error(r)
        assert "hybrid mode" in r.stderr and "--runtime runc" in r.stderr, r.stderr
    assert ok(root, "ps", "-a", "-q") == ""
    assert sorted(os.listdir(root / "containers")) == before


def test_runtime_by_absolute_path(root: Path) -> None:
    r = lamina(root, "--runtime", "/usr/sbin/runc", "run", "--rm", IMAGE, "echo", "ok")
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


@pytest.mark.parametrize("runtime", ["nonexistent", "/no/such/runtime"])
def test_missing_runtime_is_one_clear_error(root: Path, runtime: str) -> None:
    local_only("--runtime is the daemon's, not the client's")
    r = lamina(root, "--runtime", runtime, "run", "--rm", IMAGE, "true")
    assert r.returncode == 125
    assert_one_line_error(r)
    assert runtime in r.stderr and "not found" in r.stderr, r.stderr
    assert ok(root, "ps", "-a", "-q") == ""


# -- lamina's own failures: 125, one line ---------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--bogus", IMAGE],
        ["run", "-m", "lots", IMAGE],
        ["run", "--ulimit", "nofile=2:1", IMAGE],
        ["run", "-v", "relative:dir", IMAGE],
        ["run", "--network", "no-such-net", IMAGE],
        ["run", "--isolation", "hyperv", IMAGE],
        ["run", "--pull", "never", "example.com/not/here:1"],
        ["run", "--rm", "sha256:" + "0" * 64],
        ["create", "--cpus", "-1", IMAGE],
        ["run"],
        ["ps", "--filter", "colour=blue"],
    ],
)
def test_bad_flags_exit_125(root: Path, args: list[str]) -> None:
    r = lamina(root, *args)
    assert r.returncode == 125, r.stderr
    assert_one_line_error(r)
    assert ok(root, "ps", "-a", "-q") == ""


def test_name_conflict_is_125(root: Path) -> None:
    ok(root, "create", "--name", "dup", IMAGE)
    r = lamina(root, "create", "--name", "dup", IMAGE)
    assert r.returncode == 125
    assert_one_line_error(r)


# -- rendering helpers (no containers needed) ------------------------------------------


def test_docker_durations_and_statuses() -> None:
    from lamina.cli._common import human_duration, status_text
    from lamina.runtime import Container, ContainerConfig, ContainerState, Status

    assert [human_duration(s) for s in (0.2, 1, 59, 60, 150, 3600, 7200, 3 * 86400)] == [
        "Less than a second", "1 second", "59 seconds", "About a minute", "2 minutes",
        "About an hour", "2 hours", "3 days",
    ]  # fmt: skip

    def ctr(status: Status, **state: object) -> Container:
        st = ContainerState(status=status, **state)  # type: ignore[arg-type]
        return Container("a" * 64, "n", ContainerConfig(image="x"), st, 1000.0, "oci")

    now = 1300.0
    assert status_text(ctr(Status.CREATED), now) == "Created"
    assert status_text(ctr(Status.RUNNING, started_at=1297.0), now) == "Up 3 seconds"
    assert status_text(ctr(Status.PAUSED, started_at=1295.0), now) == "Up 5 seconds (Paused)"
    exited = ctr(Status.EXITED, exit_code=0, finished_at=1180.0)
    assert status_text(exited, now) == "Exited (0) 2 minutes ago"
    oom = ctr(Status.EXITED, exit_code=137, finished_at=1299.0, oom_killed=True)
    assert status_text(oom, now) == "Exited (137) 1 second ago (OOMKilled)"


def test_exit_codes_of_runtime_errors() -> None:
    from lamina.cli._run import exit_code_of
    from lamina.runtime import ExitReason, WaitOutcome

    assert exit_code_of(WaitOutcome(3, ExitReason.EXITED)) == 3
    assert exit_code_of(WaitOutcome(137, ExitReason.OOM_KILLED)) == 137
    err = ExitReason.RUNTIME_ERROR
    assert exit_code_of(WaitOutcome(1, err, error='exec: "x": executable file not found')) == 127
    assert exit_code_of(WaitOutcome(1, err, error="exec /etc/passwd: permission denied")) == 126
    assert exit_code_of(WaitOutcome(1, err, error="mount failed")) == 125
