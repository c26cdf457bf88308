"""What every container command shares: the engine on ``--root``, one-line errors
for each of several containers, and Docker's wording of durations and statuses.

Imports of the engine happen inside the functions: this module loads with click.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import click

from lamina.cli._click import DockerCommand

if TYPE_CHECKING:
    from lamina.engine import Container, Engine


# -- plumbing ------------------------------------------------------------------------


def _command(name: str | None = None, **kw: Any) -> Callable[[Callable[..., Any]], click.Command]:
    return click.command(name, cls=DockerCommand, **kw)


def _args_command(name: str | None = None) -> Callable[[Callable[..., Any]], click.Command]:
    """A command whose trailing arguments belong to the container (``run IMAGE sh -c``);
    ``-h`` is --hostname there, as in Docker, so help is ``--help`` only."""
    settings = {"allow_interspersed_args": False, "help_option_names": ["--help"]}
    return _command(name, context_settings=settings)


def _settings() -> Any:
    return click.get_current_context().find_root().obj


def is_remote() -> bool:
    """``--host`` (LAMINA_HOST): commands go to a daemon (what ``lamina.engine``'s module
    functions do in-process, ``RemoteEngine`` offers as methods of the same name)."""
    return bool(_settings().remote is not None)


def open_engine(*, containers: bool = True) -> Engine:
    """The engine on ``--root`` with ``--runtime``; a runtime that is missing or
    cannot work on this host fails here, before anything is done (exit 125).
    ``containers=False``: for image and volume commands, which create none.
    With ``--host`` (LAMINA_HOST): the daemon's client, which offers the same."""
    from lamina.errors import LaminaError

    settings = _settings()
    if settings.remote is not None:
        from lamina.cli._remote import connect_daemon

        return cast("Engine", connect_daemon(settings.remote))
    from lamina.engine import open_engine as _open

    try:
        return _open(
            settings.root,
            oci_runtime=settings.oci_runtime if containers else None,
            report=warn,
            registry_config=_registry_config,
        )
    except LaminaError as e:
        e.exit_code = 125
        raise


def _registry_config() -> Any:
    from lamina.cli._images import registry_config

    return registry_config()


def _progress() -> Any:
    """Pull progress on stderr, as ``docker run`` shows it."""
    from lamina.cli._images import progress_sink

    return progress_sink(False)


def warn(line: str) -> None:
    """What the engine found and did while reconciling, one line on stderr."""
    print(f"lamina: warning: {line}", file=sys.stderr)


def parse_filters(values: Sequence[str], command: str) -> dict[str, list[str]]:
    """``--filter KEY=VALUE`` (repeatable) as the engine takes them: a mapping of each
    key to its values. ``command`` names the command in a usage error."""
    from lamina.cli._click import FlagError

    by_key: dict[str, list[str]] = {}
    for f in values:
        key, sep, value = f.partition("=")
        if not sep:
            raise FlagError(f"bad filter {f!r}: expected KEY=VALUE", command)
        by_key.setdefault(key, []).append(value)
    return by_key


def _error(msg: str) -> None:
    print(f"lamina: error: {' '.join(msg.split())}", file=sys.stderr)


def _each(refs: Sequence[str], action: Callable[[str], object], echo: bool = True,
          *, missing_ok: bool = False) -> None:  # fmt: skip
    """Apply ``action`` to every container, reporting failures one line each (Docker
    goes on with the others), then exit 1 if any failed. ``missing_ok`` (``rm -f``):
    a container that does not exist is said but is no failure, as Docker's CLI has it."""
    from lamina.errors import LaminaError, NotFound

    failed = False
    for ref in refs:
        try:
            action(ref)
        except LaminaError as e:
            _error(str(e))
            failed = failed or not (missing_ok and isinstance(e, NotFound))
            continue
        if echo:
            click.echo(ref)
    if failed:
        sys.exit(1)


def _short(cid: str) -> str:
    return cid[:12]


# -- durations and statuses, as Docker words them ------------------------------------


def human_duration(seconds: float) -> str:
    """Docker's units.HumanDuration: ``Less than a second``, ``About a minute``, ..."""
    s = int(seconds)
    if seconds < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = round(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def status_text(c: Container, now: float | None = None) -> str:
    now = time.time() if now is None else now
    st = c.state
    status = str(st.status)
    if status in ("running", "paused"):
        up = f"Up {human_duration(now - (st.started_at or c.created))}"
        if status == "paused":
            return up + " (Paused)"
        if c.health:  # Docker's: (healthy), (unhealthy), (health: starting)
            return f"{up} ({'health: starting' if c.health == 'starting' else c.health})"
        return up
    if status == "removing":
        return "Removal In Progress"
    if status == "restarting":  # Docker's: the last exit code, and since when
        ago = human_duration(now - (st.finished_at or now))
        return f"Restarting ({st.exit_code or 0}) {ago} ago"
    if status == "failed" and st.started_at is None:
        return "Created"  # Docker: a first start that failed leaves it created
    if status in ("exited", "failed") and st.exit_code is not None:
        ago = f" {human_duration(now - st.finished_at)} ago" if st.finished_at else ""
        oom = " (OOMKilled)" if st.oom_killed else ""
        return f"Exited ({st.exit_code}){ago}{oom}"
    return "Created"
