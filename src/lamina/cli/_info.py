"""``lamina version`` and ``lamina info``: the engine's data (``lamina.engine._info``),
printed with Docker's fields for ``--format`` (``{{.Server.Version}}``, ``{{.NCPU}}``, ...)."""

from __future__ import annotations

import sys
from typing import Any

import click

from lamina.cli._click import command
from lamina.cli._output import INSPECT_FORMAT_OPTION, print_object, tabwrite


@command()
@INSPECT_FORMAT_OPTION
def version(fmt: str | None) -> None:
    """Show the lamina version information."""
    from lamina.cli._common import is_remote, open_engine
    from lamina.engine._info import version_info

    data = version_info()
    if is_remote():  # the client is this program, the server the daemon's
        data["Server"] = open_engine().server_version()  # type: ignore[attr-defined]

    def text() -> None:
        client: dict[str, Any] = data["Client"]
        server: dict[str, Any] = data["Server"]
        lines = [
            "Client:",
            f" Version:\t{client['Version']}",
            f" Python version:\t{client['PythonVersion']}",
            f" OS/Arch:\t{client['Os']}/{client['Arch']}",
            f" Context:\t{client['Context']}",
            "",
            "Server: lamina",
            " Engine:",
            f"  Version:\t{server['Version']}",
            f"  OS/Arch:\t{server['Os']}/{server['Arch']}",
            f"  Kernel version:\t{server['KernelVersion']}",
        ]
        sys.stdout.write(tabwrite("\n".join(lines) + "\n", 20, 1))

    print_object(fmt, data, text, name="version", columns=(20, 1))


# Docker's names for what lamina's own keys say too: in --format data, not in the text.
_DOCKER_ALIASES = ("ServerVersion", "DockerRootDir", "KernelVersion")


@command()
@INSPECT_FORMAT_OPTION
def info(fmt: str | None) -> None:
    """Show system-wide information."""
    from lamina.cli._common import is_remote, open_engine

    settings = click.get_current_context().find_root().obj
    if is_remote():
        data = open_engine().server_info()  # type: ignore[attr-defined]
    else:
        from lamina.engine._info import system_info

        data = system_info(settings.root, settings.oci_runtime)
    print_object(
        fmt, data, lambda: _echo_tree({k: v for k, v in data.items() if k not in _DOCKER_ALIASES})
    )


def _echo_tree(data: dict[str, Any], indent: str = "") -> None:
    for k, v in data.items():
        if isinstance(v, dict):
            click.echo(f"{indent}{k}:")
            _echo_tree(v, indent + "  ")
        else:
            click.echo(f"{indent}{k}: {v}")
