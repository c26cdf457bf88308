"""The ``lamina`` command: a thin click front end over the library.

Start-up time matters (``lamina ps`` runs in scripts and loops), so this module
imports only click. Each command lives in a module of its own that is imported
when that command runs, through ``LazyGroup``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from lamina.cli._click import LazyGroup, flag_error

# command name -> "module:attribute" under lamina.cli
_COMMANDS: dict[str, str] = {
    "pull": "_images:pull",
    "push": "_images:push",
    "images": "_images:images",
    "rmi": "_images:rmi",
    "tag": "_images:tag",
    "inspect": "_ps:inspect",
    "save": "_images:save",
    "load": "_images:load",
    "import": "_images:import_",
    "login": "_images:login",
    "logout": "_images:logout",
    "image": "_images:image",
    "run": "_run:run",
    "create": "_run:create",
    "start": "_run:start",
    "attach": "_run:attach",
    "stop": "_lifecycle:stop",
    "restart": "_lifecycle:restart",
    "kill": "_lifecycle:kill",
    "rm": "_lifecycle:rm",
    "ps": "_ps:ps",
    "port": "_ps:port",
    "logs": "_logs:logs",
    "exec": "_exec:exec_",
    "wait": "_lifecycle:wait",
    "stats": "_ps:stats",
    "top": "_ps:top",
    "pause": "_lifecycle:pause",
    "unpause": "_lifecycle:unpause",
    "rename": "_lifecycle:rename",
    "cp": "_files:cp",
    "diff": "_files:diff",
    "commit": "_files:commit",
    "update": "_lifecycle:update",
    "container": "_container:container",
    "volume": "_volumes:volume",
    "network": "_networks:network",
    "vm": "_vm:vm",
    "build": "_build:build",
    "builder": "_build:builder",
    "version": "_info:version",
    "info": "_info:info",
    "system": "_system:system",
    "events": "_events:events",
    "daemon": "_daemon:daemon",
    "deploy": "_deploy:deploy",
    "down": "_deploy:down",
    "validate": "_deploy:validate",
    "deployment": "_deploy:deployment",
    "service": "_deploy:service",
    "job": "_deploy:job",
    "secret": "_deploy:secret",
    "ingress": "_ingress:ingress",
}
_ALIASES = {"ls": "images"}


_SUMMARIES = {
    "pull": "Pull an image from a registry",
    "push": "Push an image to a registry",
    "images": "List images",
    "rmi": "Remove one or more images",
    "tag": "Create a tag TARGET that refers to SOURCE",
    "inspect": "Show low-level information on containers or images",
    "run": "Create and run a new container from an image",
    "create": "Create a new container without starting it",
    "start": "Start one or more stopped containers",
    "attach": "Attach to a running container's input and output",
    "stop": "Stop one or more running containers",
    "restart": "Restart one or more containers",
    "kill": "Kill one or more running containers",
    "rm": "Remove one or more containers",
    "ps": "List containers",
    "port": "List port mappings of a container",
    "logs": "Fetch the logs of a container",
    "exec": "Run a command in a running container",
    "wait": "Block until containers stop, then print their exit codes",
    "stats": "Display live resource usage of containers",
    "top": "Display the running processes of a container",
    "pause": "Pause all processes within one or more containers",
    "unpause": "Unpause all processes within one or more containers",
    "rename": "Rename a container",
    "cp": "Copy files between a container and the host",
    "diff": "Inspect changes to a container's filesystem",
    "commit": "Create a new image from a container's changes",
    "update": "Update the resource limits of containers",
    "container": "Manage containers (ls, run, create, start, stop, rm, prune, ...)",
    "volume": "Manage volumes (create, ls, rm, inspect, prune)",
    "network": "Manage networks (create, ls, inspect, rm, prune, connect, disconnect)",
    "vm": "Micro-VMs: base bundles, one-off runs, snapshots",
    "build": "Build an image from a Dockerfile",
    "builder": "Manage the build cache (prune)",
    "save": "Save images to an archive (oci-archive or docker-archive)",
    "load": "Load images from an archive or OCI layout",
    "import": "Create an image from a root filesystem directory or tarball",
    "login": "Log in to a registry",
    "logout": "Log out from a registry",
    "image": "Manage images (ls, rm, prune, inspect, ...)",
    "version": "Show the lamina version",
    "info": "Show system-wide information",
    "system": "Manage lamina (df: disk usage, prune: remove unused data)",
    "events": "Get real time events from lamina's commands",
    "daemon": "Serve this root's engine over HTTP (the REST API)",
    "deploy": "Deploy a file (ZLayer v1 spec or Compose) through the daemon",
    "down": "Remove a deployment",
    "validate": "Check a deployment file, every error with its path",
    "deployment": "Manage deployments (ls, inspect, status)",
    "service": "Manage a deployment's services (ls, logs, scale, restart)",
    "job": "Run a deployment's jobs and see their runs (run, ls, logs)",
    "secret": "Manage secrets (create, ls, rm)",
    "ingress": "Public endpoints through HAProxy (ls, inspect, cert)",
}


class Settings:
    """Global options, passed to every command through the click context.
    (A plain class: importing dataclasses would cost ``lamina --help`` ~15 ms.)"""

    def __init__(
        self,
        root: Path,
        debug: bool,
        insecure_registries: tuple[str, ...],
        registries_config: str | None,
        oci_runtime: str = "runc",
        remote: dict[str, object] | None = None,
    ) -> None:
        self.root = root
        self.remote = remote  # --host and its TLS/token flags: the daemon's client
        self.debug = debug
        self.insecure_registries = insecure_registries
        self.registries_config = registries_config
        self.oci_runtime = oci_runtime


@click.group(
    cls=LazyGroup,
    lazy=_COMMANDS,
    summaries=_SUMMARIES,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for all lamina state [env LAMINA_ROOT; default /var/lib/lamina as root].",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option(
    "--insecure-registry",
    "insecure_registries",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Allow plain HTTP and unverified TLS for this registry (repeatable).",
)
@click.option(
    "--registries-config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Registry settings file (JSON) [env LAMINA_REGISTRIES_CONFIG].",
)
@click.option(
    "--runtime",
    "oci_runtime",
    default="runc",
    show_default=True,
    envvar="LAMINA_RUNTIME",
    metavar="runc|crun|PATH",
    help="OCI runtime for process-isolated containers [env LAMINA_RUNTIME].",
)
@click.option(
    "-H",
    "--host",
    default=None,
    envvar="LAMINA_HOST",
    metavar="unix:///PATH|tcp://HOST:PORT",
    help="Send the command to this lamina daemon [env LAMINA_HOST].",
)
@click.option("--tls", is_flag=True, help="Use TLS to a tcp:// daemon (implied by --tlsverify).")
@click.option("--tlsverify", is_flag=True, help="Use TLS and verify the daemon's certificate.")
@click.option("--tlscacert", default=None, metavar="FILE", help="Trust certs signed by this CA.")
@click.option("--tlscert", default=None, metavar="FILE", help="TLS client certificate.")
@click.option("--tlskey", default=None, metavar="FILE", help="TLS client key.")
@click.option(
    "--token-file",
    default=None,
    envvar="LAMINA_TOKEN_FILE",
    metavar="FILE",
    help="Bearer token for a tcp:// daemon [env LAMINA_TOKEN_FILE].",
)
@click.version_option(package_name="lamina", prog_name="lamina")
@click.pass_context
def cli(
    ctx: click.Context,
    root: Path | None,
    debug: bool,
    insecure_registries: tuple[str, ...],
    registries_config: str | None,
    oci_runtime: str,
    **remote: object,
) -> None:
    """lamina: run, build and ship OCI containers."""
    if root is None:
        from lamina.config import default_root

        root = default_root()
    ctx.obj = Settings(root, debug, insecure_registries, registries_config, oci_runtime,
                       remote if remote["host"] else None)  # fmt: skip


for _alias, _target in _ALIASES.items():
    _COMMANDS[_alias] = _COMMANDS[_target]
    _SUMMARIES[_alias] = f"Alias of {_target}"


def main(argv: list[str] | None = None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv)
    try:
        cli.main(args=argv, prog_name="lamina", standalone_mode=False)
    except click.exceptions.Abort:
        print("lamina: aborted", file=sys.stderr)
        sys.exit(130)
    except click.UsageError as e:  # from a command that is not a DockerCommand
        error = flag_error(e)
        error.show()
        sys.exit(error.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("lamina: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # Output closed early (e.g. piped to head): not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as e:
        from lamina.errors import LaminaError, describe_os_error

        if debug:
            import traceback

            traceback.print_exc()
        if isinstance(e, LaminaError):
            print(f"lamina: error: {_one_line(str(e))}", file=sys.stderr)
            sys.exit(e.exit_code)
        if isinstance(e, OSError) and e.strerror:
            print(f"lamina: error: {_one_line(describe_os_error(e))}", file=sys.stderr)
            sys.exit(1)
        print(
            f"lamina: internal error: {type(e).__name__}: {_one_line(str(e))}"
            + ("" if debug else " (run with --debug for details)"),
            file=sys.stderr,
        )
        sys.exit(70)


def _one_line(msg: str) -> str:
    return " ".join(msg.split()) or "unknown error"


if __name__ == "__main__":
    main()
