"""``exec``: a command in a running container; exits with its exit code (126/127
when it could not be executed or found). With ``-it``, the detach keys leave it
running: ``read escape sequence`` and exit 1, as the docker CLI."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from lamina.cli._click import FlagError
from lamina.cli._common import _args_command, open_engine
from lamina.cli._run import _require_tty, detach_keys_option

# -- exec ----------------------------------------------------------------------------


@_args_command("exec")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open and attach it.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY.")
@click.option("-d", "--detach", is_flag=True, help="Run the command in the background.")
@click.option(
    "-e", "--env", "env", multiple=True, metavar="KEY[=VALUE]", help="Set an environment variable."
)
@click.option(
    "--env-file",
    "env_files",
    multiple=True,
    metavar="FILE",
    help="Read environment variables from a file.",
)
@click.option("-u", "--user", default=None, help="User to run as.")
@click.option("-w", "--workdir", default=None, help="Working directory inside the container.")
@detach_keys_option
def exec_(
    container: str,
    command: tuple[str, ...],
    interactive: bool,
    tty: bool,
    detach: bool,
    env: tuple[str, ...],
    env_files: tuple[str, ...],
    user: str | None,
    workdir: str | None,
    detach_keys: bytes | None,
) -> None:
    """Run a command in a running container; exits with its exit code."""
    from lamina.engine._options import InvalidOption, parse_env, parse_env_file

    environ = os.environ
    try:
        envs = [e for f in env_files for e in parse_env_file(f, environ)] + parse_env(env, environ)
    except InvalidOption as e:
        raise FlagError(str(e), "exec") from None
    if workdir is not None and not workdir.startswith("/"):
        raise FlagError(
            f"the working directory {workdir!r} is invalid: it needs to be an absolute path", "exec"
        )
    if not detach:
        _require_tty(interactive, tty)
    engine = open_engine()
    sys.stdout.flush()
    with contextlib.ExitStack() as stack:
        if interactive:
            stdin: Any = sys.stdin.buffer
        else:
            stdin = stack.enter_context(open(os.devnull, "rb"))
        result = engine.exec(
            container,
            list(command),
            env=envs or None,
            user=user,
            workdir=workdir,
            tty=tty,
            stdin=stdin,
            detach=detach,
            stream=True,
            detach_keys=detach_keys,
        )
    if result.detached:
        from lamina.runtime._term import DETACHED_MESSAGE

        print(DETACHED_MESSAGE, file=sys.stderr)
        sys.exit(1)
    sys.exit(result.exit_code)
