"""Restart policies (``--restart``), with Docker's semantics (moby's restartmanager).

The policy is the container's config (``ContainerConfig.restart``); what it has
done so far is the engine's bookkeeping in the record (``RestartState``, in
``extra["restart"]``), readable from the store by whoever starts containers after a
host reboot (the daemon: ``always``, and ``unless-stopped`` not ``stopped_by_user``).

When the main process exits (``Engine._after_exit``, under the container's lock, in
whichever process finishes the run: conmon's or the VM supervisor's exit command with
no other lamina process alive, or a waiting CLI) ``decide`` says whether it starts
again: ``always``/``unless-stopped`` whatever the code (``unless-stopped`` not after a
user's stop or kill), ``on-failure`` for a non-zero code, at most N times. The delay
is Docker's backoff: 100 ms, doubled at each exit, at most a minute, back to 100 ms
once a run lasted 10 s. The container is then ``restarting`` and a restarter (``python
-m lamina.engine.restarter``, started by ``spawn``: detached, in a session of its own,
so that conmon is never kept waiting) sleeps the delay, checks under the lock that the
restart still stands (no ``stop``/``kill``/``rm``/``update`` meanwhile), and starts the
container through the engine. The restarter holds a lease (``lamina._leases``, handed
over by the process that decided) named in the record (see below for its death).

A user's ``stop``, or ``kill`` with SIGKILL or the container's stop signal (any
signal, when it has none configured), or ``rm -f`` ends the policy until the next
``start``/``restart`` (``canceled``), and any ``stop``/``kill`` sets
``stopped_by_user`` (Docker's HasBeenManuallyStopped). A start by a user resets
``RestartCount`` and the backoff.

Events: the exit is ``die`` (with ``exitCode``), as any exit; the policy's start is
``start`` then ``restart``. Docker's daemon emits only ``die`` and ``start`` for a
policy restart (``restart`` is its ``restart`` command's event); Podman emits
``restart`` for policy restarts too, and users grep for it, so lamina does.

A restarter killed (SIGKILL) while it waits leaves the container ``restarting`` with
a dead lease: the next lamina command's reconcile starts another restarter, so the
restart the policy decided goes ahead (at its due time, or at once if that passed);
it does not mark the container exited, which would lose a restart the policy owes.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.runtime._types import RestartPolicy

if TYPE_CHECKING:
    from lamina import _leases
    from lamina.runtime._types import ContainerConfig, Record

POLICIES = ("no", "always", "on-failure", "unless-stopped")
FIRST_DELAY = 0.1  # seconds: the first restart's delay (moby's defaultTimeout)
MAX_DELAY = 60.0  # the delay doubles up to this
RESET_AFTER = 10.0  # a run at least this long sets the delay back to FIRST_DELAY
# Tests only: a shorter RESET_AFTER (seconds), so that a reset or many quick restarts
# take seconds, not minutes. Read by ``create`` and kept in the record (``RESET_KEY``):
# whichever process decides a restart (an exit command, any command that finishes a
# run) uses the container's value, whatever its own environment.
RESET_ENV = "LAMINA_TEST_RESTART_RESET"
RESET_KEY = "restart_reset"  # the record's extra key of that value
_KEY = "restart"  # the record's extra key of RestartState


@dataclass
class RestartState:
    """What the policy has done since the last start by a user (``extra["restart"]``)."""

    count: int = 0  # RestartCount: restarts by the policy since the last start by a user
    stopped_by_user: bool = False  # a user's stop or kill (Docker's HasBeenManuallyStopped)
    canceled: bool = False  # the policy is off until a user starts it again
    delay: float = 0.0  # the last backoff (seconds); 0 before the first exit
    lease: str = ""  # while restarting: the restarter's lease
    due: float = 0.0  # while restarting: when it starts the container (time.time())

    @classmethod
    def of(cls, rec: Record) -> RestartState:
        raw = rec.extra.get(_KEY) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def into(self, extra: dict[str, Any]) -> dict[str, Any]:
        """``extra`` with this state in it (also changed in place)."""
        extra[_KEY] = dataclasses.asdict(self)
        return extra


def has_state(rec: Record) -> bool:
    return _KEY in rec.extra


# -- the policy as given ----------------------------------------------------------------


def _invalid(message: str) -> Exception:
    """The engine's InvalidConfig (imported only when a policy is refused: every
    command imports this module, few refuse one)."""
    from lamina.engine._run_image import InvalidConfig

    return InvalidConfig(message)


def parse_policy(text: str) -> RestartPolicy:
    """``--restart``: ``no``, ``always``, ``on-failure[:N]``, ``unless-stopped``, with
    Docker's messages (the CLI's for the format, the daemon's for the rest)."""
    name, sep, count = text.partition(":")
    if sep and not name:
        raise _invalid("invalid restart policy format: no policy provided before colon")
    retries = 0
    if count:
        try:
            retries = int(count, 10)
        except ValueError:
            raise _invalid(
                "invalid restart policy format: maximum retry count must be an integer"
            ) from None
    policy = RestartPolicy(name or "no", retries)
    check_policy(policy)
    return policy


def check_policy(policy: RestartPolicy) -> None:
    """Docker's ValidateRestartPolicy."""
    if policy.name not in POLICIES:
        raise _invalid(
            f"invalid restart policy: unknown policy '{policy.name}'; use one of "
            "'no', 'always', 'on-failure', or 'unless-stopped'"
        )
    if policy.name != "on-failure" and policy.max_retries != 0:
        message = "invalid restart policy: maximum retry count can only be used with 'on-failure'"
        if policy.max_retries < 0:
            message += " and cannot be negative"
        raise _invalid(message)
    if policy.max_retries < 0:
        raise _invalid("invalid restart policy: maximum retry count cannot be negative")


def check_config(config: ContainerConfig) -> None:
    """A new container's policy, as Docker's daemon checks it (``--rm`` excludes one)."""
    check_policy(config.restart)
    if config.auto_remove and config.restart.name != "no":
        raise _invalid("can't create 'AutoRemove' container with restart policy")


def check_update(config: ContainerConfig, policy: RestartPolicy) -> None:
    """``update --restart``, as Docker's daemon checks it."""
    check_policy(policy)
    if config.auto_remove and policy.name != "no":
        raise _invalid(
            "Restart policy cannot be updated because AutoRemove is enabled for the container"
        )


# -- deciding -----------------------------------------------------------------------------


def reset_override() -> float | None:
    """The tests' RESET_AFTER (``RESET_ENV``), None when unset or not a number."""
    try:
        return float(os.environ[RESET_ENV])
    except (KeyError, ValueError):
        return None


def reset_after(rec: Record) -> float:
    """How long a run of ``rec`` must last for its backoff to start anew."""
    return float(rec.extra.get(RESET_KEY, RESET_AFTER))


def decide(
    policy: RestartPolicy,
    state: RestartState,
    exit_code: int,
    ran_for: float,
    reset_after: float = RESET_AFTER,
) -> bool:
    """Whether a run that ended with ``exit_code`` after ``ran_for`` seconds starts
    again; ``state`` takes the new backoff (whatever the answer, as moby's does) and,
    when it does, the new count."""
    if policy.name == "no":
        return False
    if ran_for >= reset_after:
        state.delay = 0.0
    state.delay = FIRST_DELAY if state.delay <= 0 else min(state.delay * 2, MAX_DELAY)
    if not allows(policy, state, exit_code, state.count):
        return False
    state.count += 1
    return True


def allows(policy: RestartPolicy, state: RestartState, exit_code: int, done: int) -> bool:
    """Whether ``policy`` restarts after an exit with ``exit_code`` when ``done``
    restarts were made before this one."""
    if state.canceled:
        return False
    if policy.name == "always":
        return True
    if policy.name == "unless-stopped":
        return not state.stopped_by_user
    if policy.name == "on-failure":
        return exit_code != 0 and (policy.max_retries == 0 or done < policy.max_retries)
    return False


def still_stands(rec: Record) -> bool:
    """Whether the restart ``rec`` waits for is still what its policy asks (an
    ``update --restart`` may have changed the policy since it was decided)."""
    state = RestartState.of(rec)
    return allows(rec.config.restart, state, rec.exit_code or 0, state.count - 1)


def kill_ends_policy(config_stop_signal: str, sig: int) -> bool:
    """Docker's rule: a kill ends the policy ("exit on next") with SIGKILL or the
    container's stop signal, and with any signal when none is configured."""
    import signal

    from lamina.runtime._signals import parse_signal

    if not config_stop_signal or sig == signal.SIGKILL:
        return True
    return parse_signal(config_stop_signal) == sig


# -- the restarter ------------------------------------------------------------------------

# Started through sh, which leaves the restarter in the background and exits at once:
# nobody has to reap it (it is no child of a long-lived caller), and its stdio is none
# of the caller's. $1 the log, then the command.
_TRAMPOLINE = 'log=$1; shift; cd / && "$@" </dev/null >/dev/null 2>>"$log" &'


def spawn(root: Path, cid: str, lease: _leases.Lease, log: Path) -> None:
    """Start the restarter of container ``cid``, given ``lease`` (the caller then
    ``hand_over``s it: from then on it lives as long as the restarter does); the
    restarter's errors go to ``log``."""
    import subprocess  # here: every command imports this module, few start a restarter

    fd = lease.fileno()
    argv = [sys.executable, "-m", "lamina.engine.restarter", str(root), cid, lease.id, str(fd)]
    proc = subprocess.Popen(
        ["/bin/sh", "-c", _TRAMPOLINE, "lamina-restart", str(log), *argv],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own session: no terminal's or monitor's signals
    )
    proc.wait()
