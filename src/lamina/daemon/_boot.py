"""What a daemon does once at its start, before it serves: take the root over.

A daemon that was killed (or a host that rebooted) may have left work half done:
``Engine.sweep`` finishes or rolls it back (creates that reserved a name and a
directory but never finished, removals, starts and stops cut short, runs whose monitor
died, image-plane work of dead leases: pulls that were ingesting, unpacks, saves).
Then the containers whose restart policy asks to run after a reboot are started:
``always``, and ``unless-stopped`` unless the user stopped it (Docker's rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lamina.errors import LaminaError
from lamina.runtime._types import Status

if TYPE_CHECKING:
    from lamina.engine import Engine
    from lamina.runtime._types import Record

_STOPPED = (Status.EXITED, Status.FAILED)


def take_over(engine: Engine, say: Callable[[str], None]) -> None:
    for line in engine.sweep():
        say(line)
    for rec in engine.store.list():
        if rec.status in _STOPPED and rec.started_at is not None and starts_after_boot(rec):
            try:
                engine.start(rec.id)
            except LaminaError as e:
                say(f"container {rec.id[:12]}: could not start it as its restart policy asks: {e}")
            else:
                say(f"container {rec.id[:12]}: started (restart policy "
                    f"{_policy(rec)[0]})")  # fmt: skip


def starts_after_boot(rec: Record) -> bool:
    """Whether the restart policy of ``rec`` (stopped) starts it when a daemon starts:
    ``always``; ``unless-stopped`` when the user did not stop it."""
    name, stopped_by_user = _policy(rec)
    if name == "always":
        return True
    return name == "unless-stopped" and not stopped_by_user


def _policy(rec: Record) -> tuple[str, bool]:
    """(policy name, stopped by the user): ``ContainerConfig.restart`` and the record's
    RestartState (``engine._restart``)."""
    from lamina.engine._restart import RestartState

    return rec.config.restart.name, RestartState.of(rec).stopped_by_user
