"""Click as lamina's commands use it: a usage error is one line, as Docker's are.

Every command and group is a :class:`DockerCommand` or :class:`DockerGroup` (the
root group in ``main.py`` too; a DockerGroup makes its subcommands and subgroups
with these classes). A usage error anywhere - an unknown flag or command, a missing
argument, a bad value, or a ``click.UsageError`` a command raises itself - becomes a
:class:`FlagError`: ``lamina: error: <what is wrong> (see 'lamina <command> --help')``
on stderr and exit 125, Docker's code for "the command itself failed" (Docker uses
125 for flag errors and 1 for a wrong number of arguments; lamina has one rule).
A group given no subcommand prints its help and exits 0, as ``docker image`` does.

Imports only click: ``main.py`` loads it on every start.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click


class FlagError(click.ClickException):
    """A bad flag or argument: one line, exit 125. ``command`` is the command path
    after ``lamina`` (``"volume ls"``), named in the hint; "" names lamina itself."""

    exit_code = 125

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command

    def show(self, file: Any = None) -> None:
        msg = " ".join(self.format_message().split())
        where = f"lamina {self.command}" if self.command else "lamina"
        print(f"lamina: error: {msg} (see '{where} --help')", file=file or sys.stderr)


def flag_error(e: click.UsageError) -> FlagError:
    """The one-line form of a click usage error."""
    path = e.ctx.command_path if e.ctx is not None else ""
    return FlagError(e.format_message(), path.partition(" ")[2])


@contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except click.UsageError as e:
        raise flag_error(e) from None


class DockerCommand(click.Command):
    """A command whose usage errors are :class:`FlagError` s."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with _one_line_usage_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


class DockerGroup(click.Group):
    """A group whose usage errors (an unknown subcommand too) are :class:`FlagError` s;
    without a subcommand it prints its help and exits 0."""

    command_class = DockerCommand
    group_class = type  # subgroups are DockerGroups as well

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:  # bare ``lamina volume``: the help, as Docker shows it
            click.echo(ctx.get_help())
            ctx.exit(0)
        with _one_line_usage_errors():
            return super().parse_args(ctx, args)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        with _one_line_usage_errors():
            return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


class LazyGroup(DockerGroup):
    """A group whose subcommands are imported on first use: ``lazy`` maps a command
    name to ``"module:attribute"`` under ``lamina.cli``; ``summaries`` are the help's
    one-line descriptions (help lists the commands without importing any)."""

    def __init__(
        self, *args: Any, lazy: dict[str, str], summaries: dict[str, str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy
        self._summaries = summaries

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            import importlib

            module, _, attr = self._lazy[cmd_name].partition(":")
            mod = importlib.import_module(f"lamina.cli.{module}")
            cmd: click.Command = getattr(mod, attr)
            return cmd
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self._summaries.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def command(name: str | None = None, **kw: Any) -> Callable[[Callable[..., Any]], DockerCommand]:
    """``click.command`` making a :class:`DockerCommand`."""
    return click.command(name, cls=DockerCommand, **kw)


def group(name: str | None = None, **kw: Any) -> Callable[[Callable[..., Any]], DockerGroup]:
    """``click.group`` making a :class:`DockerGroup`."""
    return click.group(name, cls=DockerGroup, **kw)
