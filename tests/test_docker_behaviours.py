"""The Docker behaviours users rely on, as they meet them through the ``lamina`` CLI
(real runc and conmon containers; a real registry for ``--platform``; micro-VMs for
the parity checks at the end):

- ``restart`` keeps a ``--rm`` container (its own exit, ``stop`` or ``kill`` remove it);
- ``kill``, ``stop`` and ``rm -f`` of a paused container;
- ``--stop-signal`` checked at create; an image's bogus StopSignal falls back to SIGTERM;
- ``-it`` with a stdin that is not a terminal: "the input device is not a TTY";
- a failed ``exec``: one error line, exit 127 (not found) or 126 (cannot be invoked);
- ``--platform`` against the platform of the local image, and what a process
  container cannot run;
- ``--mount ...,volume-opt=`` refused, not ignored;
- ``--privileged`` lifts ``no_new_privileges`` (a setuid-root ``su`` is the probe).
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_server import (
    RegistryServer,
    TestImage,
    build_image,
    build_index,
    layer_tar,
    skopeo,
)
from runtime_fixtures import (
    IMAGE_REF,
    cli_image_root,
    lamina_cli,
    overlay_mounts,
    remove_all_containers,
    settle_network,
    until,
)
from runtime_fixtures import lamina_ok as ok

from lamina.image import LocalImages

pytestmark = pytest.mark.timeout(180)

IMAGE = IMAGE_REF
BOGUS_STOP = "example.com/test/bogus-stop:latest"
# Ends at once on SIGTERM (a trap: PID 1 ignores signals it does not handle), and on
# its own once /tmp/done exists.
SERVE = 'trap "exit 0" TERM; while [ ! -e /tmp/done ]; do busybox sleep 0.1; done'


def _busybox_layer(busybox: Path = Path("/bin/busybox")) -> bytes:
    files: dict[str, bytes | str | None] = {"bin/busybox": busybox.read_bytes(), "tmp": None}
    for applet in ("sh", "true", "uname", "cat", "sleep"):
        files[f"bin/{applet}"] = "busybox"
    return layer_tar(files)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = cli_image_root(tmp_path_factory, "docker-behaviours")
    # An image whose StopSignal no signal parser accepts (as a registry may serve one).
    config = {"config": {"Cmd": ["/bin/sh"], "StopSignal": "BOGUS"}}
    _store(root, build_image([_busybox_layer()], extra_config=config), BOGUS_STOP)
    return root


def _store(root: Path, image: TestImage, name: str) -> None:
    local = LocalImages.open(root)
    try:
        image.store(local, name)
    finally:
        local.close()


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)


def fails(r: subprocess.CompletedProcess[str], code: int) -> str:
    """The one ``lamina: error:`` line of a command that must fail with ``code``."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lamina: error: "), r.stderr
    return lines[0]


def inspect(root: Path, ref: str) -> dict[str, object]:
    return json.loads(ok(root, "inspect", ref))[0]  # type: ignore[no-any-return]


def state(root: Path, ref: str) -> dict[str, object]:
    return inspect(root, ref)["State"]  # type: ignore[return-value]


def containers(root: Path) -> list[str]:
    return ok(root, "ps", "-a", "-q").split()


def in_pty(root: Path, *args: str) -> tuple[int, bytes]:
    """``lamina ARGS`` with a pseudo-terminal as stdin, stdout and stderr."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        cmd = [sys.executable, "-m", "lamina.cli.main", "--root", str(root), *args]
        os.execv(sys.executable, cmd)
    out = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


# -- restart of a --rm container ---------------------------------------------------------


def test_restart_keeps_an_rm_container_until_it_exits_or_is_stopped(root: Path) -> None:
    ok(root, "run", "-d", "--rm", "--name", "rr", IMAGE, "sh", "-c", SERVE)
    first = state(root, "rr")["StartedAt"]
    r = lamina_cli(root, "restart", "rr")
    assert (r.returncode, r.stdout, r.stderr) == (0, "rr\n", "")
    after = state(root, "rr")
    assert after["Running"] is True and after["StartedAt"] != first
    assert inspect(root, "rr")["HostConfig"]["AutoRemove"] is True  # type: ignore[index]
    # Restarted again, then it exits on its own: --rm removes it now.
    ok(root, "restart", "rr")
    ok(root, "exec", "rr", "touch", "/tmp/done")
    until(lambda: containers(root) == [])
    # And a stop (not a restart) removes it too.
    ok(root, "run", "-d", "--rm", "--name", "rs", IMAGE, "sh", "-c", SERVE)
    ok(root, "restart", "rs")
    ok(root, "stop", "rs")
    assert containers(root) == []
    settle_network(root)  # its network's teardown finishes after stop returns
    assert overlay_mounts(root) == []


_KILLED_RESTART = """
import os, signal, sys
from pathlib import Path
from lamina.engine import open_engine

rt = open_engine(Path(sys.argv[1]))
def killed(*args, **kwargs):  # SIGKILL of `lamina restart` at this point
    os.kill(os.getpid(), signal.SIGKILL)
setattr(rt, sys.argv[3], killed)
rt.restart(sys.argv[2])
"""


@pytest.mark.parametrize("killed_in", ["start", "stop"])
def test_a_killed_restart_leaves_no_rm_container_behind(root: Path, killed_in: str) -> None:
    """SIGKILL of the restarting process after its stop (before the start), or before
    its stop: the --rm container is removed by the next command, or by its stop."""
    cid = ok(root, "run", "-d", "--rm", IMAGE, "sh", "-c", SERVE).strip()
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_RESTART, str(root), cid, killed_in],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    if killed_in == "stop":
        assert state(root, cid)["Running"] is True  # never stopped: it runs on
        ok(root, "stop", cid)
    assert containers(root) == []  # `ps` reconciled: gone, as its exit would have made it
    settle_network(root)
    assert overlay_mounts(root) == []
    assert not (root / "containers" / cid).exists()


# -- kill, stop and rm -f of a paused container ---------------------------------------------


def test_a_paused_container_can_be_killed_stopped_and_force_removed(root: Path) -> None:
    ok(root, "run", "-d", "--name", "pk", IMAGE, "sleep", "1000")
    ok(root, "pause", "pk")
    # A signal that does not end it stays pending: the container stays paused.
    r = lamina_cli(root, "kill", "-s", "USR1", "pk")
    assert (r.returncode, r.stdout, r.stderr) == (0, "pk\n", "")
    assert state(root, "pk")["Paused"] is True
    r = lamina_cli(root, "kill", "pk")
    assert (r.returncode, r.stdout, r.stderr) == (0, "pk\n", "")
    assert ok(root, "wait", "pk") == "137\n"
    assert state(root, "pk")["Status"] == "exited"

    ok(root, "run", "-d", "--name", "ps", IMAGE, "sleep", "1000")
    ok(root, "pause", "ps")
    assert ok(root, "stop", "-t", "1", "ps") == "ps\n"
    assert state(root, "ps")["Status"] == "exited"

    ok(root, "run", "-d", "--name", "pr", IMAGE, "sleep", "1000")
    ok(root, "pause", "pr")
    assert ok(root, "rm", "-f", "pr") == "pr\n"
    assert "pr" not in ok(root, "ps", "-a", "--format", "{{.Names}}").split()


# -- stop signals -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["create", "run"])
def test_a_bogus_stop_signal_is_refused_at_create(root: Path, command: str) -> None:
    line = fails(lamina_cli(root, command, "--stop-signal", "BOGUS", IMAGE, "true"), 125)
    assert "--stop-signal 'BOGUS'" in line
    assert containers(root) == []
    ok(root, "create", "--name", "usr1", "--stop-signal", "usr1", IMAGE, "true")
    assert inspect(root, "usr1")["Config"]["StopSignal"] == "SIGUSR1"  # type: ignore[index]


def test_an_image_with_a_bogus_stop_signal_stops_with_sigterm(root: Path) -> None:
    ok(root, "run", "-d", "--name", "bs", BOGUS_STOP, "sh", "-c", SERVE)
    assert inspect(root, "bs")["Config"]["StopSignal"] == "SIGTERM"  # type: ignore[index]
    # SIGTERM ends it at once (its trap exits 0); anything else would be SIGKILL's 137.
    assert ok(root, "stop", "-t", "30", "bs") == "bs\n"
    assert state(root, "bs")["ExitCode"] == 0


# -- -it without a terminal ---------------------------------------------------------------------


def test_it_needs_a_terminal_as_stdin(root: Path) -> None:
    r = lamina_cli(root, "run", "--rm", "-it", IMAGE, "sh", input=b"echo hi\n", timeout=20)
    assert fails(r, 1) == "lamina: error: the input device is not a TTY"
    assert containers(root) == []  # refused before anything was created
    # -t alone, -i alone and -dit are fine with any stdin, as in Docker.
    is_tty = ["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo tty"]
    assert ok(root, "run", "--rm", "-t", IMAGE, *is_tty).strip() == "tty"
    assert ok(root, "run", "--rm", "-i", IMAGE, "cat", input=b"piped\n") == "piped\n"
    ok(root, "run", "-dit", "--name", "dit", IMAGE, "sh")
    r = lamina_cli(root, "exec", "-it", "dit", "true", input=b"", timeout=20)
    assert fails(r, 1) == "lamina: error: the input device is not a TTY"
    assert ok(root, "exec", "-t", "dit", *is_tty).strip() == "tty"
    # start -ai does not check (nor does Docker's): it attaches what it is given.
    ok(root, "create", "-it", "--name", "cit", IMAGE, "echo", "started")
    assert ok(root, "start", "-ai", "cit").strip() == "started"


# -- exec failures ---------------------------------------------------------------------------


def test_a_failed_exec_reports_once_with_dockers_exit_codes(root: Path) -> None:
    ok(root, "run", "-d", "--name", "ex", IMAGE, "sleep", "1000")
    line = fails(lamina_cli(root, "exec", "ex", "nosuch"), 127)
    assert '"nosuch": executable file not found' in line
    fails(lamina_cli(root, "exec", "ex", "/no/such/file"), 127)
    assert "permission denied" in fails(lamina_cli(root, "exec", "ex", "/etc"), 126)
    assert "permission denied" in fails(lamina_cli(root, "exec", "ex", "/etc/passwd"), 126)
    assert "unable to find user bogus" in fails(
        lamina_cli(root, "exec", "-u", "bogus", "ex", "true"), 126
    )
    assert "chdir" in fails(lamina_cli(root, "exec", "-w", "/nonexistent", "ex", "true"), 126)
    line = fails(lamina_cli(root, "exec", "-d", "ex", "nosuch"), 127)
    assert line.count("exec failed") == 1, line
    # On a terminal: the same single line, nothing from runc beside it.
    code, out = in_pty(root, "exec", "-it", "ex", "nosuch")
    assert code == 127
    lines = out.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: error: exec failed:"), out
    # A process's own stderr (even a line that looks like runc's) passes through.
    script = 'echo out; echo err >&2; echo "exec failed: mine" >&2; exit 3'
    r = lamina_cli(root, "exec", "ex", "sh", "-c", script)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\nexec failed: mine\n")
    code, out = in_pty(root, "exec", "-it", "ex", "sh", "-c", 'echo "exec failed: mine"; exit 4')
    assert (code, out) == (4, b"exec failed: mine\r\n")


def test_only_the_runtimes_own_last_line_is_held_back() -> None:
    """runc's ``exec failed: ...`` line may come split over reads; the process's own
    output is never lost, a line like runc's included when the exec did not fail."""
    from lamina.runtime._exec import HoldRuntimeError

    hold = HoldRuntimeError()
    out = hold.feed(b"out\nexec fa") + hold.feed(b"iled: mine\n")
    assert (out, hold.end(failed=False)) == (b"out\n", b"exec failed: mine\n")
    hold = HoldRuntimeError()
    out = hold.feed(b"exec failed: x\r\n") + hold.feed(b"more\r\n")
    assert (out, hold.end(failed=False)) == (b"exec failed: x\r\nmore\r\n", b"")
    hold = HoldRuntimeError()
    assert hold.feed(b'exec failed: exec: "x": not found\n') == b""
    assert hold.end(failed=True) == b""


# -- --platform -------------------------------------------------------------------------------


def _binfmt(name: str) -> bool:
    try:
        return Path(f"/proc/sys/fs/binfmt_misc/{name}").read_text().startswith("enabled")
    except OSError:
        return False


def _arm64_vms() -> str:
    """Why arm64 micro-VMs cannot run here ("" when they can)."""
    from lamina.vm._arch import get_arch, host_arch, missing

    if host_arch() != "amd64" or shutil.which("mkfs.erofs") is None:
        return "needs an amd64 host with erofs-utils"
    gaps = missing(get_arch("arm64"))
    return "needs " + "; ".join(gaps) if gaps else ""


def test_platform_is_checked_against_the_local_image(
    root: Path, registry: RegistryServer, tmp_path: Path
) -> None:
    from lamina.vm._arch import get_arch

    arm_busybox = get_arch("arm64").busybox() if not _arm64_vms() else None
    arm_layer = _busybox_layer(arm_busybox) if arm_busybox else layer_tar({"etc/arch": b"arm\n"})
    index = build_index({"linux/amd64": [_busybox_layer()], "linux/arm64/v8": [arm_layer]})
    ref = f"{registry.host}/behaviours/multi:1"
    layout = index.write_oci_layout(tmp_path / "layout", tag="1")
    res = skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{ref}")
    assert res.returncode == 0, res.stderr
    ok(root, "pull", "-q", ref)  # the host's: linux/amd64

    # No linux/s390x in the registry: Docker's error, after the pull it tried.
    line = fails(lamina_cli(root, "run", "--rm", "--platform", "linux/s390x", ref, "true"), 125)
    assert (
        f"image with reference {ref} was found but does not match the specified platform: "
        "wanted linux/s390x, actual: linux/amd64"
    ) in line
    # Never pulled, never run: the same error straight away.
    r = lamina_cli(root, "run", "--rm", "--pull", "never", "--platform", "linux/arm64", ref, "true")
    assert fails(r, 125).endswith("wanted linux/arm64/v8, actual: linux/amd64")
    # The same platform runs, of course.
    assert ok(root, "run", "--rm", "--platform", "linux/amd64", ref, "uname", "-m") == "x86_64\n"
    assert containers(root) == []

    # linux/arm64 is pulled (as Docker would), and a process container refuses it
    # unless a binfmt_misc emulator serves it.
    r = lamina_cli(root, "run", "--rm", "--platform", "linux/arm64", ref, "true")
    assert json.loads(ok(root, "image", "inspect", ref))[0]["Architecture"] == "arm64"
    if not _binfmt("qemu-aarch64"):
        assert r.returncode == 125, r.stderr
        last = r.stderr.splitlines()[-1]
        assert last.startswith("lamina: error: image platform linux/arm64 cannot run in a "
                               "process container"), r.stderr  # fmt: skip
        assert "--isolation auto" in last
    assert containers(root) == []
    if arm_busybox:  # emulated in a micro-VM, as before
        r = lamina_cli(
            root, "run", "--rm", "--isolation", "auto", "--platform", "linux/arm64", ref,
            "uname", "-m", timeout=180,
        )  # fmt: skip
        assert (r.returncode, r.stdout) == (0, "aarch64\n"), r.stderr


def test_a_platform_no_isolation_can_run_is_refused(root: Path, tmp_path: Path) -> None:
    s390x = build_image([layer_tar({"etc/arch": b"s390x\n"})], platform="linux/s390x")
    _store(root, s390x, "example.com/test/s390x:1")
    line = fails(lamina_cli(root, "run", "--rm", "example.com/test/s390x:1", "true"), 125)
    assert "image platform linux/s390x cannot run in a process container" in line
    r = lamina_cli(root, "create", "--isolation", "auto", "example.com/test/s390x:1", "true")
    assert "linux/s390x" in fails(r, 125)
    assert containers(root) == []


# -- volume-opt ------------------------------------------------------------------------------


def test_volume_opt_is_refused_not_ignored(root: Path) -> None:
    spec = "type=volume,source=vo,target=/data,volume-opt=type=tmpfs,volume-opt=device=tmpfs"
    line = fails(lamina_cli(root, "run", "--rm", "--mount", spec, IMAGE, "true"), 125)
    assert "volume-opt" in line and "type=tmpfs" in line
    assert containers(root) == []
    assert "vo" not in ok(root, "volume", "ls", "-q").split()


# -- no_new_privileges ------------------------------------------------------------------------

# As root: busybox (every applet, su included) made setuid-root and root's password
# emptied; then, as the user app, `su` to root: it works only if the setuid bit does.
SETUID_PROBE = (
    "chmod 4755 /bin/busybox && sed -i 's/^root:x:/root::/' /etc/passwd"
    " && su app -c 'grep NoNewPrivs /proc/self/status; su -c \"id -u\" root'"
)


@pytest.mark.parametrize(
    ("flags", "gains_root"),
    [
        ((), False),  # lamina's default: stricter than Docker's
        (("--privileged",), True),
        (("--security-opt", "no-new-privileges=false"), True),
        (("--privileged", "--security-opt", "no-new-privileges"), False),
    ],
)
def test_privileged_lifts_no_new_privileges(
    root: Path, flags: tuple[str, ...], gains_root: bool
) -> None:
    r = lamina_cli(root, "run", "--rm", *flags, IMAGE, "sh", "-c", SETUID_PROBE)
    if gains_root:
        assert (r.returncode, r.stdout) == (0, "NoNewPrivs:\t0\n0\n"), r.stderr
    else:
        assert r.returncode == 1 and r.stdout == "NoNewPrivs:\t1\n", (r.stdout, r.stderr)
        assert "must be suid" in r.stderr


# -- micro-VM containers: the same behaviours ------------------------------------------------


@pytest.mark.slow
def test_vm_containers_behave_the_same(root: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("mkfs.erofs") is None:
        pytest.skip("needs qemu-system-x86_64 and erofs-utils")
    vm = ("--isolation", "vm")
    ok(root, "run", "-d", "--rm", *vm, "--name", "vmr", BOGUS_STOP, "sh", "-c", SERVE)
    assert inspect(root, "vmr")["Config"]["StopSignal"] == "SIGTERM"  # type: ignore[index]
    assert "not found" in fails(lamina_cli(root, "exec", "vmr", "nosuch"), 127)
    fails(lamina_cli(root, "exec", "vmr", "/etc"), 126)
    fails(lamina_cli(root, "exec", "-u", "bogus", "vmr", "true"), 126)
    # restart keeps the --rm VM container (a new boot), and its stop signal works.
    r = lamina_cli(root, "restart", "-t", "30", "vmr", timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (0, "vmr\n", "")
    assert state(root, "vmr")["Running"] is True
    # Paused, it is still killed; then --rm removes it.
    ok(root, "pause", "vmr")
    assert ok(root, "kill", "vmr") == "vmr\n"
    until(lambda: containers(root) == [])
