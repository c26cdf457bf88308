"""Health checks with real containers (runc + conmon), as Docker has them: the
``--health-*`` flags and ``--no-healthcheck`` (Docker's messages), an image's
HEALTHCHECK from ``lamina build`` merged with the flags field by field; the states
starting -> healthy -> unhealthy -> healthy again, the start period and retries,
a hanging check killed by its timeout (the exec's processes, not the container), the
output kept as Docker keeps it, the check running inside the container; ``ps``
STATUS and ``--filter health=``, ``health_status`` events, ``State.Health`` in
inspect, kept when stopped and reset by a start. Nobody starts a daemon here: the
checks run all the same (the health runner), a runner killed with SIGKILL is
replaced by the next command, and none is left once no container needs checks.

Intervals are a few hundred ms to keep the file's time low.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from leak_check import assert_clean, health_runners
from runtime_fixtures import (
    IMAGE_REF,
    cli_image_root,
    error_line,
    lamina_cli,
    lamina_ok,
    remove_all_containers,
    until,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    r = cli_image_root(tmp_path_factory, "health")
    yield r
    remove_all_containers(r)


@pytest.fixture(autouse=True)
def clean(root: Path) -> Iterator[None]:
    yield
    ids = set(lamina_ok(root, "ps", "-a", "-q", "--no-trunc").split())
    remove_all_containers(root)
    until(lambda: not health_runners(root), 20)  # the runner goes with the last check
    assert_clean(root, ids)


def health(root: Path, name: str) -> dict[str, Any] | None:
    state = json.loads(lamina_ok(root, "inspect", name))[0]["State"]
    found: dict[str, Any] | None = state.get("Health")
    return found


def status(root: Path, name: str) -> str:
    h = health(root, name)
    return h["Status"] if h else "none"


def ps_status(root: Path, name: str) -> str:
    return lamina_ok(root, "ps", "-a", "--filter", f"name=^{name}$", "--format",
                     "{{.Status}}").strip()  # fmt: skip


def filtered(root: Path, value: str) -> list[str]:
    return lamina_ok(root, "ps", "-a", "--filter", f"health={value}", "--format",
                     "{{.Names}}").split()  # fmt: skip


def events(root: Path, since: float, name: str) -> list[dict[str, Any]]:
    out = lamina_ok(root, "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
                    "--filter", f"container={name}", "--format", "{{json .}}")  # fmt: skip
    return [json.loads(line) for line in out.splitlines()]


def runner_pids(root: Path) -> list[int]:
    return health_runners(root)


def test_flags_checked_as_docker_does(root: Path) -> None:
    conflict = "--no-healthcheck conflicts with --health-* options"
    cases = {
        ("--no-healthcheck", "--health-cmd", "true"): conflict,
        ("--no-healthcheck", "--health-interval", "-1s"): conflict,
        ("--health-interval", "-1s"): "--health-interval cannot be negative",
        ("--health-timeout", "-5ms"): "--health-timeout cannot be negative",
        ("--health-retries", "-1"): "--health-retries cannot be negative",
        ("--health-start-period", "-1m"): "--health-start-period cannot be negative",
        ("--health-start-interval", "-2s"): "--health-start-interval cannot be negative",
        ("--health-interval", "5"): 'invalid argument "5" for "--health-interval" flag: '
        'time: missing unit in duration "5"',
        ("--health-timeout", "soon"): 'invalid argument "soon" for "--health-timeout" flag: '
        'time: invalid duration "soon"',
        ("--health-cmd", "true", "--health-interval", "500us"):
            "Interval in Healthcheck cannot be less than 1ms",
        ("--health-cmd", "true", "--health-start-interval", "10us"):
            "StartInterval in Healthcheck cannot be less than 1ms",
    }  # fmt: skip
    for flags, message in cases.items():
        r = lamina_cli(root, "create", *flags, IMAGE_REF, "true")
        assert r.returncode == 125, (flags, r.stderr)
        assert error_line(r.stderr) == f"lamina: error: {message}", flags
    r = lamina_cli(root, "ps", "--filter", "health=sick")
    assert r.returncode == 125
    assert error_line(r.stderr).startswith(
        "lamina: error: Unrecognised filter value for health: sick"
    )
    assert lamina_ok(root, "ps", "-a", "-q") == ""  # nothing was created


def test_starting_healthy_unhealthy_and_healthy_again(root: Path) -> None:
    since = time.time()
    lamina_ok(root, "run", "-d", "--name", "web", "--health-cmd", "cat /dev/shm/ok",
              "--health-interval", "300ms", "--health-retries", "2",
              "--health-start-period", "60s", "--health-start-interval", "200ms",
              IMAGE_REF, "sleep", "300")  # fmt: skip
    cfg = json.loads(lamina_ok(root, "inspect", "web"))[0]["Config"]["Healthcheck"]
    assert cfg == {"Test": ["CMD-SHELL", "cat /dev/shm/ok"], "Interval": 300_000_000,
                   "StartPeriod": 60_000_000_000, "StartInterval": 200_000_000,
                   "Retries": 2}  # fmt: skip
    # Starting: failures within the start period do not count.
    until(lambda: len((health(root, "web") or {}).get("Log") or []) >= 3, 20)
    h = health(root, "web")
    assert h is not None and h["Status"] == "starting" and h["FailingStreak"] == 0
    assert {e["ExitCode"] for e in h["Log"]} == {1}
    assert "cat: can't open '/dev/shm/ok'" in h["Log"][-1]["Output"]
    assert ps_status(root, "web").endswith("(health: starting)")
    assert filtered(root, "starting") == ["web"] and filtered(root, "healthy") == []

    lamina_ok(root, "exec", "web", "sh", "-c", "echo fine > /dev/shm/ok")
    until(lambda: status(root, "web") == "healthy", 20)
    h = health(root, "web")
    assert h is not None and h["Log"][-1]["ExitCode"] == 0
    assert h["Log"][-1]["Output"] == "fine\n"
    assert len(h["Log"]) == 5  # the last five
    assert ps_status(root, "web").endswith("(healthy)")
    assert filtered(root, "healthy") == ["web"] and filtered(root, "starting") == []

    # Healthy, failures count even within the start period: two in a row (retries).
    lamina_ok(root, "exec", "web", "rm", "/dev/shm/ok")
    until(lambda: status(root, "web") == "unhealthy", 20)
    assert ps_status(root, "web").endswith("(unhealthy)")
    assert filtered(root, "unhealthy") == ["web"]

    lamina_ok(root, "exec", "web", "touch", "/dev/shm/ok")
    until(lambda: status(root, "web") == "healthy", 20)
    h = health(root, "web")
    assert h is not None and h["FailingStreak"] == 0

    seen = events(root, since, "web")
    changes = [e["Action"] for e in seen if e["Action"].startswith("health_status")]
    assert changes == ["health_status: healthy", "health_status: unhealthy",
                       "health_status: healthy"]  # fmt: skip
    # Between healthy and unhealthy: exactly ``retries`` failed checks (exec_die events).
    actions = [e["Action"] for e in seen]
    first_bad = actions.index("health_status: unhealthy")
    last_good = actions.index("health_status: healthy")
    dies = [e for e in seen[last_good:first_bad] if e["Action"] == "exec_die"]
    codes = [e["Actor"]["Attributes"]["exitCode"] for e in dies]
    assert codes[-2:] == ["1", "1"] and "1" not in codes[:-2], codes
    assert all(e["Actor"]["Attributes"]["name"] == "web" for e in seen)

    # Stopped: checks end, the last status stays (Docker's); a start resets it to
    # starting with a streak of 0, its log kept. The file is on the run's /dev/shm, so
    # the new run's checks fail (within its start period: it stays starting, however
    # slow this machine is) until the file is back.
    lamina_ok(root, "stop", "-t", "0", "web")
    assert status(root, "web") == "healthy"
    assert not ps_status(root, "web").endswith(")")  # "Exited (137) ..."
    before = (health(root, "web") or {})["Log"]
    lamina_ok(root, "start", "web")
    h = health(root, "web")
    assert h is not None and h["Status"] == "starting" and h["FailingStreak"] == 0
    # the old run's log is kept; a check of the new run may already be in it (the last
    # five: the oldest then rotated out)
    kept = [entry for entry in h["Log"] if entry in before]
    assert kept and kept == before[-len(kept):] and h["Log"][: len(kept)] == kept
    lamina_ok(root, "exec", "web", "touch", "/dev/shm/ok")
    until(lambda: status(root, "web") == "healthy", 20)


def test_timeout_kills_the_check_not_the_container(root: Path) -> None:
    lamina_ok(root, "run", "-d", "--name", "slow", "--health-cmd", "echo partial; sleep 31",
              "--health-timeout", "300ms", "--health-interval", "200ms", "--health-retries",
              "2", IMAGE_REF, "sleep", "300")  # fmt: skip
    until(lambda: status(root, "slow") == "unhealthy", 20)
    h = health(root, "slow")
    assert h is not None
    last = h["Log"][-1]
    assert last["ExitCode"] == -1
    assert last["Output"] == "Health check exceeded timeout (300ms): partial\n"
    assert lamina_ok(root, "inspect", "-f", "{{.State.Status}}", "slow").strip() == "running"
    # Every timed-out check was killed, its child too: at most the one in flight runs.
    procs = lamina_ok(root, "exec", "slow", "ps", "-o", "args")
    assert procs.count("sleep 31") <= 1, procs


def test_check_runs_inside_the_container_output_cut(root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "host-only"
    marker.write_text("the host's\n")
    check = f"cat /inside; head -c 5000 /dev/zero | tr '\\0' x; test ! -e {marker}"
    lamina_ok(root, "run", "-d", "--name", "inside", "--health-cmd", check,
              "--health-interval", "200ms", IMAGE_REF,
              "sh", "-c", "echo in > /inside; exec sleep 300")  # fmt: skip
    until(lambda: status(root, "inside") == "healthy", 20)
    h = health(root, "inside")
    assert h is not None
    out = h["Log"][-1]["Output"]
    assert out == "in\n" + "x" * (4096 - 3) + "..."  # Docker's 4 KiB, then "..."


def test_image_healthcheck_from_build_and_no_healthcheck(root: Path, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {IMAGE_REF}\n"
        'HEALTHCHECK --interval=250ms --timeout=2s --retries=1 CMD ["cat", "/ready"]\n'
    )
    lamina_ok(root, "build", "-t", "health/app:1", str(ctx))
    image_check = json.loads(lamina_ok(root, "image", "inspect", "health/app:1"))[0]["Config"][
        "Healthcheck"
    ]
    assert image_check == {"Test": ["CMD", "cat", "/ready"], "Interval": 250_000_000,
                           "Timeout": 2_000_000_000, "Retries": 1}  # fmt: skip
    lamina_ok(root, "run", "-d", "--name", "img", "health/app:1", "sleep", "300")
    until(lambda: status(root, "img") == "unhealthy", 20)  # one failure (retries 1)
    lamina_ok(root, "exec", "img", "touch", "/ready")
    until(lambda: status(root, "img") == "healthy", 20)

    # Flags override the image's check field by field.
    lamina_ok(root, "create", "--name", "merged", "--health-retries", "4",
              "--health-timeout", "1s", "health/app:1", "sleep", "300")  # fmt: skip
    merged = json.loads(lamina_ok(root, "inspect", "merged"))[0]
    assert merged["Config"]["Healthcheck"] == {"Test": ["CMD", "cat", "/ready"],
                                               "Interval": 250_000_000,
                                               "Timeout": 1_000_000_000, "Retries": 4}  # fmt: skip
    assert "Health" not in merged["State"]  # never started: no state yet

    lamina_ok(root, "run", "-d", "--name", "off", "--no-healthcheck", "health/app:1",
              "sleep", "300")  # fmt: skip
    off = json.loads(lamina_ok(root, "inspect", "off"))[0]
    assert off["Config"]["Healthcheck"]["Test"] == ["NONE"]  # the rest merged, as dockerd
    assert "Health" not in off["State"]
    assert "off" in filtered(root, "none") and "img" not in filtered(root, "none")
    assert ps_status(root, "off").startswith("Up") and not ps_status(root, "off").endswith(")")


def test_runner_killed_is_replaced_and_none_without_checks(root: Path) -> None:
    assert not (root / "daemon.json").exists()  # no daemon serves this root
    lamina_ok(root, "run", "-d", "--name", "plain", IMAGE_REF, "sleep", "300")
    assert runner_pids(root) == []  # nothing to check: no runner
    lamina_ok(root, "run", "-d", "--name", "watched", "--health-cmd", "true",
              "--health-interval", "200ms", IMAGE_REF, "sleep", "300")  # fmt: skip
    until(lambda: status(root, "watched") == "healthy", 20)
    [pid] = runner_pids(root)
    os.kill(pid, signal.SIGKILL)
    until(lambda: pid not in runner_pids(root), 10)
    count = len((health(root, "watched") or {})["Log"])  # this command started a new one
    until(lambda: len(runner_pids(root)) == 1 and runner_pids(root) != [pid], 10)
    ends = {e["End"] for e in (health(root, "watched") or {})["Log"]}
    until(lambda: {e["End"] for e in (health(root, "watched") or {})["Log"]} - ends, 10)
    assert count >= 1
    lamina_ok(root, "rm", "-f", "watched")
    until(lambda: not runner_pids(root), 10)  # no container needs checks: it exits


def test_checks_of_a_daemon_created_container_outlive_the_daemon(root: Path) -> None:
    from daemon_fixtures import running_daemon

    with running_daemon(root) as daemon, daemon.client() as api:
        body = {"image": IMAGE_REF, "command": ["sleep", "300"], "name": "served",
                "health_cmd": "true", "health_interval": "200ms"}  # fmt: skip
        r = api.post("/v1/containers", json=body)
        assert r.status_code == 201, r.text
        assert api.post("/v1/containers/served/start").status_code == 204
        until(lambda: api.get("/v1/containers/served").json()["State"]["Health"]["Status"]
              == "healthy", 20)  # fmt: skip
        listed = api.get("/v1/containers", params={"filters": '{"health": ["healthy"]}'})
        assert [c["name"] for c in listed.json()] == ["served"]
        daemon.kill()  # SIGKILL: the checks go on without it
    ends = {e["End"] for e in (health(root, "served") or {})["Log"]}
    until(lambda: {e["End"] for e in (health(root, "served") or {})["Log"]} - ends, 10)
    assert status(root, "served") == "healthy"


@pytest.mark.skipif(
    shutil.which("mkfs.erofs") is None or shutil.which("qemu-system-x86_64") is None,
    reason="VM containers need erofs-utils and QEMU",
)
def test_vm_container_checks_and_their_timeout(root: Path) -> None:
    lamina_ok(root, "run", "-d", "--isolation", "vm", "--name", "vm", "--health-cmd",
              "echo vm; sleep 31", "--health-timeout", "1s", "--health-interval", "300ms",
              "--health-retries", "2", IMAGE_REF, "sleep", "300")  # fmt: skip
    until(lambda: status(root, "vm") == "unhealthy", 60)
    h = health(root, "vm")
    assert h is not None
    assert h["Log"][-1] == {**h["Log"][-1], "ExitCode": -1,
                            "Output": "Health check exceeded timeout (1s): vm\n"}  # fmt: skip
    # The check was killed, in the guest, not the container.
    assert lamina_ok(root, "inspect", "-f", "{{.State.Status}}", "vm").strip() == "running"
    procs = lamina_ok(root, "exec", "vm", "ps", "-o", "args")
    assert procs.count("sleep 31") <= 1, procs
