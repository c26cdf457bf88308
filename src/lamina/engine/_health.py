"""Health checks, as Docker's (``HEALTHCHECK``, ``--health-*``): the check a container
runs, the rules its results follow, its state in the store, and who runs it.

The check is Docker's HealthConfig, with Docker's keys, in ``ContainerConfig.healthcheck``:
``Test`` (``["CMD", argv...]``, ``["CMD-SHELL", command]`` run by ``/bin/sh -c``,
``["NONE"]``), ``Interval``, ``Timeout``, ``StartPeriod``, ``StartInterval`` (ns) and
``Retries``; zero or absent means Docker's default (30s, 30s, 0, 5s, 3). ``create``
merges the run flags' over the image's field by field (``merge``), as dockerd does.

Two kinds of lamina's own need no tool in the image (deployments' ``tcp`` and
``http`` checks): ``["TCP", "PORT"]``, healthy when a TCP connect to 127.0.0.1:PORT
succeeds, and ``["HTTP", "URL"]`` or ``["HTTP", "URL", "STATUS"]``, healthy when a GET
of URL (``http://localhost:8080/healthz``; an IP address or localhost) answers STATUS
(default 200). They are made from inside the container's network namespace
(``lamina.network._probe``: a thread that joins it), a VM container's from the host
to its address on its first bridge network; each result's exit code is 0 or 1, its
output one line (``connect 127.0.0.1:80: connection refused``, ``HTTP 503``).

State (``Record.extra["health"]``): ``Status``, ``FailingStreak``, ``Log`` (the last
five results: Start and End in ns, ExitCode, Output cut at 4 KiB) and ``Run``, the
``started_at`` of the run it belongs to. A start needs no write: a state of another
run reads as ``starting`` with a streak of 0 (the log kept), as Docker resets it at
each start. A stopped container keeps its last status (Docker stops the checks and
keeps it); one never started has none.

Events: a change of status is Docker's ``health_status: <status>``. A result that
starts a failing streak (the first failed check of a healthy container) or ends one
without changing the status is lamina's ``health_check: failing`` / ``health_check:
passing`` (``exitCode``): Docker has no event for it, but a deployment's replica
leaves its service's name at its first failed check, and its controller learns of
it from this event. The Docker API leaves it out of its ``/events``.

Who runs the checks: the health runner (``lamina.engine.health_runner``), one process
per root holding ``health/runner.lock``, started in the background by the start of a
container with a check, or by any command's reconcile that finds such a container
running and no runner (killed); it exits once no running container has a check.
Each result is written under the container's lock, so every process sees it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina import _leases
from lamina.errors import LaminaError
from lamina.runtime._types import Record, Status

if TYPE_CHECKING:
    from lamina.engine._engine import Engine

SECOND = 1_000_000_000
DEFAULT_INTERVAL = 30 * SECOND
DEFAULT_TIMEOUT = 30 * SECOND
DEFAULT_START_PERIOD = 0
DEFAULT_START_INTERVAL = 5 * SECOND
DEFAULT_RETRIES = 3
MINIMUM_DURATION = 1_000_000  # Docker's floor for a duration that is set: 1ms
MAX_OUTPUT = 4096  # bytes of a check's output kept, then "..."
MAX_LOG = 5  # results kept

STARTING, HEALTHY, UNHEALTHY, NONE = "starting", "healthy", "unhealthy", "none"
TCP, HTTP = "TCP", "HTTP"  # lamina's test kinds besides Docker's CMD, CMD-SHELL, NONE
STATUSES = (STARTING, HEALTHY, UNHEALTHY, NONE)
# lamina's event (Docker has none) for a check that starts a failing streak, or ends
# one, while the status stays: "health_check: failing", "health_check: passing"
CHECK_EVENT, FAILING, PASSING = "health_check", "failing", "passing"
KEY = "health"  # in Record.extra
_DURATIONS = ("Interval", "Timeout", "StartPeriod", "StartInterval")

RUNNER_DIR = "health"
RUNNER_LOCK = "runner.lock"
RUNNER_LOG = "runner.log"


class InvalidHealthcheck(LaminaError, ValueError):
    """A health check Docker would refuse (its 125)."""

    exit_code = 125


# -- the check ----------------------------------------------------------------------------


@dataclass
class HealthFlags:
    """``run``/``create``'s health flags as given (durations as typed)."""

    cmd: str | None = None
    interval: str | None = None
    timeout: str | None = None
    retries: int | None = None
    start_period: str | None = None
    start_interval: str | None = None
    disabled: bool = False  # --no-healthcheck


def from_flags(flags: HealthFlags) -> dict[str, Any] | None:
    """The HealthConfig the flags ask for, with the Docker CLI's rules and messages;
    None when they ask for nothing (the image's check applies)."""
    durations = {
        key: _flag_duration(value, flag)
        for key, value, flag in (
            ("Interval", flags.interval, "--health-interval"),
            ("Timeout", flags.timeout, "--health-timeout"),
            ("StartPeriod", flags.start_period, "--health-start-period"),
            ("StartInterval", flags.start_interval, "--health-start-interval"),
        )
    }
    retries = flags.retries or 0
    if flags.disabled:
        if flags.cmd or retries or any(durations.values()):
            raise InvalidHealthcheck("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not (flags.cmd or retries or any(durations.values())):
        return None
    for key, flag in (("Interval", "--health-interval"), ("Timeout", "--health-timeout")):
        if durations[key] < 0:
            raise InvalidHealthcheck(f"{flag} cannot be negative")
    if retries < 0:
        raise InvalidHealthcheck("--health-retries cannot be negative")
    for key, flag in (("StartPeriod", "--health-start-period"),
                      ("StartInterval", "--health-start-interval")):  # fmt: skip
        if durations[key] < 0:
            raise InvalidHealthcheck(f"{flag} cannot be negative")
    check: dict[str, Any] = {"Test": ["CMD-SHELL", flags.cmd]} if flags.cmd else {}
    check.update((k, v) for k, v in durations.items() if v)
    if retries:
        check["Retries"] = retries
    return check


def _flag_duration(value: str | None, flag: str) -> int:
    """A Go duration flag (``1m30s``, ``-2s``, ``0``) in ns; Docker CLI's message when bad."""
    from lamina.image._config import parse_duration

    if value is None:
        return 0
    text = value.strip()
    sign = -1 if text.startswith("-") else 1
    try:
        return sign * parse_duration(text.lstrip("+-"))
    except ValueError:
        why = (
            f'missing unit in duration "{value}"'
            if text.lstrip("+-").replace(".", "").isdigit()
            else f'invalid duration "{value}"'
        )
        raise InvalidHealthcheck(f'invalid argument "{value}" for "{flag}" flag: time: {why}')


def validate(check: dict[str, Any] | None) -> None:
    """dockerd's rules for a HealthConfig sent to create (the API's, the CLI's), and
    the shapes of lamina's TCP and HTTP tests."""
    if check is None:
        return
    if not isinstance(check, dict):
        raise InvalidHealthcheck("Healthcheck must be an object")
    test = check.get("Test") or []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise InvalidHealthcheck("Test in Healthcheck must be a list of strings")
    if test and test[0] in (TCP, HTTP):
        _network_probe(test)
    for key in _DURATIONS:
        ns = check.get(key) or 0
        if not isinstance(ns, int) or (ns != 0 and ns < MINIMUM_DURATION):
            raise InvalidHealthcheck(f"{key} in Healthcheck cannot be less than 1ms")
    retries = check.get("Retries") or 0
    if not isinstance(retries, int) or retries < 0:
        raise InvalidHealthcheck("Retries in Healthcheck cannot be negative")


def merge(user: dict[str, Any] | None, image: dict[str, Any] | None) -> dict[str, Any] | None:
    """The container's check (dockerd's merge): the user's fields, each unset one (empty
    Test, zero duration or retries) taken from the image's."""
    if not image:
        return dict(user) if user else None
    if user is None:
        return dict(image)
    out = dict(user)
    for key in ("Test", *_DURATIONS, "Retries"):
        if not out.get(key) and image.get(key):
            out[key] = image[key]
    return {k: v for k, v in out.items() if v}


@dataclass(frozen=True)
class ExecProbe:
    """A command run in the container (CMD, CMD-SHELL)."""

    argv: list[str]


@dataclass(frozen=True)
class TcpProbe:
    """A TCP connect to 127.0.0.1:``port`` in the container's network namespace."""

    port: int


@dataclass(frozen=True)
class HttpProbe:
    """An HTTP GET of ``url`` in the container's network namespace, healthy when it
    answers ``expect_status``."""

    url: str
    expect_status: int = 200


Probe = ExecProbe | TcpProbe | HttpProbe


def probe_of(check: dict[str, Any] | None) -> Probe | None:
    """What the check does; None when there is none to run (no check, NONE, an empty,
    unknown or malformed one)."""
    argv = probe_argv(check)
    if argv is not None:
        return ExecProbe(argv)
    test = (check or {}).get("Test") or []
    if len(test) < 2 or test[0] not in (TCP, HTTP):
        return None
    try:
        return _network_probe(test)
    except InvalidHealthcheck:
        return None


def probe_argv(check: dict[str, Any] | None) -> list[str] | None:
    """What the check runs in the container (CMD as given, CMD-SHELL by ``/bin/sh -c``);
    None when it runs nothing there (no check, NONE, TCP, HTTP, an empty or unknown one)."""
    test = (check or {}).get("Test") or []
    if len(test) < 2:
        return None
    if test[0] == "CMD":
        return [str(a) for a in test[1:]]
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(str(a) for a in test[1:])]
    return None


def _network_probe(test: list[str]) -> TcpProbe | HttpProbe:
    """A TCP or HTTP test as a probe; InvalidHealthcheck naming what is wrong."""
    from lamina.network._probe import parse_http_url

    if test[0] == TCP:
        port = test[1] if len(test) == 2 else ""
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise InvalidHealthcheck(
                'Healthcheck TCP test must be ["TCP", PORT] with PORT from 1 to 65535, '
                f"not {test!r}"
            )
        return TcpProbe(int(port))
    if len(test) not in (2, 3):
        raise InvalidHealthcheck(
            f'Healthcheck HTTP test must be ["HTTP", URL] or ["HTTP", URL, STATUS], not {test!r}'
        )
    try:
        parse_http_url(test[1])
    except ValueError as e:
        raise InvalidHealthcheck(f"Healthcheck HTTP test: {e}") from None
    status = test[2] if len(test) == 3 else "200"
    if not (status.isascii() and status.isdigit() and 100 <= int(status) <= 599):
        raise InvalidHealthcheck(
            f"Healthcheck HTTP test: expected status {status!r} must be a number from 100 to 599"
        )
    return HttpProbe(test[1], int(status))


@dataclass(frozen=True)
class Timing:
    """A check's durations in seconds, defaults applied."""

    interval: float
    timeout: float
    start_period: float
    start_interval: float
    retries: int
    timeout_ns: int


def timing(check: dict[str, Any]) -> Timing:
    def ns(key: str, default: int) -> int:
        return int(check.get(key) or default)

    timeout_ns = ns("Timeout", DEFAULT_TIMEOUT)
    return Timing(
        interval=ns("Interval", DEFAULT_INTERVAL) / SECOND,
        timeout=timeout_ns / SECOND,
        start_period=ns("StartPeriod", DEFAULT_START_PERIOD) / SECOND,
        start_interval=ns("StartInterval", DEFAULT_START_INTERVAL) / SECOND,
        retries=int(check.get("Retries") or DEFAULT_RETRIES),
        timeout_ns=timeout_ns,
    )


def next_delay(t: Timing, elapsed: float, status: str) -> float:
    """How long until the next check, ``elapsed`` seconds after the start (Docker's
    monitor): the interval, the start interval while starting within the start period,
    never past the start period's end."""
    if elapsed >= t.start_period:
        return t.interval
    remaining = t.start_period - elapsed
    if remaining < t.interval:
        return remaining
    return t.start_interval if status == STARTING else t.interval


# -- results and state ---------------------------------------------------------------------


@dataclass
class Result:
    """One check: when it ran (ns since the epoch), its exit code (-1: it could not run or
    timed out) and its output."""

    start: int
    end: int
    exit_code: int
    output: str


def output_text(data: bytes, truncated: bool) -> str:
    """Docker's stored output: the first 4 KiB, ``...`` when more came."""
    text = data[:MAX_OUTPUT].decode("utf-8", errors="replace")
    return text + "..." if truncated or len(data) > MAX_OUTPUT else text


def timeout_output(timeout_ns: int, output: str) -> str:
    what = f"Health check exceeded timeout ({go_duration(timeout_ns)})"
    return f"{what}: {output}" if output else what


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()``: ``500ms``, ``1.5s``, ``1m30s``, ``2h0m0s``."""
    if ns == 0:
        return "0s"
    sign, u = ("-" if ns < 0 else ""), abs(ns)
    if u < SECOND:
        for unit, size in (("ms", 10**6), ("µs", 10**3)):
            if u >= size:
                return sign + _fraction(u, size) + unit
        return f"{sign}{u}ns"
    hours, rest = divmod(u, 3600 * SECOND)
    minutes, rest = divmod(rest, 60 * SECOND)
    seconds = _fraction(rest, SECOND) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    return f"{sign}{minutes}m{seconds}" if minutes else sign + seconds


def _fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    digits = len(str(unit)) - 1
    tail = f"{frac:0{digits}d}".rstrip("0") if frac else ""
    return f"{whole}.{tail}" if tail else str(whole)


def apply(state: dict[str, Any], result: Result, t: Timing, started_at: float) -> tuple[str, str]:
    """Add ``result`` to ``state`` by Docker's rules (its ``handleProbeResult``): a pass
    makes it healthy and ends the failing streak; a failure lengthens the streak, except
    while starting within the start period, and ``retries`` of them in a row make it
    unhealthy. Returns the (old, new) status."""
    old = str(state.get("Status") or STARTING)
    log = [*list(state.get("Log") or []), _entry(result)][-MAX_LOG:]
    streak = int(state.get("FailingStreak") or 0)
    status = old
    if result.exit_code == 0:
        streak, status = 0, HEALTHY
    elif not (old == STARTING and result.start / SECOND - started_at < t.start_period):
        streak += 1
        if streak >= t.retries:
            status = UNHEALTHY
    state.update(Status=status, FailingStreak=streak, Log=log)
    return old, status


def _entry(result: Result) -> dict[str, Any]:
    return {"Start": result.start, "End": result.end, "ExitCode": result.exit_code,
            "Output": result.output}  # fmt: skip


def state_of(rec: Record) -> dict[str, Any] | None:
    """The health state of ``rec`` now (a copy): None when it has no check to run or was
    never started; ``starting`` (the log kept) while no result of this run is in."""
    if probe_of(rec.config.healthcheck) is None or rec.started_at is None:
        return None
    stored = rec.extra.get(KEY) or {}
    if stored.get("Run") != rec.started_at:
        return {"Status": STARTING, "FailingStreak": 0, "Log": list(stored.get("Log") or []),
                "Run": rec.started_at}  # fmt: skip
    return {**stored, "Log": list(stored.get("Log") or [])}


def status_of(rec: Record) -> str:
    """starting, healthy, unhealthy; "" when it has no health state."""
    state = state_of(rec)
    return str(state["Status"]) if state else ""


def inspect_health(rec: Record) -> dict[str, Any] | None:
    """``State.Health`` of inspect, with Docker's fields; None when there is none."""
    from lamina.image._config import rfc3339

    state = state_of(rec)
    if state is None:
        return None
    return {
        "Status": state["Status"],
        "FailingStreak": state["FailingStreak"],
        "Log": [
            {
                "Start": rfc3339(e["Start"]),
                "End": rfc3339(e["End"]),
                "ExitCode": e["ExitCode"],
                "Output": e["Output"],
            }
            for e in state["Log"]
        ],
    }


def needs_checks(rec: Record | None) -> bool:
    """Whether ``rec`` is a run whose checks must go on now (running, not paused)."""
    return (
        rec is not None
        and rec.status == Status.RUNNING
        and probe_of(rec.config.healthcheck) is not None
    )


def record(engine: Engine, cid: str, run: float, result: Result, t: Timing) -> None:
    """Write ``result`` into the container's state, under its lock, if it still runs the
    run the check was made in (a result of a stopped or paused run is dropped, as Docker
    drops a probe cancelled meanwhile). A change of status is a ``health_status`` event;
    a result that starts or ends a failing streak without changing the status is
    lamina's ``health_check: failing`` or ``health_check: passing`` (``CHECK_EVENT``)."""
    from lamina.errors import NotFound

    rec = engine.store.get(cid)
    if rec is None:
        return
    try:
        with engine._locked(cid, rec.isolation):
            rec = engine.store.get(cid)
            if not needs_checks(rec) or rec is None or rec.started_at != run:
                return
            state = state_of(rec) or {}
            was_failing = bool(state.get("FailingStreak"))
            old, new = apply(state, result, t, run)
            rec.extra[KEY] = state
            engine.store.update(cid, extra=rec.extra)
    except NotFound:
        return
    if old != new:
        engine._container_event(f"health_status: {new}", rec)
    elif was_failing != bool(state["FailingStreak"]):
        # Docker shows no event here; whoever acts on the first failed check (the
        # deployment controller takes the replica out of its service's name) would
        # otherwise see it only at its next look. Only at a streak's edges, not per
        # check: a journal line per passing check of every container is noise.
        word = FAILING if state["FailingStreak"] else PASSING
        engine._container_event(f"{CHECK_EVENT}: {word}", rec, exitCode=str(result.exit_code))


# -- the runner ------------------------------------------------------------------------------


def runner_dir(root: Path) -> Path:
    return Path(root) / RUNNER_DIR


def runner_alive(root: Path) -> bool:
    """Whether a health runner holds the root's runner lock."""
    lock = runner_dir(root) / RUNNER_LOCK
    if not lock.exists():
        return False
    with _leases.try_lock(lock) as free:
        return not free


def ensure_runner(root: Path) -> None:
    """Start the root's health runner in the background unless one runs: spawned, not
    waited for (it takes the lock itself; of two started at once, one stays)."""
    if runner_alive(root):
        return
    directory = runner_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / RUNNER_LOG
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        # Not reaped here: a CLI ends at once (the runner goes to init); a long-lived
        # caller's subprocess module reaps it at its next spawn.
        subprocess.Popen(
            [sys.executable, "-m", "lamina.engine.health_runner", str(Path(root).absolute())],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd="/",  # pins no directory of the caller's
            start_new_session=True,  # no terminal's ^C, outlives its starter
        )
    finally:
        os.close(fd)


def ensure_for_running(engine: Engine) -> None:
    """Reconcile's part: a runner for the running containers with a check, if any needs
    one and none runs (the last one was killed)."""
    if engine.store.health_checked():
        ensure_runner(engine.root)
