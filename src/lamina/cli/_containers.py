"""Container commands: run, create, start, stop, restart, kill, rm, ps, logs, exec,
wait, stats, top, inspect, pause, unpause, rename, cp, diff, commit, update, and the
``container`` group.

Each command opens the engine on the root, does one thing through it and prints
what Docker prints. Flag and pre-run failures exit 125 with one
line on stderr (Docker's code); ``run`` and ``start -a`` exit with the container's
code, ``exec`` with its process's, 126/127 when the command could not be executed or
found; ``run -it``/``exec -it`` with a stdin that is not a terminal exit 1, as
Docker's CLI does. Imports of the
engine happen inside the commands: this module loads with click.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, cast

import click

from lamina.cli._click import DockerCommand, DockerGroup, FlagError
from lamina.cli._output import FORMAT_OPTION, INSPECT_FORMAT_OPTION

if TYPE_CHECKING:
    from lamina.engine import Container, Engine, WaitOutcome

_SIGNALS_TO_PROXY = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")


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


def open_engine() -> Engine:
    """The engine on ``--root`` with ``--runtime``; a runtime that is missing or
    cannot work on this host fails here, before anything is done (exit 125)."""
    from lamina.engine import open_engine as _open
    from lamina.errors import LaminaError

    settings = _settings()
    try:
        return _open(
            settings.root,
            oci_runtime=settings.oci_runtime,
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


def _error(msg: str) -> None:
    print(f"lamina: error: {' '.join(msg.split())}", file=sys.stderr)


def _each(refs: Sequence[str], action: Callable[[str], object], echo: bool = True) -> None:
    """Apply ``action`` to every container, reporting failures one line each (Docker
    goes on with the others), then exit 1 if any failed."""
    from lamina.errors import LaminaError

    failed = False
    for ref in refs:
        try:
            action(ref)
        except LaminaError as e:
            _error(str(e))
            failed = True
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
        return up + " (Paused)" if status == "paused" else up
    if status == "removing":
        return "Removal In Progress"
    if status == "failed" and st.started_at is None:
        return "Created"  # Docker: a first start that failed leaves it created
    if status in ("exited", "failed") and st.exit_code is not None:
        ago = f" {human_duration(now - st.finished_at)} ago" if st.finished_at else ""
        oom = " (OOMKilled)" if st.oom_killed else ""
        return f"Exited ({st.exit_code}){ago}{oom}"
    return "Created"


def _state_word(c: Container) -> str:
    s = str(c.state.status)
    if s == "failed":
        return "created" if c.state.started_at is None else "exited"
    return s


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
        default=None,
        metavar="none|host|container:ID|nat",
        help="Network mode: process containers none (default), host or container:ID; "
        "VM containers nat (default: QEMU user-mode NAT) or none.",
    ),
    click.option(
        "-p",
        "--publish",
        multiple=True,
        metavar="[IP:][HOSTPORT:]PORT[/PROTO]",
        help="Publish a container's port on the host (VM containers with nat).",
    ),
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
]


def _run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(_RUN_OPTIONS):
        f = opt(f)
    return f


def _prepare(
    engine: Engine, image: str, command: Sequence[str], flags: dict[str, Any], *, auto_remove: bool
) -> Any:
    """Flags -> ContainerConfig, the image resolved (pulled per --pull) and the config
    settled by the engine. Every failure here is Docker's 125: the container never
    existed."""
    from lamina.cli._runopts import RunOptions, build_config, parse_isolation
    from lamina.errors import LaminaError

    pull = flags.pop("pull")
    platform = flags.pop("platform")
    try:
        isolation = parse_isolation(flags["isolation"])
        opts = RunOptions(**flags, auto_remove=auto_remove)
        # Parse flags before touching the image: a typo should not cost a pull.
        build_config(opts, image="", image_ref=image, command=command, cpu_count=os.cpu_count())
        record = engine.resolve_image(image, pull=pull, platform=platform, progress=_progress)
        parsed = build_config(
            opts, image=record.id, image_ref=image, command=command, cpu_count=os.cpu_count()
        )
        warnings = parsed.warnings + engine.settle(
            parsed.config,
            record,
            requested=isolation,
            network=parsed.network,
            make_bind_sources=parsed.bind_dirs_to_create,
            progress=_progress,
        )
        for w in warnings:
            print(f"WARNING: {w}", file=sys.stderr)
        return parsed.config
    except LaminaError as e:
        e.exit_code = 125
        raise


def _create(rt: Engine, config: Any) -> Container:
    from lamina.errors import LaminaError

    try:
        return rt.create(config)
    except LaminaError as e:
        if e.exit_code not in (126, 127):
            e.exit_code = 125
        raise


@_args_command("run")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-d", "--detach", is_flag=True, help="Run in the background and print the container ID."
)
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@click.option(
    "--sig-proxy/--no-sig-proxy", default=True, help="Forward signals to the container (no TTY)."
)
@_run_options
def run(
    image: str,
    command: tuple[str, ...],
    detach: bool,
    auto_remove: bool,
    sig_proxy: bool,
    **flags: Any,
) -> None:
    """Create and run a new container from an image."""
    from lamina.errors import LaminaError

    if not detach:
        _require_tty(flags["interactive"], flags["tty"])
    rt = open_engine()  # a bad --runtime fails before any pull
    config = _prepare(rt, image, command, flags, auto_remove=auto_remove)
    ctr = _create(rt, config)
    if detach:
        try:
            rt.start(ctr.id)
        except Exception as e:
            _start_failed(rt, ctr.id, e, remove=auto_remove)
        click.echo(ctr.id)
        _exit(rt, 0)
    try:
        code = run_attached(
            rt,
            ctr.id,
            stdin=config.stdin_open,
            tty=config.tty,
            sig_proxy=sig_proxy,
            start=True,
        )
    except LaminaError:
        if auto_remove:  # e.g. a published port taken: --rm leaves nothing behind
            _remove_quietly(rt, ctr.id)
        raise
    # Its exit removed a --rm container already (the runtime's doing): removing it
    # here could take it from a `restart` that keeps it, as Docker's does.
    _exit(rt, code)


@_args_command("create")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@_run_options
def create(image: str, command: tuple[str, ...], auto_remove: bool, **flags: Any) -> None:
    """Create a new container (without starting it); prints its ID."""
    rt = open_engine()
    config = _prepare(rt, image, command, flags, auto_remove=auto_remove)
    click.echo(_create(rt, config).id)


def _exit(rt: Engine, code: int) -> NoReturn:
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
    rt.close()
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


def _start_failed(rt: Engine, cid: str, e: BaseException, *, remove: bool) -> None:
    from lamina.errors import LaminaError

    if remove:
        _remove_quietly(rt, cid)
    if isinstance(e, LaminaError) and e.exit_code not in (126, 127):
        e.exit_code = 125
    raise e


def _remove_quietly(rt: Engine, cid: str) -> None:
    from lamina.errors import LaminaError

    with contextlib.suppress(LaminaError):
        rt.remove(cid, force=True, volumes=True)


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
    rt: Engine, cid: str, *, stdin: bool, tty: bool, sig_proxy: bool, start: bool
) -> int:
    """Attach the caller's stdio (stdin only if asked), start, wait; the exit code.

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
            stack.enter_context(_proxy_signals(rt, cid, signal))
        try:
            rt.attach(
                cid,
                stdin=in_stream,
                stdout=sys.stdout.buffer,
                stderr=sys.stderr.buffer,
                tty=tty,
                start=start,
            )
        except LaminaError as e:
            if e.exit_code not in (126, 127):
                e.exit_code = 125
            raise
        try:
            outcome = rt.wait(cid)
        except NotFound:
            raise LaminaError(
                f"container {_short(cid)} was removed before its exit code could be read"
            ) from None
    code = exit_code_of(outcome)
    if outcome.error and code in (125, 126, 127):
        _error(outcome.error)
    return code


@contextlib.contextmanager
def _proxy_signals(rt: Engine, cid: str, signal: Any) -> Iterator[None]:
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(Exception):
            rt.kill(cid, signal.Signals(signum).name)

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
def start(containers: tuple[str, ...], attach: bool, interactive: bool) -> None:
    """Start one or more stopped containers."""
    rt = open_engine()
    if attach or interactive:
        if len(containers) > 1:
            raise FlagError("you cannot start and attach multiple containers at once", "start")
        ctr = rt.get(containers[0])
        code = run_attached(
            rt, ctr.id, stdin=interactive, tty=ctr.config.tty, sig_proxy=True, start=True
        )
        sys.exit(code)
    _each(containers, rt.start)


_STOP_TIME = click.option(
    "-t",
    "--time",
    "--timeout",
    "timeout",
    type=int,
    default=None,
    help="Seconds to wait before killing.",
)


@_command("stop")
@click.argument("containers", nargs=-1, required=True)
@_STOP_TIME
@click.option(
    "-s",
    "--signal",
    "sig",
    default=None,
    help="Signal to send (default: the container's stop signal).",
)
def stop(containers: tuple[str, ...], timeout: int | None, sig: str | None) -> None:
    """Stop one or more running containers (stop signal, then SIGKILL)."""
    rt = open_engine()
    _each(containers, lambda ref: rt.stop(ref, timeout=timeout, signal=sig))


@_command("restart")
@click.argument("containers", nargs=-1, required=True)
@_STOP_TIME
@click.option("-s", "--signal", "sig", default=None, help="Signal to stop with.")
def restart(containers: tuple[str, ...], timeout: int | None, sig: str | None) -> None:
    """Restart one or more containers."""
    rt = open_engine()
    _each(containers, lambda ref: rt.restart(ref, timeout=timeout, signal=sig))


@_command("kill")
@click.argument("containers", nargs=-1, required=True)
@click.option("-s", "--signal", "sig", default="SIGKILL", show_default=True, help="Signal to send.")
def kill(containers: tuple[str, ...], sig: str) -> None:
    """Kill one or more running containers."""
    rt = open_engine()
    _each(containers, lambda ref: rt.kill(ref, sig))


@_command("pause")
@click.argument("containers", nargs=-1, required=True)
def pause(containers: tuple[str, ...]) -> None:
    """Pause all processes within one or more containers."""
    rt = open_engine()
    _each(containers, rt.pause)


@_command("unpause")
@click.argument("containers", nargs=-1, required=True)
def unpause(containers: tuple[str, ...]) -> None:
    """Unpause all processes within one or more containers."""
    rt = open_engine()
    _each(containers, rt.unpause)


@_command("rm")
@click.argument("containers", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Kill and remove a running container.")
@click.option("-v", "--volumes", is_flag=True, help="Remove the container's anonymous volumes.")
def rm(containers: tuple[str, ...], force: bool, volumes: bool) -> None:
    """Remove one or more containers."""
    rt = open_engine()
    _each(containers, lambda ref: rt.remove(ref, force=force, volumes=volumes))


@_command("rename")
@click.argument("container")
@click.argument("new_name")
def rename(container: str, new_name: str) -> None:
    """Rename a container."""
    open_engine().rename(container, new_name)


@_command("wait")
@click.argument("containers", nargs=-1, required=True)
@click.option(
    "--condition",
    type=click.Choice(["not-running", "next-exit", "removed"]),
    default="not-running",
    show_default=True,
)
def wait(containers: tuple[str, ...], condition: str) -> None:
    """Block until one or more containers stop, then print their exit codes."""
    from lamina.runtime import WaitCondition

    rt = open_engine()

    def do(ref: str) -> None:
        click.echo(str(rt.wait(ref, WaitCondition(condition)).exit_code))

    _each(containers, do, echo=False)


@_command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--filter", "filters", multiple=True, metavar="label=K[=V]|until=TIME")
def prune(force: bool, filters: tuple[str, ...]) -> None:
    """Remove all stopped containers, and what interrupted commands left."""
    from lamina.cli._output import human_size
    from lamina.engine import prune_containers

    select = prune_selector(filters, "container prune")
    question = (
        "WARNING! This will remove all stopped containers.\nAre you sure you want to continue?"
    )
    if not force and sys.stdin.isatty() and not click.confirm(question):
        return
    result = prune_containers(open_engine(), select)
    for message in result.errors:
        _error(message)
    if result.deleted:
        click.echo("Deleted Containers:")
        for cid in result.deleted:
            click.echo(cid)
        click.echo("")
    click.echo(f"Total reclaimed space: {human_size(result.reclaimed)}")


def prune_selector(filters: Sequence[str], command: str) -> Any:
    """``--filter`` of the prune commands (until=, label=, label!=) as a
    ``lamina.engine.Selector``."""
    from lamina.engine import Selector

    select = Selector()
    for f in filters:
        key, _, value = f.partition("=")
        if key == "until":
            from lamina.cli._runopts import parse_time

            select.until = parse_time(value, time.time(), "--filter until")
        elif key == "label":
            select.labels.append(value)
        elif key == "label!":
            select.not_labels.append(value)
        else:
            raise FlagError(f"invalid filter {f!r} (supported: label, label!, until)", command)
    return select


def _label_match(c: Container, spec: str) -> bool:
    key, sep, value = spec.partition("=")
    if key not in c.config.labels:
        return False
    return not sep or c.config.labels[key] == value


# -- ps ------------------------------------------------------------------------------


class _ImageInfo:
    """Image names and configs for listings, each looked up once."""

    def __init__(self) -> None:
        self._local: Any = None
        self._configs: dict[str, dict[str, Any]] = {}

    @property
    def local(self) -> Any:
        if self._local is None:
            from lamina.cli._images import open_local

            self._local = open_local()
        return self._local

    def config(self, image_id: str) -> dict[str, Any]:
        if image_id not in self._configs:
            try:
                rec = self.local.images.resolve(image_id)
                self._configs[image_id] = self.local.config(rec).get("config") or {}
            except Exception:
                self._configs[image_id] = {}
        return self._configs[image_id]

    def image_id(self, name: str) -> str | None:
        try:
            rec = self.local.images.resolve(name)
        except Exception:
            return None
        return str(rec.id)


def command_of(c: Container, images: _ImageInfo) -> list[str]:
    """Entrypoint + command as the container runs them (the image's where not set;
    a new entrypoint drops the image's CMD, as in Docker)."""
    cfg = c.config
    entry = cfg.entrypoint
    cmd = cfg.command
    if entry is None or cmd is None:
        img = images.config(cfg.image)
        if entry is None:
            entry = list(img.get("Entrypoint") or [])
            if cmd is None:
                cmd = list(img.get("Cmd") or [])
        if cmd is None:
            cmd = []
    return [*entry, *cmd]


def _ellipsis(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _mount_names(c: Container) -> list[str]:
    return [m.source or m.target for m in c.config.mounts if m.type in ("volume", "bind")]


# Docker's ps columns: the default table, and the title of each template field.
_PS_COLUMNS = ("ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names")
_PS_HEADERS = {
    "ID": "CONTAINER ID", "Names": "NAMES", "Image": "IMAGE", "Command": "COMMAND",
    "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE",
    "Status": "STATUS", "Size": "SIZE", "Labels": "LABELS", "Mounts": "MOUNTS",
    "LocalVolumes": "LOCAL VOLUMES", "Networks": "NETWORKS", "Isolation": "ISOLATION",
}  # fmt: skip


def ps_row(c: Container, images: _ImageInfo, now: float, trunc: bool = True) -> Any:
    """One container as ``docker ps`` shows it to ``--format`` (Docker's fields, all
    text, truncated unless ``--no-trunc``) and lamina's ``Isolation``."""
    from lamina.cli._output import LabeledRow, go_quote, go_time

    command = " ".join(command_of(c, images))
    mounts = _mount_names(c)
    fields = {
        "ID": _short(c.id) if trunc else c.id,
        "Names": c.name,
        "Image": c.config.image_ref or _short(c.config.image.removeprefix("sha256:")),
        "Command": go_quote(_ellipsis(command, 20) if trunc else command),
        "CreatedAt": go_time(c.created),
        "RunningFor": f"{human_duration(now - c.created)} ago",
        "Ports": ", ".join(str(p) for p in c.ports),
        "State": _state_word(c),
        "Status": status_text(c, now),
        "Size": "0B",
        "Mounts": ",".join(_ellipsis(m, 15) if trunc else m for m in mounts),
        "LocalVolumes": str(sum(m.type == "volume" for m in c.config.mounts)),
        "Networks": str(c.config.network),
        "Isolation": c.config.isolation,
    }
    return LabeledRow("ContainerRow", c.config.labels, fields)


_PS_FILTERS = ("status", "name", "id", "label", "exited", "ancestor", "isolation")
_STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def _filter_containers(
    containers: list[Container], filters: Sequence[str], images: _ImageInfo
) -> list[Container]:
    """Docker's ps filters: values of one key are ORed (label: ANDed), keys ANDed."""
    import re

    by_key: dict[str, list[str]] = {}
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep:
            raise FlagError(f"bad filter {f!r}: expected KEY=VALUE", "ps")
        if key not in _PS_FILTERS:
            raise FlagError(f"invalid filter {key!r} (supported: {', '.join(_PS_FILTERS)})", "ps")
        if key == "status" and value not in _STATUSES:
            raise FlagError(f"invalid filter 'status={value}' ({', '.join(_STATUSES)})", "ps")
        if key == "name":
            try:
                re.compile(value)
            except re.error:
                raise FlagError(f"invalid filter 'name={value}': bad pattern", "ps") from None
        by_key.setdefault(key, []).append(value)

    def keep(c: Container, key: str, values: list[str]) -> bool:
        if key == "status":
            return _state_word(c) in values
        if key == "name":
            return any(re.search(v, c.name) for v in values)
        if key == "id":
            return any(c.id.startswith(v) for v in values)
        if key == "label":
            return all(_label_match(c, v) for v in values)
        if key == "exited":
            code = c.state.exit_code
            return _state_word(c) == "exited" and code is not None and str(code) in values
        if key == "ancestor":
            return any(_is_ancestor(c, v, images) for v in values)
        return c.config.isolation in values  # isolation

    out = containers
    for key, values in by_key.items():
        out = [c for c in out if keep(c, key, values)]
    return out


def _is_ancestor(c: Container, value: str, images: _ImageInfo) -> bool:
    if c.config.image_ref == value:
        return True
    if c.config.image.removeprefix("sha256:").startswith(value.removeprefix("sha256:")):
        return True
    return images.image_id(value) == c.config.image


@_command("ps")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default: running).")
@click.option("-q", "--quiet", is_flag=True, help="Only display container IDs.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="status=, name=, id=, label=, ancestor=, exited=",
)
@click.option(
    "-n", "--last", type=int, default=None, help="Show the N last created containers (all states)."
)
@click.option(
    "-l", "--latest", is_flag=True, help="Show the latest created container (all states)."
)
@FORMAT_OPTION
def ps(
    all_: bool,
    quiet: bool,
    no_trunc: bool,
    filters: tuple[str, ...],
    last: int | None,
    latest: bool,
    fmt: str,
) -> None:
    """List containers."""
    from lamina.cli._output import print_listing

    rt = open_engine()
    if latest:
        last = 1
    show_all = (
        all_ or last is not None or any(f.startswith(("status=", "exited=")) for f in filters)
    )
    containers = sorted(rt.list(all=show_all), key=lambda c: c.created, reverse=True)
    images = _ImageInfo()
    containers = _filter_containers(containers, filters, images)
    if last is not None and last >= 0:
        containers = containers[:last]
    if quiet:
        for c in containers:
            click.echo(c.id if no_trunc else _short(c.id))
        return
    rows = [ps_row(c, images, time.time(), trunc=not no_trunc) for c in containers]
    print_listing(fmt, rows, _PS_COLUMNS, _PS_HEADERS)


# -- logs ----------------------------------------------------------------------------


def _rfc3339_nano(ts: float) -> str:
    """Docker's 9 digits; lamina keeps microseconds (a float holds no more), printed
    exactly: the time of a line fed back to ``--since``/``--until`` is the line's."""
    secs = int(ts)
    micros = round((ts - secs) * 1e6)
    if micros >= 1_000_000:
        secs, micros = secs + 1, micros - 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{micros:06d}000Z"


@_command("logs")
@click.argument("container")
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option("-n", "--tail", default="all", show_default=True, help="Lines to show from the end.")
@click.option(
    "--since", default=None, help="Since a time (RFC 3339, Unix time) or a duration ago (10m)."
)
@click.option("--until", default=None, help="Until a time (RFC 3339, Unix time) or a duration ago.")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps.")
def logs(
    container: str, follow: bool, tail: str, since: str | None, until: str | None, timestamps: bool
) -> None:
    """Fetch the logs of a container (its stdout and stderr, on ours)."""
    from lamina.cli._runopts import parse_time

    now = time.time()
    try:
        tail_n = None if tail == "all" else int(tail)
    except ValueError:
        raise FlagError(f"invalid --tail {tail!r}: expected a number or all", "logs") from None
    if tail_n is not None and tail_n < 0:
        tail_n = None  # Docker: negative means all
    since_ts = parse_time(since, now, "--since") if since else None
    until_ts = parse_time(until, now, "--until") if until else None
    rt = open_engine()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for entry in rt.logs(container, follow=follow, tail=tail_n, since=since_ts, until=until_ts):
        stream = err if entry.stream == "stderr" else out
        if timestamps:
            stream.write(_rfc3339_nano(entry.timestamp).encode() + b" ")
        stream.write(entry.data)
        if follow:
            stream.flush()
    out.flush()
    err.flush()


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
) -> None:
    """Run a command in a running container; exits with its exit code."""
    from lamina.cli._runopts import InvalidOption, parse_env, parse_env_file

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
    rt = open_engine()
    sys.stdout.flush()
    with contextlib.ExitStack() as stack:
        if interactive:
            stdin: Any = sys.stdin.buffer
        else:
            stdin = stack.enter_context(open(os.devnull, "rb"))
        result = rt.exec(
            container,
            list(command),
            env=envs or None,
            user=user,
            workdir=workdir,
            tty=tty,
            stdin=stdin,
            detach=detach,
            stream=True,
        )
    sys.exit(result.exit_code)


# -- stats and top -------------------------------------------------------------------


def _binary_size(n: float) -> str:
    """Docker's stats units: binary, two decimals (``1.5MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.2f}{unit}"
        n /= 1024
    return f"{n:.2f}PiB"


# Docker's stats columns: the default table, and the title of each template field.
_STATS_COLUMNS = ("ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs")
_STATS_HEADERS = {
    "Container": "CONTAINER", "Name": "NAME", "ID": "CONTAINER ID", "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT", "MemPerc": "MEM %", "NetIO": "NET I/O",
    "BlockIO": "BLOCK I/O", "PIDs": "PIDS",
}  # fmt: skip


def _stats_row(c: Container, ref: str, s: Any, prev: Any, ncpu: int, trunc: bool) -> Any:
    """One sample as ``docker stats`` shows it to ``--format``; ``ref`` is how the
    container was asked for (its ID when all are listed)."""
    from lamina.cli._output import Row, human_size

    cpu = s.cpu_percent
    if prev is not None:
        sys_delta = s.system_cpu_ns - prev.system_cpu_ns
        cpu_delta = s.cpu_usage_ns - prev.cpu_usage_ns
        if sys_delta > 0 and cpu_delta >= 0:
            cpu = cpu_delta / sys_delta * ncpu * 100.0
    mem_pct = s.memory_used / s.memory_limit * 100.0 if s.memory_limit else 0.0
    fields = {
        "Container": ref,
        "ID": _short(c.id) if trunc else c.id,
        "Name": c.name,
        "CPUPerc": f"{cpu:.2f}%",
        "MemUsage": f"{_binary_size(s.memory_used)} / {_binary_size(s.memory_limit)}",
        "MemPerc": f"{mem_pct:.2f}%",
        "NetIO": f"{human_size(s.net_rx)} / {human_size(s.net_tx)}",
        "BlockIO": f"{human_size(s.block_read)} / {human_size(s.block_write)}",
        "PIDs": str(s.pids),
    }
    return Row("StatsRow", fields)


@_command("stats")
@click.argument("containers", nargs=-1)
@click.option("-a", "--all", "all_", is_flag=True, help="Show all containers (default: running).")
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output.")
@FORMAT_OPTION
def stats(
    containers: tuple[str, ...], all_: bool, no_stream: bool, no_trunc: bool, fmt: str
) -> None:
    """Display live resource usage of containers."""
    from lamina.cli._output import print_listing
    from lamina.errors import LaminaError

    rt = open_engine()
    if containers:
        targets = [rt.get(ref) for ref in containers]
    else:
        targets = [
            c for c in rt.list(all=all_) if all_ or str(c.state.status) in ("running", "paused")
        ]
    ncpu = os.cpu_count() or 1
    prev: dict[str, Any] = {}

    def sample() -> dict[str, Any]:
        out = {}
        for c in targets:
            try:
                out[c.id] = rt.stats(c.id)
            except LaminaError:
                continue
        return out

    first = sample()
    if no_stream:
        time.sleep(0.5)  # two samples: CPU % is a rate
        prev, first = first, sample()
    refs = dict(zip((c.id for c in targets), containers, strict=False))
    while True:
        rows = [
            _stats_row(c, refs.get(c.id, c.id), first[c.id], prev.get(c.id), ncpu, not no_trunc)
            for c in targets
            if c.id in first
        ]
        if fmt in ("", "table") and not no_stream and sys.stdout.isatty():
            sys.stdout.write("\033[2J\033[H")
        print_listing(fmt, rows, _STATS_COLUMNS, _STATS_HEADERS)
        sys.stdout.flush()
        if no_stream:
            return
        time.sleep(1)
        prev, first = first, sample()
        if containers and not first:
            return


@_command("port")
@click.argument("container")
@click.argument("private_port", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
def port(container: str, private_port: str | None) -> None:
    """List a container's published ports, or the host addresses of one of its ports."""
    from lamina.errors import LaminaError

    rt = open_engine()
    c = rt.get(container)
    ports = c.ports
    if private_port is not None:
        number, _, proto = private_port.partition("/")
        proto = (proto or "tcp").lower()
        if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("tcp", "udp"):
            raise LaminaError(f"invalid port {private_port!r}: expected PORT[/tcp|udp]")
        ports = [p for p in ports if p.private == f"{int(number)}/{proto}"]
        if not ports:
            raise LaminaError(f"no public port '{int(number)}/{proto}' published for {container}")
        for p in ports:
            click.echo(p.public)
        return
    for p in ports:
        click.echo(f"{p.private} -> {p.public}")


@_command("top")
@click.argument("container")
def top(container: str) -> None:
    """Display the running processes of a container."""
    from lamina.cli._output import print_table

    headers, rows = open_engine().top(container)
    print_table(headers, rows)


# -- inspect -------------------------------------------------------------------------


@_command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--type",
    "kind",
    type=click.Choice(["container", "image"]),
    default=None,
    help="Only look for this kind of object.",
)
@INSPECT_FORMAT_OPTION
@click.option("-s", "--size", is_flag=True, help="Accepted for Docker compatibility.")
def inspect(names: tuple[str, ...], kind: str | None, fmt: str | None, size: bool) -> None:
    """Show low-level information on containers or images, as JSON (containers first)."""
    _inspect(names, kind, fmt)


@_command("inspect")
@click.argument("containers", nargs=-1, required=True)
@INSPECT_FORMAT_OPTION
@click.option("-s", "--size", is_flag=True, help="Accepted for Docker compatibility.")
def container_inspect(containers: tuple[str, ...], fmt: str | None, size: bool) -> None:
    """Show low-level information on one or more containers, as JSON."""
    _inspect(containers, "container", fmt)


def _inspect(names: Sequence[str], kind: str | None, fmt: str | None) -> None:
    from lamina.cli._output import print_inspect
    from lamina.errors import LaminaError, NotFound

    rt = open_engine() if kind in (None, "container") else None
    local = None
    out: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in names:
        found: dict[str, Any] | None = None
        if rt is not None:
            try:
                found = dict(rt.inspect(name))
            except NotFound:
                found = None
        if found is None and kind in (None, "image"):
            from lamina.cli._images import inspect_image, open_local

            local = local or open_local()
            try:
                found = inspect_image(local, local.images.resolve(name))
            except LaminaError:
                found = None
        if found is None:
            missing.append(name)
        else:
            out.append(found)
    print_inspect(fmt, out, [f"no such {kind or 'object'}: {name}" for name in missing])


# -- files: cp, diff, commit ---------------------------------------------------------


class _IterReader:
    """A read()-able stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._it = chunks
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def readable(self) -> bool:
        return True


def _split_container_path(arg: str) -> tuple[str, str] | None:
    """``CTR:PATH`` -> (CTR, PATH); None for a local path (one with a '/' before any ':',
    or no ':' at all), as Docker decides."""
    if arg == "-" or arg.startswith(("/", ".")):
        return None
    head, sep, tail = arg.partition(":")
    if not sep or "/" in head:
        return None
    return head, tail or "/"


@_command("cp")
@click.argument("src")
@click.argument("dest")
@click.option("-L", "--follow-link", is_flag=True, help="Always follow a symbolic link in SRC.")
@click.option(
    "-a", "--archive", is_flag=True, help="Archive mode: keep the source's owners (uid/gid)."
)
@click.option("-q", "--quiet", is_flag=True, help="Accepted for Docker compatibility.")
def cp(src: str, dest: str, follow_link: bool, archive: bool, quiet: bool) -> None:
    """Copy files between a container and the host: CTR:PATH DEST, SRC CTR:PATH;
    '-' is a tar stream on stdout (as DEST) or stdin (as SRC). Copies belong to root
    in the container, to you on the host, unless -a."""
    s, d = _split_container_path(src), _split_container_path(dest)
    if (s is None) == (d is None):
        raise FlagError(
            "copying between containers, or between local paths, is not supported: "
            "give exactly one CONTAINER:PATH",
            "cp",
        )
    rt = open_engine()
    if s is not None:
        _copy_from_container(rt, s[0], s[1], dest, follow=follow_link, archive=archive)
    else:
        assert d is not None
        _copy_to_container(rt, src, d[0], d[1], follow=follow_link, archive=archive)


def _copy_from_container(
    rt: Engine, ref: str, path: str, dest: str, *, follow: bool, archive: bool
) -> None:
    """Docker's cp to the host: into DEST if it is a directory, else as DEST. The
    archive from the container is extracted with ``apply_layer`` (nothing lands
    outside its target); without ``archive`` the files belong to whoever runs this."""
    import shutil

    from lamina import _leases
    from lamina.errors import LaminaError
    from lamina.image import apply_layer
    from lamina.runtime._fsops import archive_name

    if dest == "-":
        out = sys.stdout.buffer
        for chunk in rt.copy_out(ref, path, follow_link=follow):
            out.write(chunk)
        out.flush()
        return
    # The destination is checked before the container is asked for anything.
    dest_path = os.path.abspath(dest)
    into_dir = os.path.isdir(dest_path)
    parent = os.path.dirname(dest_path)
    if not into_dir and not os.path.isdir(parent):
        raise LaminaError(f"destination directory {parent} does not exist")
    top = archive_name(path)
    if not into_dir and top == "." and os.path.lexists(dest_path):
        raise LaminaError(f"cannot copy a directory to a file: {dest}")
    stream = cast(BinaryIO, _IterReader(iter(rt.copy_out(ref, path, follow_link=follow))))
    if into_dir:
        # Into an existing directory: the tar's top entry is the source's base name.
        apply_layer(stream, Path(dest_path), owners=archive)
        return
    if top == ".":  # a directory's contents (DIR/.): DEST becomes that directory
        os.mkdir(dest_path)
        apply_layer(stream, Path(dest_path), owners=archive)
        return
    # Anything else lands beside DEST first, then takes its name in one rename; a
    # lease removes the scratch directory if this process dies before that.
    with _leases.take(Path(_settings().root), "cp") as lease:
        tmp = os.path.join(parent, f".lamina-cp-{os.urandom(6).hex()}")
        lease.add_path(tmp)
        os.mkdir(tmp, 0o700)
        try:
            apply_layer(stream, Path(tmp), owners=archive)
            got = os.path.join(tmp, top)
            if not os.path.lexists(got):
                entries = os.listdir(tmp)
                if len(entries) != 1:
                    raise LaminaError(f"unexpected archive from container for {path}")
                got = os.path.join(tmp, entries[0])
            is_dir = os.path.isdir(got) and not os.path.islink(got)
            if os.path.lexists(dest_path):
                if is_dir:
                    raise LaminaError(f"cannot copy a directory to a file: {dest}")
                os.replace(got, dest_path)
            else:
                if dest.endswith("/") and not is_dir:
                    raise LaminaError(f"destination directory {dest} does not exist")
                os.rename(got, dest_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_to_container(
    rt: Engine, src: str, ref: str, path: str, *, follow: bool, archive: bool
) -> None:
    """Docker's cp into a container: a destination symlink is followed (inside the
    container), an existing directory receives SRC under its name, anything else
    becomes SRC. The archive is made here, owned by root (0:0) unless ``archive``."""
    import posixpath

    from lamina.errors import LaminaError
    from lamina.runtime._fsops import tar_of

    if src == "-":
        rt.copy_in(ref, path, sys.stdin.buffer)
        return
    src_path = os.path.abspath(src)
    if (follow or src.endswith("/")) and os.path.islink(src_path):
        src_path = os.path.realpath(src_path)  # archived under the link's name
    if not os.path.lexists(src_path):
        raise LaminaError(f"no such file or directory: {src}")
    src_is_dir = os.path.isdir(src_path) and not os.path.islink(src_path)
    contents_only = src.rstrip("/").endswith("/.") or src in (".", "./")

    dest, dest_kind = _container_destination(rt, ref, path)
    if dest_kind == "dir":
        into, name = dest, "." if contents_only else os.path.basename(os.path.abspath(src))
    else:
        if dest_kind == "file" and src_is_dir:
            raise LaminaError(f"cannot copy a directory to a file: {path}")
        if dest_kind == "missing" and dest.endswith("/") and not src_is_dir:
            raise LaminaError(f"destination directory {path} does not exist")
        stripped = dest.rstrip("/") or "/"
        into, name = posixpath.dirname(stripped) or "/", posixpath.basename(stripped)
    try:
        chunks = tar_of(src_path, name, owner=None if archive else (0, 0))
        rt.copy_in(ref, into, cast(BinaryIO, _IterReader(chunks)))
    except OSError as e:  # reading the source on this host
        raise LaminaError(f"cannot read {e.filename or src}: {e.strerror}") from None


def _container_destination(rt: Engine, ref: str, path: str) -> tuple[str, str]:
    """Where a copy into ``path`` goes, as Docker decides it: the path, or where a
    symlink there leads (inside the container); and "dir", "file" or "missing"."""
    from lamina.errors import NotFound

    try:
        found = rt.stat_path(ref, path)
        if found.is_symlink:
            path = found.link_target
            found = rt.stat_path(ref, path)
    except NotFound:
        return path, "missing"
    return path, "dir" if found.is_dir else "file"


@_command("diff")
@click.argument("container")
def diff(container: str) -> None:
    """Inspect changes to files or directories on a container's filesystem."""
    changes: list[Any] = open_engine().diff(container)
    for change in changes:
        click.echo(f"{change.kind} {change.path}")


@_command("commit")
@click.argument("container")
@click.argument("reference", required=False)
@click.option("-c", "--change", "changes", multiple=True, help="Apply a Dockerfile instruction.")
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("-a", "--author", default=None, help='Author (e.g. "Jane <jane@example.com>").')
@click.option(
    "-p/-P", "--pause/--no-pause", default=True, help="Pause the container during commit (default)."
)
def commit(
    container: str,
    reference: str | None,
    changes: tuple[str, ...],
    message: str | None,
    author: str | None,
    pause: bool,
) -> None:
    """Create a new image from a container's changes; prints the image ID."""
    image_id = open_engine().commit(
        container, reference, changes=list(changes), message=message, author=author, pause=pause
    )
    click.echo(image_id)


@_command("update")
@click.argument("containers", nargs=-1, required=True)
@click.option("--cpus", default=None, help="Number of CPUs.")
@click.option("-c", "--cpu-shares", type=int, default=None, help="CPU shares (relative weight).")
@click.option("--cpuset-cpus", default=None, help="CPUs to run on (0-3, 0,1).")
@click.option("-m", "--memory", default=None, help="Memory limit (b, k, m, g).")
@click.option("--memory-swap", default=None, help="Memory plus swap limit; -1 for unlimited.")
@click.option("--pids-limit", type=int, default=None, help="Process limit (-1 for unlimited).")
def update(containers: tuple[str, ...], **flags: Any) -> None:
    """Update the resource limits of one or more containers."""
    from lamina.cli._runopts import InvalidOption, parse_resources

    if all(v is None for v in flags.values()):
        raise FlagError("you must provide one or more flags when using this command", "update")
    try:
        resources = parse_resources(**flags, cpu_count=os.cpu_count(), for_update=True)
    except InvalidOption as e:
        raise FlagError(str(e), "update") from None
    rt = open_engine()
    _each(containers, lambda ref: rt.update(ref, resources))


# -- the container group -------------------------------------------------------------


@click.group("container", cls=DockerGroup)
def container() -> None:
    """Manage containers (ls, run, create, start, stop, rm, prune, ...)."""


for _name, _cmd in (
    ("ls", ps),
    ("list", ps),
    ("ps", ps),
    ("run", run),
    ("create", create),
    ("start", start),
    ("stop", stop),
    ("restart", restart),
    ("kill", kill),
    ("pause", pause),
    ("unpause", unpause),
    ("rm", rm),
    ("remove", rm),
    ("rename", rename),
    ("wait", wait),
    ("prune", prune),
    ("logs", logs),
    ("exec", exec_),
    ("stats", stats),
    ("top", top),
    ("port", port),
    ("inspect", container_inspect),
    ("cp", cp),
    ("diff", diff),
    ("commit", commit),
    ("update", update),
):
    container.add_command(_cmd, _name)
