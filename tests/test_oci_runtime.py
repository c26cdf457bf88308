"""Process containers through the engine, end to end: real runc, real conmon, real
cgroups.

Each test uses a busybox image imported into a lamina root under tmp (see
runtime_fixtures.py) and checks what a user would: exit codes, logs, signals,
limits, exec, attach, and that containers neither leak nor get lost when the
processes around them die.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_fixtures import config, import_busybox, lamina_cgroups, overlay_mounts, runc_list

from lamina.engine import Engine, open_engine
from lamina.errors import AlreadyExists, InUse, LaminaError, NotFound
from lamina.runtime import ExitReason, Mount, Resources, Status, WaitCondition

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, mounts, cgroups)"),
    pytest.mark.skipif(
        not (os.path.exists("/usr/sbin/runc") and os.path.exists("/usr/bin/conmon")),
        reason="needs runc and conmon",
    ),
    pytest.mark.timeout(120),
]

TESTS_DIR = Path(__file__).parent


@pytest.fixture(scope="module")
def lamina_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    base = tmp_path_factory.mktemp("oci")
    root = base / "root"
    image = import_busybox(root, base)
    return root, image


@pytest.fixture
def rt(lamina_root: tuple[Path, str]) -> Iterator[Engine]:
    root, _ = lamina_root
    runtime = open_engine(root)
    yield runtime
    for c in runtime.list(all=True):
        runtime.remove(c.id, force=True, volumes=True)
    runtime.close()


@pytest.fixture
def image(lamina_root: tuple[Path, str]) -> str:
    return lamina_root[1]


def run(rt: Engine, image: str, *cmd: str, **kwargs: object) -> str:
    c = rt.create(config(image, *cmd, **kwargs))  # type: ignore[arg-type]
    rt.start(c.id)
    return c.id


def logs_text(rt: Engine, ref: str, **kwargs: object) -> str:
    return b"".join(e.data for e in rt.logs(ref, **kwargs)).decode()  # type: ignore[arg-type]


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# -- running and exiting ------------------------------------------------------------


def test_exit_code_and_separate_streams(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sh", "-c", "echo out1; echo err1 >&2; printf 'no newline'; exit 3")
    outcome = rt.wait(cid)
    assert outcome.exit_code == 3
    assert outcome.reason == ExitReason.EXITED
    assert outcome.signal is None
    state = rt.get(cid).state
    assert state.status == Status.EXITED and state.exit_code == 3 and state.pid == 0
    assert state.started_at and state.finished_at and state.finished_at >= state.started_at
    assert logs_text(rt, cid, stderr=False) == "out1\nno newline"
    assert logs_text(rt, cid, stdout=False) == "err1\n"
    entries = list(rt.logs(cid))
    assert [e.stream for e in entries] == ["stdout", "stderr", "stdout"]
    assert [e.data for e in rt.logs(cid, tail=1)] == [b"no newline"]
    assert list(rt.logs(cid, since=time.time() + 60)) == []
    # Not running: NOT_RUNNING returns at once with the same outcome.
    assert rt.wait(cid).exit_code == 3


def test_exit_zero_and_restart_appends_logs(rt: Engine, image: str) -> None:
    cid = run(rt, image, "echo", "hi")
    assert rt.wait(cid).exit_code == 0
    rt.start(cid)
    assert rt.wait(cid, WaitCondition.NOT_RUNNING).exit_code == 0
    wait_for(lambda: logs_text(rt, cid) == "hi\nhi\n")


def test_command_not_found_fails_with_127(rt: Engine, image: str) -> None:
    c = rt.create(config(image, "/no/such/binary"))
    with pytest.raises(LaminaError, match="no such file or directory") as err:
        rt.start(c.id)
    assert err.value.exit_code == 127
    state = rt.get(c.id).state
    assert state.status == Status.FAILED
    assert state.exit_code == 127
    assert "/no/such/binary" in state.error
    rt.remove(c.id)
    assert runc_list(rt.root) == []


def test_run_rm_wait_after_exit_gets_code(rt: Engine, image: str) -> None:
    c = rt.create(config(image, "sh", "-c", "exit 7", auto_remove=True))
    rt.start(c.id)
    wait_for(lambda: not any(x.id == c.id for x in rt.list(all=True)))
    assert rt.wait(c.id).exit_code == 7  # removed already: the exit is remembered
    with pytest.raises(NotFound):
        rt.get(c.id)


def test_attach_then_start_pumps_stdio(rt: Engine, image: str) -> None:
    c = rt.create(
        config(
            image,
            "sh",
            "-c",
            "read line; echo got $line; echo oops >&2; exit 4",
            stdin_open=True,
            auto_remove=True,
        )
    )
    out, err = io.BytesIO(), io.BytesIO()
    rt.attach(c.id, stdin=io.BytesIO(b"hello\n"), stdout=out, stderr=err, start=True)
    assert out.getvalue() == b"got hello\n"
    assert err.getvalue() == b"oops\n"
    assert rt.wait(c.id, WaitCondition.REMOVED).exit_code == 4
    assert not ((rt.root / "containers") / c.id).exists()


# -- signals ---------------------------------------------------------------------------


def test_stop_kills_after_grace_when_sigterm_is_ignored(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sh", "-c", "trap '' TERM; echo ready; sleep 100 & wait; sleep 100")
    wait_for(lambda: "ready" in logs_text(rt, cid))
    t0 = time.monotonic()
    rt.stop(cid, timeout=1)
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 5
    state = rt.get(cid).state
    assert state.status == Status.EXITED
    outcome = rt.wait(cid)
    assert (outcome.exit_code, outcome.reason, outcome.signal) == (
        137,
        ExitReason.SIGNAL,
        "SIGKILL",
    )


def test_stop_uses_stop_signal_and_graceful_exit(rt: Engine, image: str) -> None:
    script = "trap 'echo bye; exit 0' USR1; echo ready; while :; do sleep 0.05; done"
    cid = run(rt, image, "sh", "-c", script, stop_signal="SIGUSR1")
    wait_for(lambda: "ready" in logs_text(rt, cid))
    t0 = time.monotonic()
    rt.stop(cid, timeout=10)
    assert time.monotonic() - t0 < 3
    assert rt.wait(cid).exit_code == 0
    assert "bye" in logs_text(rt, cid)
    assert rt.inspect(cid)["Config"]["StopSignal"] == "SIGUSR1"  # type: ignore[index]


def test_kill_with_signal(rt: Engine, image: str) -> None:
    script = "trap 'echo got-usr2; exit 12' USR2; echo ready; while :; do sleep 0.05; done"
    cid = run(rt, image, "sh", "-c", script)
    wait_for(lambda: "ready" in logs_text(rt, cid))
    with pytest.raises(LaminaError, match="invalid signal"):
        rt.kill(cid, "SIGNOPE")
    rt.kill(cid, "usr2")
    assert rt.wait(cid).exit_code == 12
    assert "got-usr2" in logs_text(rt, cid)
    with pytest.raises(LaminaError, match="not running"):
        rt.kill(cid, "KILL")

    cid2 = run(rt, image, "sleep", "100")
    rt.kill(cid2, "9")
    outcome = rt.wait(cid2)
    assert (outcome.exit_code, outcome.reason, outcome.signal) == (
        137,
        ExitReason.SIGNAL,
        "SIGKILL",
    )


# -- outliving lamina, and monitors dying ------------------------------------------------------


def test_container_outlives_the_process_that_started_it(
    rt: Engine, image: str, lamina_root: tuple[Path, str]
) -> None:
    root, _ = lamina_root
    script = (
        "import sys; from pathlib import Path\n"
        f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        "from runtime_fixtures import config\n"
        "from lamina.engine import open_engine\n"
        f"rt = open_engine(Path({str(root)!r}))\n"
        f"c = rt.create(config({image!r}, 'sh', '-c', "
        "\"trap 'exit 0' TERM; echo started; while :; do sleep 0.05; done\", name='survivor'))\n"
        "rt.start(c.id)\n"
        "print(c.id)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    cid = proc.stdout.strip()
    assert len(cid) == 64
    c = rt.get("survivor")
    assert c.id == cid and c.state.status == Status.RUNNING
    assert [x.id for x in rt.list()] == [cid]
    wait_for(lambda: "started" in logs_text(rt, cid))
    result = rt.exec("survivor", ["sh", "-c", "echo $HOSTNAME; cat /etc/hostname"])
    assert result.exit_code == 0
    assert result.stdout.decode().split() == [cid[:12], cid[:12]]
    assert rt.pid(cid) == c.state.pid > 0
    rt.stop("survivor")
    assert rt.wait(cid).exit_code == 0
    assert rt.get(cid).state.status == Status.EXITED


def test_conmon_killed_is_reconciled_not_lost(
    rt: Engine, image: str, lamina_root: tuple[Path, str]
) -> None:
    cid = run(rt, image, "sleep", "100")
    bundle = (rt.root / "containers") / cid
    conmon_pid = int((bundle / "conmon.pid").read_text())
    container_pid = rt.pid(cid)
    os.kill(conmon_pid, signal.SIGKILL)
    wait_for(lambda: _zombie(conmon_pid), 5)
    # Any call reconciles; a second runtime object (another lamina process) sees the same.
    other = Engine(lamina_root[0])
    try:
        listed = [c for c in other.list(all=True) if c.id == cid]
    finally:
        other.close()
    assert len(listed) == 1
    state = listed[0].state
    assert state.status == Status.EXITED
    assert state.exit_code == 137
    assert state.error == "monitor died"
    outcome = rt.wait(cid)
    assert outcome.reason == ExitReason.RUNTIME_ERROR and outcome.error == "monitor died"
    wait_for(lambda: not os.path.exists(f"/proc/{container_pid}") or _zombie(container_pid))
    assert cid not in runc_list(rt.root)
    assert lamina_cgroups(cid) == []
    assert not any(cid in m for m in overlay_mounts(rt.root))
    assert len([c for c in rt.list(all=True) if c.id == cid]) == 1


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# -- limits -------------------------------------------------------------------------------


def test_oom_kill_under_memory_limit(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sh", "-c", "tail /dev/zero", resources=Resources(memory=8 * 1024**2))
    outcome = rt.wait(cid, timeout=60)
    assert outcome.exit_code == 137
    assert outcome.reason == ExitReason.OOM_KILLED
    info = rt.inspect(cid)
    assert info["State"]["OOMKilled"] is True  # type: ignore[index]
    assert info["HostConfig"]["Memory"] == 8 * 1024**2  # type: ignore[index]


def test_pids_limit_bounds_a_fork_bomb(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sleep", "100", resources=Resources(pids_limit=10))
    bomb = "for i in $(seq 50); do sleep 30 >/dev/null 2>&1 & done; echo all"
    result = rt.exec(cid, ["sh", "-c", bomb])
    assert result.exit_code != 0
    assert b"can't fork" in result.stderr
    assert b"all" not in result.stdout
    _headers, rows = rt.top(cid)
    assert 1 <= len(rows) <= 10
    assert rt.stats(cid).pids <= 10
    rt.update(cid, Resources(pids_limit=64))
    assert rt.exec(cid, ["sh", "-c", bomb.replace("50", "20")]).stdout == b"all\n"
    assert rt.get(cid).config.resources.pids_limit == 64


def test_pause_and_unpause(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sleep", "100")
    rt.pause(cid)
    assert rt.get(cid).state.status == Status.PAUSED
    with pytest.raises(LaminaError, match="paused"):
        rt.exec(cid, ["true"])
    with pytest.raises(LaminaError, match="paused"):
        rt.pause(cid)
    freezer = Path("/sys/fs/cgroup/freezer/lamina") / cid / "freezer.state"
    if freezer.exists():
        assert freezer.read_text().strip() == "FROZEN"
    rt.unpause(cid)
    assert rt.get(cid).state.status == Status.RUNNING
    assert rt.exec(cid, ["echo", "ok"]).stdout == b"ok\n"
    rt.stop(cid, timeout=0)
    assert rt.wait(cid).exit_code == 137


# -- exec ----------------------------------------------------------------------------------


def test_exec_captured_env_user_workdir(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sleep", "100", env=["FROM_RUN=1"])
    env = rt.exec(cid, ["env"], env=["EXTRA=yes", "FROM_RUN=2"]).stdout.decode().split("\n")
    assert "EXTRA=yes" in env and "FROM_RUN=2" in env and "LANG=C.UTF-8" in env
    ident = rt.exec(cid, ["sh", "-c", "id -u; id -g; echo $HOME; pwd"], user="app", workdir="/tmp")
    assert ident.stdout.decode().split() == ["1000", "1000", "/home/app", "/tmp"]
    res = rt.exec(cid, ["sh", "-c", "echo o; echo e >&2; exit 5"])
    assert (res.exit_code, res.stdout, res.stderr) == (5, b"o\n", b"e\n")
    assert rt.exec(cid, ["cat"], stdin=io.BytesIO(b"piped")).stdout == b"piped"
    with pytest.raises(LaminaError, match="no such file") as err:
        rt.exec(cid, ["/nope"])
    assert err.value.exit_code == 127
    tty = rt.exec(cid, ["sh", "-c", "tty; exit 3"], tty=True)
    assert tty.exit_code == 3 and tty.stdout.startswith(b"/dev/pts/")
    detached = rt.exec(cid, ["sh", "-c", "echo bg > /tmp/bg"], detach=True)
    assert detached.exit_code == 0
    wait_for(lambda: rt.exec(cid, ["cat", "/tmp/bg"]).stdout == b"bg\n")
    _headers, rows = rt.top(cid)
    assert any(r[-1] == "sleep 100" for r in rows)


# -- names, errors, inspect ------------------------------------------------------------------


def test_names_prefixes_and_refusals(rt: Engine, image: str) -> None:
    a = rt.create(config(image, "sleep", "100", name="alpha"))
    assert a.name == "alpha" and len(a.id) == 64
    with pytest.raises(AlreadyExists):
        rt.create(config(image, "true", name="alpha"))
    with pytest.raises(LaminaError, match="invalid container name"):
        rt.create(config(image, "true", name="bad name!"))
    b = rt.create(config(image, "true"))
    assert "_" in b.name
    assert rt.get(a.id[:10]).id == a.id
    # Among 17 IDs two share their first hex digit: that prefix is ambiguous.
    seen = {a.id[0], b.id[0]}
    clash = a.id[0] if a.id[0] == b.id[0] else None
    while clash is None:
        extra = rt.create(config(image, "true")).id[0]
        clash = extra if extra in seen else None
        seen.add(extra)
    with pytest.raises(LaminaError, match="ambiguous"):
        rt.get(clash)
    with pytest.raises(NotFound):
        rt.get("nosuchcontainer")
    rt.rename("alpha", "beta")
    assert rt.get("beta").id == a.id
    rt.start("beta")
    with pytest.raises(InUse, match="running"):
        rt.remove("beta")
    rt.remove("beta", force=True)
    with pytest.raises(NotFound):
        rt.get(a.id)
    assert not ((rt.root / "containers") / a.id).exists()


def test_inspect_shape(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sleep", "100", name="insp", labels={"k": "v"})
    info = rt.inspect(cid)
    assert info["Id"] == cid and info["Name"] == "/insp"
    state = info["State"]
    assert isinstance(state, dict)
    assert state["Status"] == "running" and state["Running"] is True and state["Pid"] > 0
    assert info["Config"]["Labels"] == {"k": "v"}  # type: ignore[index]
    graph = info["GraphDriver"]["Data"]  # type: ignore[index]
    assert os.path.ismount(graph["MergedDir"])
    assert graph["UpperDir"].endswith("/upper")
    assert info["Backend"] == "oci"
    assert Path(graph["MergedDir"], "bin", "busybox").exists()


def test_image_is_held_while_a_container_exists(rt: Engine, image: str) -> None:
    c = rt.create(config(image, "true"))
    with pytest.raises(InUse):
        rt.images.remove(image)
    rt.remove(c.id)
    assert rt.images.images.holders(rt.images.require(image).digest) == []


def test_filesystem_diff_copy_and_commit(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sh", "-c", "echo new > /added; rm /etc/group; echo x >> /etc/passwd")
    assert rt.wait(cid).exit_code == 0
    changes = {(c.kind, c.path) for c in rt.diff(cid)}
    assert {("A", "/added"), ("D", "/etc/group"), ("C", "/etc/passwd")} <= changes
    data = b"".join(rt.copy_out(cid, "/added"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("added")
        assert member is not None and member.read() == b"new\n"
    assert not any(cid in m for m in overlay_mounts(rt.root))  # mounted only for the copy
    new_image = rt.commit(cid, "example.com/test/committed:1")
    c2 = run(rt, new_image, "cat", "/added")
    assert rt.wait(c2).exit_code == 0
    assert logs_text(rt, c2) == "new\n"


def test_volumes_anonymous_removed_with_container(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sh", "-c", "ls /etc > /data/list", mounts=[Mount("volume", "/data")])
    assert rt.wait(cid).exit_code == 0
    [vol] = rt.volumes.list()
    assert b"passwd" in (vol.mountpoint / "list").read_bytes()
    rt.remove(cid, volumes=True)
    assert rt.volumes.list() == []


# -- the OCI runtime binary --------------------------------------------------------------------


def test_container_keeps_the_runtime_it_was_created_with(
    lamina_root: tuple[Path, str], tmp_path: Path
) -> None:
    """A runtime other than runc (here a logging wrapper around it) creates the
    container; a later lamina asked for runc still manages it with that runtime, which
    keeps its state apart, and starts it with ``<runtime> start``."""
    root, image = lamina_root
    calls = tmp_path / "calls"
    wrapper = tmp_path / "bin" / "myrunc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec /usr/sbin/runc "$@"\n')
    wrapper.chmod(0o755)
    custom = Engine(root, oci_runtime=str(wrapper))
    try:
        cid = run(custom, image, "sleep", "100")  # type: ignore[arg-type]
        assert custom.get(cid).state.status == Status.RUNNING
    finally:
        custom.close()
    assert (root / "runtimes" / "myrunc" / cid).is_dir()
    assert cid not in runc_list(root)

    def verbs() -> list[str]:
        known = {"create", "start", "kill", "delete", "state", "exec", "pause", "resume"}
        return [
            next(w for w in line.split() if w in known) for line in calls.read_text().splitlines()
        ]

    assert verbs()[:2] == ["create", "start"]
    plain = Engine(root)  # runc by default
    try:
        plain.stop(cid, timeout=0)
        assert plain.wait(cid).exit_code == 137
        plain.remove(cid)
    finally:
        plain.close()
    assert "kill" in verbs()
    assert not (root / "runtimes" / "myrunc" / cid).exists()
    assert lamina_cgroups(cid) == []


def test_rows_without_a_runtime_are_runcs(rt: Engine, image: str) -> None:
    """Containers made before the runtime was recorded are managed with runc."""
    c = rt.create(config(image, "sleep", "100"))
    rec = rt.store.get(c.id)
    assert rec is not None and rec.task.pop("oci_runtime") == "/usr/sbin/runc"
    rt.store.update(c.id, task=rec.task)
    rt.start(c.id)
    assert c.id in runc_list(rt.root)
    rt.stop(c.id, timeout=0)
    assert c.id not in runc_list(rt.root)


def test_unknown_runtime_fails_before_anything(tmp_path: Path) -> None:
    for spec in ("nonexistent", str(tmp_path / "missing")):
        with pytest.raises(LaminaError, match="not found"):
            Engine(tmp_path / "root", oci_runtime=spec)


# -- leaving nothing behind -------------------------------------------------------------------


def test_fifty_containers_leave_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "root"
    image = import_busybox(root, tmp_path)
    rt = Engine(root)
    try:
        ids = []
        for i in range(50):
            cmd = ("sleep", "100") if i % 2 else ("true",)
            c = rt.create(config(image, *cmd, auto_remove=i % 5 == 0))
            rt.start(c.id)
            ids.append(c.id)
        running = [c for c in rt.list() if c.id in ids]
        assert len(running) >= 25
        for cid in ids:
            with contextlib.suppress(NotFound):  # --rm ones may have gone already
                rt.remove(cid, force=True, volumes=True)
        assert rt.list(all=True) == []
        assert overlay_mounts(root) == []
        assert all(lamina_cgroups(cid) == [] for cid in ids)
        assert runc_list(root) == []
        assert os.listdir(root / "containers") == []
        assert os.listdir(root / "overlay") == []
        assert os.listdir(root / "runc") == []
    finally:
        for c in rt.list(all=True):
            rt.remove(c.id, force=True)
        rt.close()


def test_cycle_time_is_reported(rt: Engine, image: str) -> None:
    """create + start + wait + remove of ``true``: printed for the report (-s)."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        c = rt.create(config(image, "true", auto_remove=True))
        out, err = io.BytesIO(), io.BytesIO()
        rt.attach(c.id, stdin=None, stdout=out, stderr=err, start=True)
        assert rt.wait(c.id, WaitCondition.REMOVED).exit_code == 0
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"\ncreate+start+wait+remove: median {times[2] * 1000:.1f} ms, min {times[0] * 1000:.1f}")
    assert times[2] < 2.0


def test_spec_written_is_valid_json(rt: Engine, image: str) -> None:
    c = rt.create(config(image, "true"))
    spec = json.loads(((rt.root / "containers") / c.id / "config.json").read_text())
    assert spec["root"]["path"] == str((rt.root / "overlay") / c.id / "merged")
    assert spec["linux"]["cgroupsPath"] == f"/lamina/{c.id}"


def test_exit_command_cleans_up_a_detached_container(rt: Engine, image: str) -> None:
    """Nobody waits: conmon's exit command records the exit and unmounts by itself."""
    cid = run(rt, image, "sh", "-c", "sleep 0.2; exit 9")
    merged = (rt.root / "overlay") / cid / "merged"
    assert os.path.ismount(merged)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rec = rt.store.get(cid)  # the raw record: no reconcile by this process
        # The exit command records the exit, then unmounts and deletes runc state:
        # wait for all of it (under load the steps are visibly apart).
        if (
            rec is not None
            and rec.status == Status.EXITED
            and not os.path.ismount(merged)
            and cid not in runc_list(rt.root)
        ):
            break
        time.sleep(0.05)
    assert rec is not None and rec.status == Status.EXITED and rec.exit_code == 9
    assert not os.path.ismount(merged)
    assert cid not in runc_list(rt.root)


def test_logs_follow_until_exit(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.1; done")
    lines = [e.data for e in rt.logs(cid, follow=True)]
    assert lines == [b"line1\n", b"line2\n", b"line3\n"]
    assert rt.get(cid).state.status == Status.EXITED


def test_wait_timeout_and_next_exit(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sleep", "100")
    with pytest.raises(LaminaError, match="timed out"):
        rt.wait(cid, timeout=0.2)
    rt.kill(cid, "TERM")  # pid 1 without a handler ignores TERM
    with pytest.raises(TimeoutError):
        rt.wait(cid, WaitCondition.NEXT_EXIT, timeout=0.3)
    rt.kill(cid)
    assert rt.wait(cid, timeout=10).exit_code == 137


def test_tty_resize_and_memory_update(rt: Engine, image: str) -> None:
    cid = run(rt, image, "sh", "-c", "sleep 0.5; stty size; sleep 100", tty=True)
    rt.resize(cid, 33, 77)
    wait_for(lambda: "33 77" in logs_text(rt, cid))
    rt.update(cid, Resources(memory=64 * 1024**2))
    limit = Path("/sys/fs/cgroup/memory/lamina", cid, "memory.limit_in_bytes")
    if limit.exists():
        assert int(limit.read_text()) == 64 * 1024**2
    assert rt.inspect(cid)["HostConfig"]["Memory"] == 64 * 1024**2  # type: ignore[index]
    rt.remove(cid, force=True)
