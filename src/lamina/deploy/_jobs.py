"""Jobs and cron services: one run of a job is one container, and the containers are
the history.

A run of service ``S`` of deployment ``D`` is the container ``D-S-job-K`` labelled
``lamina.deployment=D``, ``lamina.service=S``, ``lamina.job=K`` (K counts up from 1 per
service), made from the service's container config as the controller makes it for a
replica (``template``) with no restart policy, no health check, no published port and
no alias on the network: a job is not one of the service's addresses. It runs
detached (conmon keeps it, whatever happens to the daemon); its status, exit code and
times are the container's, its output the container's logs. Two runs started at once
cannot take one number: the engine refuses a second container of one name, and the
loser takes the next number. ``prune_history`` keeps the newest ``HISTORY`` runs of a
service, and any older one still running.

Cron: ``next_run``/``cron_due`` on the schedule as ``_units.cron_schedule`` reads it
(five fields, or ZLayer's six or seven with seconds first), in the host's local time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from lamina._hooks import stop_point
from lamina.errors import AlreadyExists, LaminaError, NotFound

if TYPE_CHECKING:
    from lamina.engine import Container, ContainerConfig, Engine

HISTORY = 10  # runs kept per service
DEPLOYMENT_LABEL = "lamina.deployment"
SERVICE_LABEL = "lamina.service"
JOB_LABEL = "lamina.job"  # a job's run: its number
INIT_LABEL = "lamina.init"  # an init step's init.run: the step's id
# A replica's own labels (the controller's): a one-off container made from a
# replica's config must not pass for one.
_REPLICA_LABELS = ("lamina.replica", "lamina.spec-hash")
_NO_HEALTHCHECK = {"Test": ["NONE"]}  # Docker's HealthConfig that turns the image's off

JobStatus = Literal["running", "succeeded", "failed"]


@dataclass(frozen=True)
class JobRun:
    """One run of a job (or cron) service, as its container says."""

    id: int  # K: the run's number within its service
    service: str
    container: str  # the container's name, D-S-job-K (what ``logs`` takes)
    status: JobStatus
    exit_code: int | None  # None while running
    started: float | None
    finished: float | None
    created: float = 0.0  # when the run was made (a cron service's last run counts from it)


def is_one_off(labels: Mapping[str, str]) -> bool:
    """Whether a container with ``labels`` is a job's run or an init step's, not a
    replica (the deployment's label is on all three)."""
    return JOB_LABEL in labels or INIT_LABEL in labels


def one_off_config(
    template: ContainerConfig,
    *,
    name: str,
    labels: dict[str, str],
    network_name: str | None,
    command: list[str] | None = None,
    entrypoint: list[str] | None = None,
) -> ContainerConfig:
    """A container of a service's config that is not one of its replicas (a job's run,
    an init step's ``init.run``): on ``network_name`` (None: the template's networks)
    with none of the service's aliases or static addresses, no published port, no
    restart policy, no health check, no replica label. ``command``/``entrypoint``
    replace the template's when given."""
    from lamina.engine import RestartPolicy
    from lamina.runtime._types import NetworkRequest

    kept = {k: v for k, v in template.labels.items() if k not in _REPLICA_LABELS}
    names = [network_name] if network_name is not None else [n.name for n in template.networks]
    changes: dict[str, object] = {
        "name": name,
        "labels": {**kept, **labels},
        "networks": [NetworkRequest(name=n) for n in names],
        "ports": [],
        "publish_all": False,
        "restart": RestartPolicy(),
        "auto_remove": False,
        "healthcheck": dict(_NO_HEALTHCHECK),
        "tty": False,
        "stdin_open": False,
    }
    if network_name is not None:
        changes["network"] = network_name
    if command is not None:
        changes["command"] = command
    if entrypoint is not None:
        changes["entrypoint"] = entrypoint
    return dataclasses.replace(template, **changes)  # type: ignore[arg-type]


def _service_filter(deployment: str, service: str | None) -> dict[str, list[str]]:
    labels = [f"{DEPLOYMENT_LABEL}={deployment}", JOB_LABEL]
    if service is not None:
        labels.append(f"{SERVICE_LABEL}={service}")
    return {"label": labels}


def run_job(
    engine: Engine,
    deployment: str,
    service_name: str,
    template: ContainerConfig,
    network_name: str | None,
) -> JobRun:
    """Start one run of the job ``service_name`` (not waited for: ``wait_job``). A
    start that fails (a missing command) raises, and the run stays in the history as
    failed."""
    taken = {run.id for run in job_runs(engine, deployment, service_name)}
    number = max(taken, default=0) + 1
    while True:
        name = f"{deployment}-{service_name}-job-{number}"
        labels = {
            DEPLOYMENT_LABEL: deployment,
            SERVICE_LABEL: service_name,
            JOB_LABEL: str(number),
        }
        config = one_off_config(template, name=name, labels=labels, network_name=network_name)
        try:
            container = engine.create(config)
            break
        except AlreadyExists:  # another run took the number first
            number += 1
    stop_point("job:created")
    engine.start(container.id)
    prune_history(engine, deployment, service_name)
    return _run_of(engine, container.id)


def start_pending(engine: Engine, deployment: str, service: str | None = None) -> list[str]:
    """Start the runs that were made but never started (their starter died between
    the two): they were asked for. Returns their containers."""
    started = []
    for c in engine.list(all=True, filters=_service_filter(deployment, service)):
        if c.state.status == "created" and _job_run(c) is not None:
            with contextlib.suppress(LaminaError):  # started by someone else meanwhile
                engine.start(c.id)
                started.append(c.name)
    return started


def wait_job(engine: Engine, run: JobRun, timeout: float | None = None) -> JobRun:
    """The run once it has ended (WaitTimeout after ``timeout`` seconds)."""
    engine.wait(run.container, timeout=timeout)
    return _run_of(engine, run.container)


def job_runs(engine: Engine, deployment: str, service: str | None = None) -> list[JobRun]:
    """The runs of the deployment's jobs (of ``service`` only, if given), oldest first
    per service."""
    found = [
        run
        for c in engine.list(all=True, filters=_service_filter(deployment, service))
        if (run := _job_run(c)) is not None
    ]
    return sorted(found, key=lambda r: (r.service, r.id))


def prune_history(engine: Engine, deployment: str, service: str, keep: int = HISTORY) -> list[str]:
    """Remove the runs of ``service`` older than its newest ``keep``, except those
    still running. Returns the containers removed."""
    runs = job_runs(engine, deployment, service)
    removed = []
    for run in runs[: max(0, len(runs) - keep)]:
        if run.status == "running":
            continue
        try:
            engine.remove(run.container, force=True)
            removed.append(run.container)
        except LaminaError:  # removed by someone else meanwhile
            pass
    return removed


def _run_of(engine: Engine, ref: str) -> JobRun:
    run = _job_run(engine.get(ref))
    if run is None:
        raise NotFound(f"container {ref} is not a job's run")
    return run


def _job_run(c: Container) -> JobRun | None:
    labels = c.config.labels
    try:
        number = int(labels[JOB_LABEL])
    except (KeyError, ValueError):
        return None  # not one of ours
    state = c.state
    status: JobStatus
    if state.status in ("created", "running", "restarting", "paused"):
        status = "running"
    else:
        status = "succeeded" if state.exit_code == 0 else "failed"
    return JobRun(
        id=number,
        service=labels.get(SERVICE_LABEL, ""),
        container=c.name,
        status=status,
        exit_code=None if status == "running" else state.exit_code,
        started=state.started_at,
        finished=None if status == "running" else state.finished_at,
        created=c.created,
    )


# -- cron ------------------------------------------------------------------------------


def next_run(schedule: str, after: float) -> float:
    """The first time the schedule fires strictly after ``after`` (epoch seconds; the
    schedule is read in the host's local time). ValueError for a bad schedule."""
    from lamina.deploy._units import cron_schedule

    start = datetime.fromtimestamp(after).astimezone()
    return float(cron_schedule(schedule, start).get_next(float))


def cron_tick(
    engine: Engine,
    deployment: str,
    service_name: str,
    schedule: str,
    template: ContainerConfig,
    network_name: str | None,
    since: float,
    now: float | None = None,
) -> JobRun | None:
    """One look at a cron service (the converge loop's, each pass): its next run
    started if the schedule fired since its last run was made (or since ``since``,
    when the service was deployed, before the first). The runs are the memory: a
    restarted daemon neither repeats nor skips one. Runs may overlap, as ZLayer's."""
    start_pending(engine, deployment, service_name)
    runs = job_runs(engine, deployment, service_name)
    last = max([since, *(r.created for r in runs)])
    if not cron_due(schedule, last, now):
        return None
    return run_job(engine, deployment, service_name, template, network_name)


def cron_due(schedule: str, last_run: float, now: float | None = None) -> bool:
    """Whether the schedule fired after ``last_run`` and by ``now``: the controller
    passes the start of the service's last run (or, before the first, when the
    service was deployed). A missed tick runs once, however many were missed."""
    return next_run(schedule, last_run) <= (time.time() if now is None else now)
