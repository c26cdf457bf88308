"""Jobs and cron (``lamina.deploy._jobs``) with real containers on a real network made
with the engine's networks API: a run is a container named and labelled for its
deployment, service and number, on the deployment's network (it reaches a replica by
name), with its status, exit code and logs; runs started at once get distinct
numbers; the history keeps the newest finished runs and every running one; cron due
times from the schedule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from leak_check import assert_clean, pid_stopped
from runtime_fixtures import IMAGE_REF, NEEDS_NETAVARK, cli_image_root, remove_all_containers, until

from lamina.deploy._jobs import (
    HISTORY,
    JobRun,
    cron_due,
    cron_tick,
    is_one_off,
    job_runs,
    next_run,
    prune_history,
    run_job,
    wait_job,
)
from lamina.engine import ContainerConfig, Engine, open_engine
from lamina.engine._options import RunOptions, prepare_run

pytestmark = pytest.mark.timeout(240)

DEPLOYMENT = "shop"
NETWORK = "shop"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    r = cli_image_root(tmp_path_factory, "jobs")
    yield r
    remove_all_containers(r)
    with open_engine(r) as engine:
        for net in engine.networks.list():
            if net.name == NETWORK:
                engine.networks.remove(net.id)
    assert_clean(r, set())  # network leaks included


@pytest.fixture
def engine(root: Path) -> Iterator[Engine]:
    with open_engine(root) as eng:
        yield eng
    remove_all_containers(root)


def template(engine: Engine, *cmd: str, network: str | None = None) -> ContainerConfig:
    """A service's config as the controller makes it for a replica: settled for the
    image and the deployment's network, the service's name as an alias."""
    opts = RunOptions(
        network=network or "none",
        network_aliases=["task"] if network else (),
        env=["GREETING=hello"],
        labels=["tier=batch", "lamina.replica=0", "lamina.spec-hash=abc"],  # the controller's
    )
    config, _warnings = prepare_run(engine, opts, image=IMAGE_REF, command=list(cmd))
    return config


def logs(engine: Engine, name: str) -> bytes:
    return b"".join(entry.data for entry in engine.logs(name))


@NEEDS_NETAVARK
def test_a_run_is_a_labelled_container_on_the_network(engine: Engine) -> None:
    if not any(n.name == NETWORK for n in engine.networks.list()):
        engine.networks.create(NETWORK)
    replica = engine.create(template(engine, "sleep", "1000", network=NETWORK))
    engine.rename(replica.id, "shop-web-1")
    engine.start(replica.id)
    ok = template(engine, "sh", "-c", "ping -c1 -W5 shop-web-1 >/dev/null && echo $GREETING",
                  network=NETWORK)  # fmt: skip
    first = run_job(engine, DEPLOYMENT, "task", ok, NETWORK)
    assert (first.id, first.container, first.service) == (1, "shop-task-job-1", "task")
    done = wait_job(engine, first, timeout=60)
    assert (done.status, done.exit_code) == ("succeeded", 0), logs(engine, first.container)
    assert done.started is not None and done.finished is not None
    assert done.finished >= done.started
    assert logs(engine, done.container) == b"hello\n"
    c = engine.get(done.container)
    labels = c.config.labels
    assert labels["lamina.deployment"] == "shop" and labels["lamina.service"] == "task"
    assert labels["lamina.job"] == "1" and labels["tier"] == "batch"
    assert "lamina.replica" not in labels and "lamina.spec-hash" not in labels
    assert is_one_off(labels)
    assert [(n.name, n.aliases) for n in c.config.networks] == [(NETWORK, [])]  # no alias
    assert c.config.restart.name == "no" and c.config.ports == []

    bad = template(engine, "sh", "-c", "echo oops >&2; exit 3", network=NETWORK)
    # No network named: the template's, without its aliases.
    second = wait_job(engine, run_job(engine, DEPLOYMENT, "task", bad, None), timeout=60)
    assert (second.id, second.status, second.exit_code) == (2, "failed", 3)
    networks = engine.get(second.container).config.networks
    assert [(n.name, n.aliases) for n in networks] == [(NETWORK, [])]
    assert logs(engine, second.container) == b"oops\n"
    runs = job_runs(engine, DEPLOYMENT)
    assert [(r.id, r.status) for r in runs] == [(1, "succeeded"), (2, "failed")]
    assert job_runs(engine, DEPLOYMENT, "other") == []
    assert job_runs(engine, "elsewhere") == []


def test_history_keeps_the_newest_finished_runs_and_running_ones(engine: Engine) -> None:
    long = run_job(engine, DEPLOYMENT, "batch", template(engine, "sleep", "1000"), None)
    quick = template(engine, "true")
    for _ in range(HISTORY + 2):
        wait_job(engine, run_job(engine, DEPLOYMENT, "batch", quick, None), timeout=60)
    runs = job_runs(engine, DEPLOYMENT, "batch")
    assert [r.id for r in runs] == [1, *range(4, HISTORY + 4)]
    assert runs[0] == JobRun(1, "batch", long.container, "running", None, runs[0].started, None,
                             long.created)  # fmt: skip
    engine.kill(long.container)
    wait_job(engine, long, timeout=30)
    assert prune_history(engine, DEPLOYMENT, "batch") == [long.container]
    assert len(job_runs(engine, DEPLOYMENT, "batch")) == HISTORY


def test_runs_started_at_once_get_distinct_numbers(root: Path, engine: Engine) -> None:
    quick = template(engine, "true")
    got: list[JobRun] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(4)

    def racer() -> None:
        try:
            with open_engine(root) as own:
                gate.wait()
                got.append(run_job(own, DEPLOYMENT, "race", quick, None))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=racer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.id for r in got) == [1, 2, 3, 4]
    assert len({r.container for r in got}) == 4


def local(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_cron_due_times() -> None:
    every5 = "*/5 * * * *"
    assert next_run(every5, local("2026-03-01T10:01:00")) == local("2026-03-01T10:05:00")
    assert next_run(every5, local("2026-03-01T10:05:00")) == local("2026-03-01T10:10:00")
    assert not cron_due(every5, local("2026-03-01T10:01:00"), local("2026-03-01T10:04:59"))
    assert cron_due(every5, local("2026-03-01T10:01:00"), local("2026-03-01T10:05:00"))
    # Many ticks missed: due (once: the caller records one run).
    assert cron_due(every5, local("2026-03-01T10:01:00"), local("2026-03-02T00:00:00"))
    # ZLayer's six fields, seconds first.
    every10s = "*/10 * * * * *"
    assert next_run(every10s, local("2026-03-01T10:00:01")) == local("2026-03-01T10:00:10")
    assert next_run("0 30 2 * * *", local("2026-03-01T10:00:00")) == local("2026-03-02T02:30:00")
    with pytest.raises(ValueError, match="invalid cron schedule"):
        next_run("61 * * * *", 0.0)
    with pytest.raises(ValueError, match="invalid cron schedule"):
        next_run("every day", 0.0)


_KILLED_RUN = """
import sys
from pathlib import Path
from lamina.deploy._jobs import run_job
from lamina.engine import open_engine
from lamina.engine._options import RunOptions, prepare_run
with open_engine(Path(sys.argv[1])) as engine:
    config, _ = prepare_run(engine, RunOptions(), image=sys.argv[2], command=["true"])
    run_job(engine, "shop", "nightly", config, None)
"""


def test_cron_runs_when_due_once_and_a_killed_start_is_finished(root: Path, engine: Engine) -> None:
    """A yearly schedule deployed before the last new year: due now; made by a process
    killed before it started the run, which the next tick starts rather than making
    another; then not due again (the runs are the memory, nothing else)."""
    yearly = "0 0 1 1 *"
    deployed = local(f"{datetime.now().year - 1}-12-31T00:00:00")
    env = {**os.environ, "LAMINA_TEST_STOP_AT": "job:created"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(root), IMAGE_REF], env=env)
    try:
        until(lambda: pid_stopped(proc.pid), 60)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [pending] = job_runs(engine, DEPLOYMENT, "nightly")
    assert engine.get(pending.container).state.status == "created"
    quick = template(engine, "true")
    assert cron_tick(engine, DEPLOYMENT, "nightly", yearly, quick, None, since=deployed) is None
    assert wait_job(engine, pending, timeout=30).status == "succeeded"
    # Without the pending run: due (new year since it was deployed), once.
    engine.remove(pending.container)
    run = cron_tick(engine, DEPLOYMENT, "nightly", yearly, quick, None, since=deployed)
    assert run is not None and run.id == 1
    assert wait_job(engine, run, timeout=30).status == "succeeded"
    assert cron_tick(engine, DEPLOYMENT, "nightly", yearly, quick, None, since=deployed) is None
    assert len(job_runs(engine, DEPLOYMENT, "nightly")) == 1
