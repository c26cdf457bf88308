"""One converge step of one service, decided from what runs (pure: no I/O).

The controller observes the service's replicas (containers labelled with it), and
``decide`` says what to do next; the controller does it and asks again. Level
triggered: nothing but the observation and the desired state goes in, so a step
repeated after a crash at any point decides the same thing or the next one.

Rules:
- a replica that is gone (exited, failed) is removed and counts as a crash (the
  controller's back-off delays the next create), unless its restart policy keeps it
  ended (``finished``); one never started is started;
- a replica whose health check turned unhealthy leaves the service's name at once
  and is removed (replaced by the next step);
- with no replica of an older spec (no rollout): create the missing (lowest free
  numbers), remove the extra (not ready first, then the highest number);
- rollout (replicas of an older spec remain), surge 1, unavailable 0: while a new
  replica is not ready, wait (past its deadline or dead: halt, remove it, keep the
  old ones); then remove one old replica if there are more than desired, else start
  one new;
- a service whose rollout halted for its current hash makes no new replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field

UP = ("running", "created", "restarting", "paused")


@dataclass
class Replica:
    """A replica as observed."""

    name: str
    n: int
    spec_hash: str
    state: str  # the container's status
    health: str  # "" no check, starting, healthy, unhealthy
    ready: bool
    started_at: float | None = None
    exit_code: int | None = None
    address: str = ""
    aliased: bool = False  # has the service's name on its network now
    last_output: str = ""  # the last health check's output, for a halt's line
    id: str = ""
    # ended by a user's stop or kill since the service was last deployed, scaled or
    # restarted (not by the controller's own removal)
    user_stopped: bool = False


@dataclass
class ServiceView:
    replicas: list[Replica]
    desired: int
    spec_hash: str
    halted: bool  # the rollout of spec_hash halted (a new apply clears it)
    ready_deadline: float  # seconds from start a new replica has to turn ready
    now: float
    may_create: bool = True  # false while a crash back-off runs or a dependency waits
    restart: str = "always"  # the service's restart_policy kind (always when it has none)
    gave_up: bool = False  # on_failure: its max_attempts are used up


def finished(r: Replica, spec_hash: str, restart: str, gave_up: bool) -> bool:
    """A replica of the current spec that ended and stays ended, as its service's
    restart policy says (``no``; ``on_failure`` after a success or its last attempt;
    ``unless_stopped`` when the user stopped it): kept, not replaced, and counted as
    one of the service's replicas."""
    if r.state in UP or r.state == "failed" or r.spec_hash != spec_hash:
        return False
    if restart == "no":
        return True
    if restart == "unless_stopped":
        return r.user_stopped
    return restart == "on_failure" and (r.exit_code == 0 or gave_up)


@dataclass
class Decision:
    start: list[str] = field(default_factory=list)
    create: list[int] = field(default_factory=list)  # replica numbers
    remove: list[str] = field(default_factory=list)
    crashed: list[Replica] = field(default_factory=list)  # removed because they ended
    alias_on: list[str] = field(default_factory=list)
    alias_off: list[str] = field(default_factory=list)
    drain: list[str] = field(default_factory=list)  # removed while serving: wait before the stop
    halt: str = ""  # one line: why the rollout halted

    def empty(self) -> bool:
        return not (
            self.start or self.create or self.remove or self.alias_on or self.alias_off or self.halt
        )


def free_numbers(used: set[int], count: int) -> list[int]:
    out: list[int] = []
    n = 1
    while len(out) < count:
        if n not in used:
            out.append(n)
        n += 1
    return out


def _removal_order(replicas: list[Replica]) -> list[Replica]:
    """Who goes first when there are too many: not ready ones, then the highest number."""
    return sorted(replicas, key=lambda r: (r.ready, -r.n))


def halt_line(replica: Replica) -> str:
    if replica.state == "failed" and replica.last_output:  # its init failed
        return f"{replica.name} never turned healthy: {replica.last_output}"
    if replica.state not in UP:
        why = (
            f"exited with code {replica.exit_code}"
            if replica.exit_code is not None
            else (f"is {replica.state}")
        )
    elif replica.health == "unhealthy":
        why = "unhealthy"
    else:
        why = "not ready in time"
    output = " ".join(replica.last_output.split())[:200]
    return f"{replica.name} never turned healthy: {why}" + (f": {output}" if output else "")


def decide(view: ServiceView) -> Decision:
    d = Decision()
    live: list[Replica] = []
    old_exist = any(r.spec_hash != view.spec_hash for r in view.replicas if r.state in UP)
    done = [r for r in view.replicas
            if finished(r, view.spec_hash, view.restart, view.gave_up)]  # fmt: skip
    for r in done:
        if r.aliased:
            d.alias_off.append(r.name)
    for r in view.replicas:
        current = r.spec_hash == view.spec_hash
        if r in done:
            continue
        if r.state not in UP or r.health == "unhealthy":
            if r.aliased:
                d.alias_off.append(r.name)
            d.remove.append(r.name)
            if r.state not in UP:
                d.crashed.append(r)
            if current and old_exist and not d.halt:
                d.halt = halt_line(r)
            continue
        if r.state == "created":
            if current and not view.halted:
                d.start.append(r.name)
            else:
                d.remove.append(r.name)
                continue
        live.append(r)
    for r in live:
        if r.ready and not r.aliased:
            d.alias_on.append(r.name)
        elif not r.ready and r.aliased:
            d.alias_off.append(r.name)
    new = [r for r in live if r.spec_hash == view.spec_hash] + done
    old = [r for r in live if r.spec_hash != view.spec_hash]
    if view.halted:
        new_out = [r for r in new if not r.ready and r not in done]
        for r in new_out:
            d.remove.append(r.name)
        extra = len(new) - len(new_out) + len(old) - view.desired
        for r in _removal_order(old)[: max(extra, 0)]:
            d.remove.append(r.name)
            if r.aliased:
                d.alias_off.append(r.name)
                d.drain.append(r.name)
        return d
    # after a crash the next step creates, once the crash's back-off allows it
    may_create = view.may_create and not d.crashed
    # the numbers of the replicas removed now are free
    used = {r.n for r in [*live, *done] if r.name not in d.remove}
    if not old:
        if len(new) < view.desired and may_create:
            d.create = free_numbers(used, view.desired - len(new))
        elif len(new) > view.desired:
            for r in _removal_order(new)[: len(new) - view.desired]:
                d.remove.append(r.name)
                if r.aliased:
                    d.alias_off.append(r.name)
                    d.drain.append(r.name)
        return d
    # a rollout: surge 1, unavailable 0
    pending = [r for r in new if not r.ready and r not in done]
    if d.halt:
        d.remove += [r.name for r in pending]
        return d
    if pending:
        for r in pending:
            if r.started_at is not None and view.now - r.started_at > view.ready_deadline:
                d.halt = halt_line(r)
                if r.aliased:
                    d.alias_off.append(r.name)
                d.remove += [p.name for p in pending]
                break
        return d
    if len(new) + len(old) > view.desired:
        victim = _removal_order(old)[0]
        if victim.aliased:
            d.alias_off.append(victim.name)
            d.drain.append(victim.name)
        d.remove.append(victim.name)
    elif len(new) < view.desired and may_create:
        d.create = free_numbers(used, 1)
    return d
