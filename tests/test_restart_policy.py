"""Restart policies (``--restart``) with real containers, as Docker's behave: the
backoff between restarts (100 ms, doubling, reset after a long run), on-failure's
count, ``always`` after exit 0, a user's stop/kill ending the policy (also during
the backoff wait), ``rm -f`` and ``update --restart`` of a restarting container, the
restarting state in ``ps`` and ``inspect``, and the ``die``/``start``/``restart``
events. Every restart here happens with no lamina command alive: the exit command
(or the VM supervisor's) decides it, a detached restarter starts the container.

``LAMINA_TEST_RESTART_RESET`` (seconds; ``_restart.RESET_ENV``) shortens Docker's
10 s after which the backoff starts again at 100 ms, so that a reset, and many
quick restarts, take seconds. ``create`` keeps it in the container's record, so
that whichever process decides a restart (an exit command, a polling ``inspect``)
uses it.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from leak_check import assert_clean, pid_stopped, restarters
from runtime_fixtures import (
    IMAGE_REF,
    cli_image_root,
    error_line,
    lamina_cli,
    lamina_ok,
    remove_all_containers,
    until,
)

pytestmark = pytest.mark.timeout(180)

RESET_ENV = "LAMINA_TEST_RESTART_RESET"
# Exits 5 once /s exists (``exec NAME touch /s``), which each run first removes.
ON_SIGNAL = "rm -f /s; while [ ! -e /s ]; do sleep 0.05; done; exit 5"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_image_root(tmp_path_factory, "restart")


@pytest.fixture
def root(image_root: Path) -> Iterator[Path]:
    yield image_root
    remove_all_containers(image_root)
    until(lambda: restarters(image_root) == [], 20)


# -- what a user sees -------------------------------------------------------------------


def inspect(root: Path, ref: str) -> dict[str, Any]:
    [info] = json.loads(lamina_ok(root, "inspect", ref))
    return dict(info)


def state(root: Path, ref: str) -> tuple[str, int]:
    """``State.Status`` and ``RestartCount``."""
    info = inspect(root, ref)
    return info["State"]["Status"], info["RestartCount"]


def epoch(stamp: str) -> float:
    """Seconds since the epoch of an inspect time (RFC 3339, nanoseconds, UTC)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    when = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC)
    return when.timestamp() + float("0." + (fraction or "0"))


def events(root: Path, ref: str) -> list[dict[str, Any]]:
    """The container events of ``ref`` so far, Docker's JSON."""
    out = lamina_ok(root, "events", "--since", "10m", "--until", "0s", "--format", "json",
                    "--filter", f"container={ref}")  # fmt: skip
    return [json.loads(line) for line in out.splitlines()]


def actions(root: Path, ref: str) -> list[str]:
    return [e["Action"] for e in events(root, ref)]


def leases(root: Path) -> list[str]:
    try:
        return sorted(os.listdir(root / "leases"))
    except FileNotFoundError:
        return []


def run_d(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    r = lamina_cli(root, "run", "-d", *args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def waiting(root: Path, ref: str, seen: list[dict[str, Any]] | None = None) -> bool:
    """Restarting, with a second at least before its restart is due (the backoff is
    1.6 s from the 5th restart on): time to look and act before it. ``seen`` takes
    the inspect of that moment."""
    info = inspect(root, ref)
    if info["State"]["Status"] != "restarting" or info["RestartCount"] < 5:
        return False
    due = epoch(info["State"]["FinishedAt"]) + 0.1 * 2 ** (info["RestartCount"] - 1)
    if due - time.time() < 1.0:
        return False
    if seen is not None:
        seen.append(info)
    return True


def settled(root: Path, ref: str, count: int) -> bool:
    """Exited for good after ``count`` restarts (no restart pending)."""
    return state(root, ref) == ("exited", count)


# -- the policy as given -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--restart", "sometimes"], "invalid restart policy: unknown policy 'sometimes'; use "
         "one of 'no', 'always', 'on-failure', or 'unless-stopped'"),
        (["--restart", "always:3"],
         "invalid restart policy: maximum retry count can only be used with 'on-failure'"),
        (["--restart", "unless-stopped:-1"], "invalid restart policy: maximum retry count can "
         "only be used with 'on-failure' and cannot be negative"),
        (["--restart", "on-failure:-2"],
         "invalid restart policy: maximum retry count cannot be negative"),
        (["--restart", "on-failure:x"],
         "invalid restart policy format: maximum retry count must be an integer"),
        (["--restart", ":3"], "invalid restart policy format: no policy provided before colon"),
        (["--rm", "--restart", "always"],
         "conflicting options: cannot specify both --restart and --rm"),
    ],
)  # fmt: skip
def test_bad_policies_are_refused_with_dockers_messages(
    root: Path, args: list[str], message: str
) -> None:
    for command in ("run", "create"):
        r = lamina_cli(root, command, *args, IMAGE_REF, "true")
        assert r.returncode == 125
        assert error_line(r.stderr) == f"lamina: error: {message}"
    assert lamina_ok(root, "ps", "-a", "-q") == ""


def test_update_restart_of_an_rm_container_is_refused(root: Path) -> None:
    cid = lamina_ok(root, "create", "--rm", IMAGE_REF, "true").strip()
    r = lamina_cli(root, "update", "--restart", "always", cid)
    assert r.returncode != 0
    assert error_line(r.stderr) == (
        "lamina: error: Restart policy cannot be updated because AutoRemove is enabled "
        "for the container"
    )
    assert inspect(root, cid)["HostConfig"]["RestartPolicy"] == {
        "Name": "no", "MaximumRetryCount": 0}  # fmt: skip


# -- restarts ---------------------------------------------------------------------------------


def test_backoff_doubles_between_restarts_and_on_failure_counts(root: Path) -> None:
    """on-failure:4 of ``exit 1``: restarted 4 times, 100, 200, 400 and 800 ms after
    each exit, then exited for good with RestartCount 4; each restart is ``die``
    (exitCode 1), ``start``, ``restart``. on-failure:3 of ``exit 0``: never."""
    # No network: its setup (~0.2 s on a busy machine) is not the backoff measured here.
    failing = run_d(root, "--restart", "on-failure:4", "--network", "none", IMAGE_REF,
                    "sh", "-c", "exit 1")  # fmt: skip
    fine = run_d(root, "--restart", "on-failure:3", IMAGE_REF, "sh", "-c", "exit 0")
    until(lambda: settled(root, failing, 4), 30)
    got = events(root, failing)
    assert [e["Action"] for e in got] == ["create", "start"] + ["die", "start", "restart"] * 4 + [
        "die"
    ]
    assert {e["Actor"]["Attributes"]["exitCode"] for e in got if e["Action"] == "die"} == {"1"}
    dies = [e["timeNano"] for e in got if e["Action"] == "die"]
    starts = [e["timeNano"] for e in got if e["Action"] == "start"][1:]
    gaps = [(s - d) / 1e9 for d, s in zip(dies, starts, strict=False)]
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4, 0.8), strict=True):
        # The delay is waited from the decision, made after ``die``; the slack is the
        # restarter's start-up and a loaded machine's scheduling.
        assert delay <= gap < delay + 0.5, gaps
    assert inspect(root, failing)["State"]["ExitCode"] == 1
    assert settled(root, fine, 0)
    assert actions(root, fine) == ["create", "start", "die"]
    assert restarters(root) == [] and leases(root) == []


def test_always_restarts_after_exit_0_and_shows_restarting(root: Path) -> None:
    """``always`` restarts a container whose command succeeds; while it waits for its
    restart it is ``restarting``: ``Restarting (0) ... ago`` in ps, State.Restarting,
    Running, no Pid; ``ps`` lists it (as running)."""
    cid = run_d(root, "--restart", "always", IMAGE_REF, "true")
    seen: list[dict[str, Any]] = []
    until(lambda: waiting(root, cid, seen), 30)
    st = seen[0]["State"]
    assert (st["Running"], st["Restarting"], st["Paused"], st["Pid"]) == (True, True, False, 0)
    assert st["ExitCode"] == 0
    assert seen[0]["HostConfig"]["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0}
    line = lamina_ok(root, "ps", "--filter", f"id={cid}", "--format", "{{.Status}}").strip()
    assert line.startswith("Restarting (0) ") and line.endswith(" ago"), line
    r = lamina_cli(root, "stop", cid)
    assert r.returncode == 0, r.stderr
    assert state(root, cid)[0] == "exited"


def test_stop_and_kill_during_the_backoff_wait_win(root: Path) -> None:
    """A stop, kill, ``update --restart no`` or ``rm -f`` of a restarting container
    ends its wait at once: it is never started again (its restarter finds so and
    ends), ``rm -f`` removes it."""
    names = {"stopped": "stop", "killed": "kill", "updated": "update", "removed": "rm"}
    for name in names:
        run_d(root, "--name", name, "--restart", "always", IMAGE_REF, "sh", "-c", "exit 3")

    for name, command in names.items():
        cid = inspect(root, name)["Id"]
        until(lambda: waiting(root, name), 30)  # noqa: B023
        starts = actions(root, name).count("start")
        began = time.monotonic()
        if command == "update":
            r = lamina_cli(root, "update", "--restart", "no", name)
        elif command == "rm":
            r = lamina_cli(root, "rm", "-f", name)
        else:
            r = lamina_cli(root, command, name)
        assert r.returncode == 0, (command, r.stderr)
        assert time.monotonic() - began < 1.5  # a stop does not wait for anything
        until(lambda: restarters(root, cid) == [], 10)  # noqa: B023  its restarter ends
        if command == "rm":
            assert lamina_cli(root, "inspect", name).returncode != 0
            continue
        assert state(root, name)[0] == "exited"
        assert inspect(root, name)["State"]["ExitCode"] == 3
        assert actions(root, name).count("start") == starts
    until(lambda: restarters(root) == [], 10)
    for name in ("stopped", "killed", "updated"):  # nothing started them meanwhile
        assert state(root, name)[0] == "exited"
    assert "stop" in actions(root, "stopped")
    assert leases(root) == []


def test_stop_or_kill_ends_the_policy_until_the_next_start(root: Path) -> None:
    """A running ``always`` container stopped (or killed) by the user is not restarted;
    the next ``start`` brings the policy back: its own exit restarts it again."""
    for command in (["stop", "-t", "0"], ["kill"]):  # sh as PID 1 ignores SIGTERM
        cid = run_d(root, "--restart", "always", IMAGE_REF, "sh", "-c", ON_SIGNAL)
        assert lamina_cli(root, *command, cid).returncode == 0
        until(lambda: state(root, cid)[0] == "exited", 20)  # noqa: B023
        assert restarters(root) == []
        assert state(root, cid) == ("exited", 0)
        assert actions(root, cid).count("start") == 1
        lamina_ok(root, "start", cid)
        lamina_ok(root, "exec", cid, "touch", "/s")
        until(lambda: state(root, cid) == ("running", 1), 20)  # noqa: B023
        assert inspect(root, cid)["State"]["ExitCode"] == 0  # running again
        assert actions(root, cid)[-3:] == ["die", "start", "restart"]


def test_update_restart_changes_the_policy(root: Path) -> None:
    """``update --restart`` on a created container (its first run then restarts by the
    new policy) and on a running one (``no``: its exit is not restarted)."""
    made = lamina_ok(root, "create", IMAGE_REF, "sh", "-c", "exit 1").strip()
    lamina_ok(root, "update", "--restart", "on-failure:2", made)
    assert inspect(root, made)["HostConfig"]["RestartPolicy"] == {
        "Name": "on-failure", "MaximumRetryCount": 2}  # fmt: skip
    lamina_ok(root, "start", made)
    running = run_d(root, "--restart", "always", IMAGE_REF, "sh", "-c", ON_SIGNAL)
    lamina_ok(root, "update", "--restart", "no", running)
    lamina_ok(root, "exec", running, "touch", "/s")
    until(lambda: settled(root, made, 2), 20)
    until(lambda: state(root, running)[0] == "exited", 20)
    assert state(root, running) == ("exited", 0)
    assert inspect(root, running)["State"]["ExitCode"] == 5


def test_the_backoff_is_reset_after_a_long_run(root: Path) -> None:
    """A run that lasted the reset time (10 s in Docker; 0.5 s here through the test
    variable) sets the backoff back to 100 ms: runs of 0.6 s are restarted ~100 ms
    after each exit, never the 400 and 800 ms of the doubling."""
    # No network: its setup and teardown (~0.2 s each on a busy machine) are not the
    # backoff this measures.
    cid = run_d(root, "--restart", "on-failure:4", "--network", "none", IMAGE_REF,
                "sh", "-c", "sleep 0.6; exit 1", env={RESET_ENV: "0.5"})  # fmt: skip
    until(lambda: settled(root, cid, 4), 30)
    got = events(root, cid)
    dies = [e["timeNano"] for e in got if e["Action"] == "die"]
    starts = [e["timeNano"] for e in got if e["Action"] == "start"][1:]
    gaps = [(s - d) / 1e9 for d, s in zip(dies, starts, strict=False)]
    # Doubling, the last two would be 400 and 800 ms at least.
    assert len(gaps) == 4 and all(0.1 <= g < 0.8 for g in gaps), gaps
    assert sum(gaps) < 1.5, gaps


def test_many_restarts_leave_nothing_behind(root: Path) -> None:
    """A container restarted 20 times, then removed: no mounts, directories, runc
    state, cgroups, conmon or restarter processes, image holds or leases are left."""
    cid = run_d(root, "--restart", "on-failure:20", IMAGE_REF, "sh", "-c", "exit 1",
                env={RESET_ENV: "0"})  # fmt: skip
    until(lambda: settled(root, cid, 20), 150)  # each restart sets its network up again
    assert actions(root, cid).count("restart") == 20
    lamina_ok(root, "rm", cid)
    assert_clean(root, {cid})
    assert restarters(root) == [] and leases(root) == []


def test_a_killed_restarter_is_taken_over(root: Path) -> None:
    """SIGKILL of the restarter while it waits: the container does not stay
    ``restarting`` for ever; the next command's reconcile says so and starts another
    restarter, and the restart the policy owed goes ahead."""
    env = {"LAMINA_TEST_STOP_AT": "restart:waiting"}
    cid = run_d(root, "--restart", "on-failure:1", IMAGE_REF, "sh", "-c", "exit 1", env=env)
    until(lambda: len(restarters(root)) == 1 and pid_stopped(restarters(root)[0]), 20)
    [pid] = restarters(root)
    os.kill(pid, signal.SIGKILL)
    until(lambda: pid not in restarters(root), 10)
    r = lamina_cli(root, "ps", "-a")
    assert r.returncode == 0
    assert f"container {cid[:12]}: the process that was to restart it is gone" in r.stderr
    until(lambda: settled(root, cid, 1), 20)
    assert actions(root, cid) == ["create", "start", "die", "start", "restart", "die"]
    until(lambda: restarters(root) == [], 10)
    assert leases(root) == []


def test_a_foreground_run_returns_its_exit_and_the_restarts_go_on(root: Path) -> None:
    """``run`` waiting in the foreground finishes the exit itself (the exit command
    stands aside): the policy acts there too, and the run returns the first exit's
    code while the container goes on restarting."""
    r = lamina_cli(root, "run", "--name", "fg", "--restart", "on-failure:2", IMAGE_REF, "sh",
                   "-c", "exit 7")  # fmt: skip
    assert r.returncode == 7, r.stderr
    until(lambda: settled(root, "fg", 2), 20)


def test_a_vm_container_restarts_on_failure(root: Path) -> None:
    """The VM supervisor's exit path restarts a VM container as conmon's does."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("mkfs.erofs") is None:
        pytest.skip("needs qemu-system-x86_64 and erofs-utils")
    cid = run_d(root, "--isolation", "vm", "--restart", "on-failure:2", IMAGE_REF, "sh", "-c",
                "echo ran; exit 4")  # fmt: skip
    until(lambda: settled(root, cid, 2), 90)
    assert actions(root, cid) == ["create", "start"] + ["die", "start", "restart"] * 2 + ["die"]
    assert lamina_ok(root, "logs", cid).split() == ["ran"] * 3
    assert inspect(root, cid)["State"]["ExitCode"] == 4
    assert restarters(root) == [] and leases(root) == []
