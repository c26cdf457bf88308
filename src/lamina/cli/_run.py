"""``run``, ``create``, ``start`` and ``attach``: flags parsed into a ``ContainerConfig``
(``engine._options``), settled and created by the engine, then started and attached.

Flag and pre-run failures exit 125 with one line on stderr (Docker's code); ``run``,
``start -a`` and ``attach`` exit with the container's code, 126/127 when its command
could not be executed or found; ``run -it`` with a stdin that is not a terminal exits
1, as Docker's CLI does. With a terminal, the detach keys (``--detach-keys``, Docker's
ctrl-p ctrl-q) leave the container running: ``run`` and ``start`` then exit 0 without
a word, ``attach`` (as ``exec``) says ``read escape sequence`` and exits 1, as the
docker CLI does.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

from lamina.cli._click import FlagError
from lamina.cli._common import (
    _args_command,
    _command,
    _each,
    _error,
    _progress,
    _short,
    open_engine,
)

if TYPE_CHECKING:
    from lamina.engine import Container, Engine, WaitOutcome

_SIGNALS_TO_PROXY = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def _detach_keys(ctx: click.Context, _param: click.Parameter, value: str | None) -> bytes | None:
    """``--detach-keys`` read (Docker's notation), or a one-line error naming the command."""
    if value is None:
        return None
    from lamina.errors import LaminaError
    from lamina.runtime._term import parse_detach_keys

    try:
        return parse_detach_keys(value)
    except LaminaError as e:
        raise FlagError(str(e), ctx.command_path.partition(" ")[2]) from None


detach_keys_option = click.option(
    "--detach-keys",
    "detach_keys",
    default=None,
    metavar="KEYS",
    callback=_detach_keys,
    help="Override the key sequence for detaching a container (default ctrl-p,ctrl-q).",
)


sig_proxy_option = click.option(
    "--sig-proxy/--no-sig-proxy", default=True, help="Forward signals to the container (no TTY)."
)


# -- run / create --------------------------------------------------------------------


_RUN_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--name", default=None, help="Assign a name to the container."),
    click.option(
        "-e",
        "--env",
        "env",
        metavar="KEY[=VALUE]",
        multiple=True,
        help="Set an environment variable (KEY alone: the host's value).",
    ),
    click.option(
        "--env-file",
        "env_files",
        metavar="FILE",
        multiple=True,
        help="Read environment variables from a file.",
    ),
    click.option(
        "-v",
        "--volume",
        "volumes",
        metavar="[SRC:]DST[:OPTS]",
        multiple=True,
        help="Bind mount a host path, or mount a named/anonymous volume.",
    ),
    click.option(
        "--mount",
        "mounts",
        metavar="type=...,source=...,target=...",
        multiple=True,
        help="Attach a bind, volume or tmpfs mount.",
    ),
    click.option("--tmpfs", "tmpfs", metavar="PATH[:OPTS]", multiple=True, help="Mount a tmpfs."),
    click.option(
        "--entrypoint", default=None, help='Override the image\'s entrypoint ("" clears it).'
    ),
    click.option("-w", "--workdir", default=None, help="Working directory inside the container."),
    click.option("-u", "--user", default=None, metavar="USER[:GROUP]", help="User to run as."),
    click.option("-h", "--hostname", default=None, help="Container host name."),
    click.option(
        "--network",
        "--net",
        "network",
        multiple=True,
        metavar="NAME|none|host|container:ID|nat",
        help="Connect to a network (more than once: several bridge networks). Process "
        "containers: the default bridge 'lamina' unless told otherwise; VM containers: "
        "nat (QEMU user-mode NAT, the default) or none.",
    ),
    click.option(
        "--network-alias", "network_aliases", multiple=True, help="A DNS name on the network."
    ),
    click.option("--ip", default=None, help="IPv4 address on the network (e.g. 172.30.100.104)."),
    click.option("--ip6", default=None, help="IPv6 address on the network."),
    click.option("--mac-address", default=None, help="MAC address (e.g. 92:d0:c6:0a:29:33)."),
    click.option(
        "--add-host", "add_hosts", multiple=True, metavar="HOST:IP",
        help="Add a line to /etc/hosts (IP may be host-gateway).",
    ),
    click.option("--dns", multiple=True, help="A DNS server for the container."),
    click.option("--dns-search", multiple=True, help="A DNS search domain."),
    click.option("--dns-option", "dns_options", multiple=True, help="A resolver option."),
    click.option(
        "-p",
        "--publish",
        multiple=True,
        metavar="[IP:][HOSTPORT:]PORT[/PROTO]",
        help="Publish a container's port on the host.",
    ),
    click.option(
        "-P", "--publish-all", is_flag=True, help="Publish every exposed port on a free host port."
    ),
    click.option("--expose", multiple=True, metavar="PORT[/PROTO]", help="Expose a port."),
    click.option("--cpus", default=None, help="Number of CPUs (e.g. 1.5)."),
    click.option(
        "-c", "--cpu-shares", type=int, default=None, help="CPU shares (relative weight)."
    ),
    click.option("--cpuset-cpus", default=None, help="CPUs to run on (0-3, 0,1)."),
    click.option("-m", "--memory", default=None, help="Memory limit (b, k, m, g)."),
    click.option(
        "--memory-swap", default=None, help="Memory plus swap limit; -1 for unlimited swap."
    ),
    click.option("--pids-limit", type=int, default=None, help="Process limit (-1 for unlimited)."),
    click.option("--privileged", is_flag=True, help="Give extended privileges to the container."),
    click.option("--cap-add", multiple=True, help="Add a Linux capability."),
    click.option("--cap-drop", multiple=True, help="Drop a Linux capability."),
    click.option(
        "--security-opt",
        multiple=True,
        help="seccomp=unconfined|FILE, no-new-privileges[:true|false].",
    ),
    click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only."),
    click.option(
        "--sysctl",
        "sysctls",
        multiple=True,
        metavar="KEY=VALUE",
        help="Set a namespaced kernel parameter.",
    ),
    click.option(
        "--ulimit", "ulimits", multiple=True, metavar="NAME=SOFT[:HARD]", help="Set a ulimit."
    ),
    click.option("--stop-signal", default=None, help="Signal to stop the container."),
    click.option(
        "--stop-timeout", type=int, default=None, help="Seconds to wait before killing on stop."
    ),
    click.option(
        "--init", is_flag=True, help="Run an init inside the container that reaps processes."
    ),
    click.option(
        "-l", "--label", "labels", multiple=True, metavar="KEY[=VALUE]", help="Set metadata."
    ),
    click.option(
        "--label-file",
        "label_files",
        multiple=True,
        metavar="FILE",
        help="Read labels from a file.",
    ),
    click.option("-i", "--interactive", is_flag=True, help="Keep STDIN open and attach it."),
    click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-TTY."),
    click.option(
        "--pull",
        type=click.Choice(["always", "missing", "never", "newer"]),
        default="missing",
        show_default=True,
        help="When to pull the image.",
    ),
    click.option(
        "--platform",
        default=None,
        metavar="OS/ARCH[/VARIANT]",
        help="Platform of the image to pull.",
    ),
    click.option(
        "--isolation",
        default="process",
        show_default=True,
        metavar="process|vm|auto",
        help="Isolation: process (namespaces), vm (micro-VM), auto (vm for foreign platforms).",
    ),
    click.option(
        "--vm-base",
        "vm_base",
        default=None,
        metavar="DIR|REF",
        help="VM containers: boot this VM base bundle's kernel, its disk under the image.",
    ),
    click.option(
        "--health-cmd", default=None, metavar="COMMAND", help="Command to run to check health."
    ),
    click.option(
        "--health-interval",
        default=None,
        metavar="DURATION",
        help="Time between running the check (ms|s|m|h) (default 30s).",
    ),
    click.option(
        "--health-timeout",
        default=None,
        metavar="DURATION",
        help="Maximum time to allow one check to run (ms|s|m|h) (default 30s).",
    ),
    click.option(
        "--health-retries",
        type=int,
        default=None,
        help="Consecutive failures needed to report unhealthy (default 3).",
    ),
    click.option(
        "--health-start-period",
        default=None,
        metavar="DURATION",
        help="Start period for the container to initialize before starting health-retries "
        "countdown (ms|s|m|h) (default 0s).",
    ),
    click.option(
        "--health-start-interval",
        default=None,
        metavar="DURATION",
        help="Time between running the check during the start period (ms|s|m|h) (default 5s).",
    ),
    click.option(
        "--no-healthcheck", is_flag=True, help="Disable any container-specified HEALTHCHECK."
    ),
    click.option(
        "--log-driver",
        "log_driver",
        default=None,
        metavar="DRIVER",
        help="json-file, k8s-file (default) or local: lamina's file log; none: no log.",
    ),
    click.option(
        "--log-opt",
        "log_opts",
        multiple=True,
        metavar="KEY=VALUE",
        help="Log option: max-size=10m (rotate at that size), max-file=3 (files kept).",
    ),
    click.option(
        "--restart",
        default=None,
        metavar="POLICY",
        help="Restart policy when the container exits: no (default), always, "
        "on-failure[:N], unless-stopped.",
    ),
]


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(_RUN_OPTIONS):
        f = opt(f)
    return f


def _create(
    engine: Engine, image: str, command: Sequence[str], flags: dict[str, Any], *, auto_remove: bool
) -> Container:
    """Flags -> a created container: checked, the image resolved (pulled per --pull),
    the config settled and created by the engine (``create_from_options``, the same
    in-process and through a daemon). Every failure is Docker's 125 (the container
    never existed), but 126/127 for a command that cannot run."""
    from lamina.engine._options import RunOptions
    from lamina.errors import LaminaError

    pull = flags.pop("pull")
    platform = flags.pop("platform")
    try:
        opts = RunOptions(**flags, auto_remove=auto_remove)
        ctr, warnings = engine.create_from_options(
            opts, image=image, command=command, pull=pull, platform=platform,
            progress=_progress,
        )  # fmt: skip
    except LaminaError as e:
        if e.exit_code not in (126, 127):
            e.exit_code = 125
        raise
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    return ctr


@_args_command("run")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-d", "--detach", is_flag=True, help="Run in the background and print the container ID."
)
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@sig_proxy_option
@detach_keys_option
@_run_options
def run(
    image: str,
    command: tuple[str, ...],
    detach: bool,
    auto_remove: bool,
    sig_proxy: bool,
    detach_keys: bytes | None,
    **flags: Any,
) -> None:
    """Create and run a new container from an image."""
    from lamina.errors import LaminaError

    if not detach:
        _require_tty(flags["interactive"], flags["tty"])
    engine = open_engine()  # a bad --runtime fails before any pull
    ctr = _create(engine, image, command, flags, auto_remove=auto_remove)
    if detach:
        try:
            engine.start(ctr.id)  # a --rm one that fails to start is removed by it
        except LaminaError as e:
            if e.exit_code not in (126, 127):
                e.exit_code = 125
            raise
        click.echo(ctr.id)
        _exit(engine, 0)
    code = run_attached(
        engine,
        ctr.id,
        stdin=ctr.config.stdin_open,
        tty=ctr.config.tty,
        sig_proxy=sig_proxy,
        start=True,
        detach_keys=detach_keys,
    )
    _exit(engine, 0 if code is None else code)  # None: detached, the container goes on


@_args_command("create")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@_run_options
def create(image: str, command: tuple[str, ...], auto_remove: bool, **flags: Any) -> None:
    """Create a new container (without starting it); prints its ID."""
    engine = open_engine()
    click.echo(_create(engine, image, command, flags, auto_remove=auto_remove).id)


def _exit(engine: Engine, code: int) -> NoReturn:
    """Exit with ``code``. As the ``lamina`` program, without the interpreter's
    teardown (freeing every module costs ~10 ms, a lot for ``run --rm IMAGE true``):
    close the runtime (its databases checkpoint), flush our output, and leave."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = (spec is not None and spec.name == "lamina.cli.main") or (
        os.path.basename(sys.argv[0]) == "lamina"
    )
    if not program:  # called from Python (tests, an embedding program)
        sys.exit(code)
    engine.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _require_tty(interactive: bool, tty: bool) -> None:
    """Docker's CheckTty: ``-i`` with ``-t`` attaches our stdin to the container's
    terminal, which needs a terminal here too (else nothing could ever end its input).
    ``-t`` alone, or ``-i`` alone, is fine with any stdin."""
    from lamina.errors import LaminaError

    if interactive and tty and not sys.stdin.isatty():
        raise LaminaError("the input device is not a TTY")


def exit_code_of(outcome: WaitOutcome) -> int:
    """The code ``run`` exits with: the container's, or Docker's 125/126/127 when its
    command never ran (reported as a runtime error with runc's message)."""
    from lamina.runtime import ExitReason

    if outcome.reason != ExitReason.RUNTIME_ERROR:
        return outcome.exit_code
    if outcome.exit_code in (126, 127):
        return outcome.exit_code
    low = outcome.error.lower()
    if "executable file not found" in low or "no such file" in low or "not found" in low:
        return 127
    if "permission denied" in low or "is a directory" in low:
        return 126
    return 125


def run_attached(
    engine: Engine,
    cid: str,
    *,
    stdin: bool,
    tty: bool,
    sig_proxy: bool,
    start: bool,
    detach_keys: bytes | None = None,
) -> int | None:
    """Attach the caller's stdio (stdin only if asked), start, wait; the exit code, or
    None when the detach keys were typed (the container runs on).

    The runtime connects the attach before it starts the container, so no early
    output is lost. Attaching happens on the main thread: the runtime follows the
    terminal size through SIGWINCH there. With a TTY the caller's terminal is raw for
    the duration and always restored; without one, the signals lamina gets are
    forwarded to the container (Docker's --sig-proxy).
    """
    import signal
    import threading

    from lamina.errors import LaminaError, NotFound
    from lamina.runtime._term import raw_terminal

    sys.stdout.flush()
    sys.stderr.flush()
    in_stream = sys.stdin.buffer if stdin else None
    with contextlib.ExitStack() as stack:
        if tty and stdin and sys.stdin.isatty():
            stack.enter_context(raw_terminal(sys.stdin.fileno()))
        if sig_proxy and not tty and threading.current_thread() is threading.main_thread():
            stack.enter_context(_proxy_signals(engine, cid, signal))
        try:
            detached = engine.attach(
                cid,
                stdin=in_stream,
                stdout=sys.stdout.buffer,
                stderr=sys.stderr.buffer,
                tty=tty,
                start=start,
                detach_keys=detach_keys,
            )
        except LaminaError as e:
            if e.exit_code not in (126, 127):
                e.exit_code = 125
            raise
        if detached:
            return None
        try:
            outcome = engine.wait(cid)
        except NotFound:
            raise LaminaError(
                f"container {_short(cid)} was removed before its exit code could be read"
            ) from None
    code = exit_code_of(outcome)
    if outcome.error and code in (125, 126, 127):
        _error(outcome.error)
    return code


@contextlib.contextmanager
def _proxy_signals(engine: Engine, cid: str, signal: Any) -> Iterator[None]:
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(Exception):
            engine.kill(cid, signal.Signals(signum).name)

    previous = {}
    for name in _SIGNALS_TO_PROXY:
        sig = getattr(signal, name)
        previous[sig] = signal.signal(sig, forward)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- lifecycle -----------------------------------------------------------------------


@_command("start")
@click.argument("containers", nargs=-1, required=True)
@click.option("-a", "--attach", is_flag=True, help="Attach stdout/stderr and forward signals.")
@click.option("-i", "--interactive", is_flag=True, help="Attach the container's STDIN.")
@detach_keys_option
def start(
    containers: tuple[str, ...], attach: bool, interactive: bool, detach_keys: bytes | None
) -> None:
    """Start one or more stopped containers."""
    engine = open_engine()
    if attach or interactive:
        if len(containers) > 1:
            raise FlagError("you cannot start and attach multiple containers at once", "start")
        ctr = engine.get(containers[0])
        code = run_attached(
            engine, ctr.id, stdin=interactive, tty=ctr.config.tty, sig_proxy=True, start=True,
            detach_keys=detach_keys,
        )  # fmt: skip
        sys.exit(0 if code is None else code)  # None: detached, the container goes on
    _each(containers, engine.start)


@_command("attach")
@click.argument("container")
@click.option("--no-stdin", is_flag=True, help="Do not attach STDIN.")
@sig_proxy_option
@detach_keys_option
def attach(container: str, no_stdin: bool, sig_proxy: bool, detach_keys: bytes | None) -> None:
    """Attach local standard input, output, and error streams to a running container;
    exits with its exit code."""
    from lamina.errors import LaminaError
    from lamina.runtime._term import DETACHED_MESSAGE

    engine = open_engine()
    ctr = engine.get(container)
    stdin = ctr.config.stdin_open and not no_stdin
    _require_tty(stdin, ctr.config.tty)
    try:
        code = run_attached(engine, ctr.id, stdin=stdin, tty=ctr.config.tty,
                            sig_proxy=sig_proxy, start=False, detach_keys=detach_keys)  # fmt: skip
    except LaminaError as e:
        if e.exit_code == 125:  # not attached (a stopped container): Docker's 1
            e.exit_code = 1
        raise
    if code is None:
        print(DETACHED_MESSAGE, file=sys.stderr)
        code = 1
    _exit(engine, code)
