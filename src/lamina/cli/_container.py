"""The ``container`` group: Docker's ``container ls|run|create|...``, each subcommand
the top-level command of the same name, imported when it runs."""

from __future__ import annotations

import click

from lamina.cli._click import LazyGroup

# subcommand -> "module:attribute" under lamina.cli
_SUBCOMMANDS = {
    "ls": "_ps:ps",
    "list": "_ps:ps",
    "ps": "_ps:ps",
    "run": "_run:run",
    "create": "_run:create",
    "start": "_run:start",
    "attach": "_run:attach",
    "stop": "_lifecycle:stop",
    "restart": "_lifecycle:restart",
    "kill": "_lifecycle:kill",
    "pause": "_lifecycle:pause",
    "unpause": "_lifecycle:unpause",
    "rm": "_lifecycle:rm",
    "remove": "_lifecycle:rm",
    "rename": "_lifecycle:rename",
    "wait": "_lifecycle:wait",
    "prune": "_lifecycle:prune",
    "logs": "_logs:logs",
    "exec": "_exec:exec_",
    "stats": "_ps:stats",
    "top": "_ps:top",
    "port": "_ps:port",
    "inspect": "_ps:container_inspect",
    "cp": "_files:cp",
    "diff": "_files:diff",
    "commit": "_files:commit",
    "update": "_lifecycle:update",
}
_SUMMARIES = {
    "ls": "List containers",
    "list": "List containers",
    "ps": "List containers",
    "run": "Create and run a new container from an image",
    "create": "Create a new container without starting it",
    "start": "Start one or more stopped containers",
    "attach": "Attach to a running container's input and output",
    "stop": "Stop one or more running containers",
    "restart": "Restart one or more containers",
    "kill": "Kill one or more running containers",
    "pause": "Pause all processes within one or more containers",
    "unpause": "Unpause all processes within one or more containers",
    "rm": "Remove one or more containers",
    "remove": "Remove one or more containers",
    "rename": "Rename a container",
    "wait": "Block until containers stop, then print their exit codes",
    "prune": "Remove all stopped containers",
    "logs": "Fetch the logs of a container",
    "exec": "Run a command in a running container",
    "stats": "Display live resource usage of containers",
    "top": "Display the running processes of a container",
    "port": "List port mappings of a container",
    "inspect": "Show low-level information on one or more containers",
    "cp": "Copy files between a container and the host",
    "diff": "Inspect changes to a container's filesystem",
    "commit": "Create a new image from a container's changes",
    "update": "Update the resource limits of containers",
}


@click.group("container", cls=LazyGroup, lazy=_SUBCOMMANDS, summaries=_SUMMARIES)
def container() -> None:
    """Manage containers (ls, run, create, start, stop, rm, prune, ...)."""
