"""Deployment commands: ``deploy``, ``down``, ``validate``, ``deployment ls|inspect|
status``, ``service ls|logs|scale|restart``, ``job run|ls|logs``, ``secret create|ls|rm``.

The file is read here (``lamina.deploy.load_spec`` with this process's environment,
``.env``, ``env_file``, bind paths made absolute); what only the client has is
resolved before anything is sent: a Compose ``build:`` is built by the daemon's
builder and the service then runs the built image; a Compose file secret goes to the
secret store as ``{deployment}_{name}``. The parsed model goes to the daemon as JSON.

Every command but ``validate`` talks to a daemon (``lamina.client._deploy``):
``--host`` or the root's own, started in the background when none serves the root.
Nothing is decided here: the daemon's ``Deployments`` does it all.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lamina.cli._click import DockerGroup, FlagError, command
from lamina.cli._output import FORMAT_OPTION, INSPECT_FORMAT_OPTION

if TYPE_CHECKING:
    from lamina.client._deploy import DeployClient


# -- plumbing ------------------------------------------------------------------------------


def _settings() -> Any:
    return click.get_current_context().find_root().obj


def client() -> DeployClient:
    """The daemon's deployments: ``--host``'s, or the root's own (started if needed)."""
    from lamina.client._deploy import DeployClient, root_daemon

    settings = _settings()
    if settings.remote is not None:
        from lamina.cli._remote import connect_daemon

        return DeployClient.of(connect_daemon(settings.remote))
    from lamina.cli._daemon import SYSTEM_ROOT
    from lamina.daemon import default_host

    root = Path(settings.root).absolute()
    url = default_host(root, system_root=root == Path(SYSTEM_ROOT))
    return DeployClient(root_daemon(root, url, _daemon_args(settings)))


def _daemon_args(settings: Any) -> list[str]:
    """The global flags a daemon started for this command takes from it."""
    args = ["--runtime", settings.oci_runtime]
    for registry in settings.insecure_registries:
        args += ["--insecure-registry", registry]
    if settings.registries_config:
        args += ["--registries-config", settings.registries_config]
    return args


def _target(value: str, command_path: str) -> tuple[str, str]:
    """``DEPLOYMENT/SERVICE`` split."""
    name, sep, service = value.partition("/")
    if not sep or not name or not service or "/" in service:
        raise FlagError(f"invalid {value!r}: expected DEPLOYMENT/SERVICE", command_path)
    return name, service


class InvalidFile(Exception):
    """A spec file with errors: each one printed on its own line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load(path: str, profiles: Sequence[str] = ()) -> Any:
    """The file's model (``DeploymentSpec``) read with this process's environment;
    ``InvalidFile`` naming every error (with the file) if it has any."""
    from lamina.deploy._spec import InvalidSpec, load_spec

    file = Path(path)
    if not file.is_file():
        raise InvalidFile([f"{path}: no such file"])
    try:
        return load_spec(file, dict(os.environ), profiles=tuple(profiles))
    except InvalidSpec as e:
        lines = [line for line in e.problems if line.strip()] or ["invalid"]
        # A YAML error names the file already (with its line): not twice.
        raise InvalidFile([line if line.startswith((path, file.name)) else f"{path}: {line}"
                           for line in lines]) from None  # fmt: skip


def _fail(e: InvalidFile) -> None:
    for line in e.lines:
        print(f"lamina: error: {line}", file=sys.stderr)
    sys.exit(1)


# -- validate, deploy, down ----------------------------------------------------------------


@command("validate")
@click.argument("file")
@click.option("--profile", "profiles", multiple=True, metavar="P", help="A Compose profile.")
def validate(file: str, profiles: tuple[str, ...]) -> None:
    """Check a deployment file (ZLayer v1 or Compose): every error with its path."""
    try:
        spec = load(file, profiles)
    except InvalidFile as e:
        _fail(e)
        return
    n = len(spec.services)
    click.echo(f"{file}: valid ({n} service{'s' if n != 1 else ''})")


@command("deploy")
@click.argument("file")
@click.option("--wait", is_flag=True, help="Wait until every replica is ready.")
@click.option("--dry-run", is_flag=True, help="Print the plan only: what would be done.")
@click.option("--profile", "profiles", multiple=True, metavar="P",
              help="Activate a Compose profile (repeatable).")  # fmt: skip
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="With --wait: give up after this long (the deployment goes on).")  # fmt: skip
def deploy(file: str, wait: bool, dry_run: bool, profiles: tuple[str, ...],
           timeout: float | None) -> None:  # fmt: skip
    """Deploy a file (ZLayer v1 or Compose) and let the daemon keep it so."""
    if timeout is not None and timeout < 0:
        raise FlagError("--timeout must be >= 0", "deploy")
    try:
        spec = load(file, profiles)
    except InvalidFile as e:
        _fail(e)
        return
    api = client()
    if dry_run:
        _print_plan(api.plan(_model_json(spec)))
        return
    spec = _built(api, spec)
    _send_file_secrets(api, spec, Path(file))
    body = _model_json(spec)
    if not wait:
        _print_plan(api.apply(body))
        return
    last: list[str] = []
    for event in api.apply_wait(body, timeout):
        if "plan" in event:
            _print_plan(event["plan"])
        elif "status" in event:
            lines = _progress_lines(event["status"])
            for line in lines:
                if line not in last:
                    click.echo(line)
            last = lines
        elif "result" in event:
            click.echo(f"deployment {spec.deployment}: ready")


def _model_json(spec: Any) -> dict[str, Any]:
    data: dict[str, Any] = spec.model_dump(mode="json", by_alias=True)
    return data


def _print_plan(plan: Mapping[str, Any]) -> None:
    """The daemon's plan, one action a line (``create service web: 3 replicas``)."""
    for line in plan["lines"]:
        click.echo(line)


def _built(api: DeployClient, spec: Any) -> Any:
    """Compose services with ``build:`` built by the daemon's builder, tagged with the
    service's image name (Compose's ``{project}-{service}`` unless it names one); the
    service then runs that image, never pulled."""
    todo = {name: svc for name, svc in spec.services.items() if svc.build is not None}
    if not todo:
        return spec
    from lamina.builder import BuildOptions
    from lamina.cli._build import _progress, _registry_config

    built = {}
    for name, svc in todo.items():
        context = Path(svc.build.context)  # absolute: the parser made it so
        opts = BuildOptions(context=context, tags=[svc.image.name],
                            build_args=dict(svc.build.args), target=svc.build.target,
                            registry_config=_registry_config)  # fmt: skip
        if svc.build.dockerfile:
            opts.dockerfile = context / svc.build.dockerfile  # an absolute one stays itself
        reporter = _progress("auto")
        try:
            api.engine.build(opts, reporter)
        finally:
            reporter.close()
        image = svc.image.model_copy(update={"pull_policy": "never"})
        built[name] = svc.model_copy(update={"image": image, "build": None})
    return spec.model_copy(update={"services": {**spec.services, **built}})


def _send_file_secrets(api: DeployClient, spec: Any, file: Path) -> None:
    """A Compose file's top-level ``secrets: {name: {file: PATH}}`` into the daemon's
    secret store as ``{deployment}_{name}`` (replaced: the file may have changed)."""
    from lamina.deploy._model import file_secret_name
    from lamina.errors import NotFound

    for name, secret in spec.secrets.items():
        source = Path(secret.file)
        if not source.is_absolute():
            source = file.absolute().parent / source
        try:
            data = source.read_bytes()
        except OSError as e:
            raise click.ClickException(f"secret {name}: cannot read {source}: {e.strerror}")
        stored = file_secret_name(spec.deployment, name)
        try:
            api.remove_secret(stored)
        except NotFound:
            pass
        api.create_secret(stored, data)


@command("down")
@click.argument("target", metavar="NAME|FILE")
@click.option("-v", "--volumes", is_flag=True, help="Remove the deployment's named volumes too.")
def down(target: str, volumes: bool) -> None:
    """Remove a deployment: its replicas, jobs and network (volumes with -v)."""
    name = target
    if os.sep in target or Path(target).is_file():
        try:
            name = load(target).deployment
        except InvalidFile as e:
            _fail(e)
            return
    for removed in client().down(name, volumes=volumes):  # what went, one a line
        click.echo(removed)


# -- deployment ls|inspect|status ----------------------------------------------------------


@click.group("deployment", cls=DockerGroup)
def deployment() -> None:
    """Manage deployments (ls, inspect, status)."""


def _service_rows(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    services = status.get("services") or []
    if isinstance(services, dict):
        services = [{"name": k, **v} for k, v in services.items()]
    return list(services)


def _ready_text(svc: Mapping[str, Any]) -> str:
    return f"{svc.get('ready', 0)}/{svc.get('desired', 0)}"


_LS_HEADERS = {"Name": "NAME", "Services": "SERVICES", "Ready": "READY", "Status": "STATUS"}


@deployment.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display names.")
@FORMAT_OPTION
def deployment_ls(quiet: bool, fmt: str) -> None:
    """List deployments."""
    from lamina.cli._output import Row, print_listing

    statuses = client().list_deployments()
    if quiet:
        for st in statuses:
            click.echo(st["name"])
        return
    rows = []
    for st in statuses:
        services = _service_rows(st)
        ready = sum(int(s.get("ready", 0)) for s in services)
        desired = sum(int(s.get("desired", 0)) for s in services)
        rows.append(Row("DeploymentRow", {
            "Name": st["name"], "Services": str(len(services)), "Ready": f"{ready}/{desired}",
            "Status": str(st.get("state") or st.get("status") or ""),
        }))  # fmt: skip
    print_listing(fmt, rows, ("Name", "Services", "Ready", "Status"), _LS_HEADERS)


deployment.add_command(deployment_ls, "list")


@deployment.command("inspect")
@click.argument("names", nargs=-1, required=True)
@INSPECT_FORMAT_OPTION
def deployment_inspect(names: tuple[str, ...], fmt: str | None) -> None:
    """Show one or more deployments as JSON: spec (secret values never) and state."""
    from lamina.cli._output import print_inspect
    from lamina.errors import NotFound

    api = client()
    found, missing = [], []
    for name in names:
        try:
            found.append(api.inspect(name))
        except NotFound as e:
            missing.append(str(e))
    print_inspect(fmt, found, missing)


_STATUS_HEADERS = {"Service": "SERVICE", "Ready": "READY", "Running": "RUNNING",
                   "Health": "HEALTH", "Rollout": "ROLLOUT", "Error": "ERROR"}  # fmt: skip


def _status_row(svc: Mapping[str, Any]) -> Any:
    from lamina.cli._output import Row

    return Row("ServiceRow", {
        "Service": svc.get("name", ""), "Ready": _ready_text(svc),
        "Running": str(svc.get("running", "")), "Health": str(svc.get("health") or "-"),
        "Rollout": str(svc.get("rollout") or "-"), "Error": str(svc.get("last_error") or ""),
    })  # fmt: skip


@deployment.command("status")
@click.argument("name")
@click.option("--format", "fmt", default="table", show_default=True,
              metavar="table|json|TEMPLATE",
              help="table, json (the status as one object) or a Go template.")  # fmt: skip
def deployment_status(name: str, fmt: str) -> None:
    """A deployment's services: ready and desired replicas, health, rollout."""
    status = client().status(name)
    if fmt == "json":
        from lamina.cli._output import print_json

        print_json(status)
        return
    if fmt in ("", "table") or fmt.startswith("table "):
        from lamina.cli._output import print_listing

        services = _service_rows(status)
        if fmt in ("", "table"):
            message = f" ({status['message']})" if status.get("message") else ""
            click.echo(f"deployment {status.get('name', name)}: {status.get('state')}{message}")
        columns: tuple[str, ...] = ("Service", "Ready", "Health", "Rollout")
        if any(s.get("last_error") for s in services):
            columns += ("Error",)
        print_listing(fmt, [_status_row(s) for s in services], columns, _STATUS_HEADERS)
        return
    from lamina.cli._output import print_object

    print_object(fmt, status, lambda: None, name="status")


def _progress_lines(status: Mapping[str, Any]) -> list[str]:
    """A status as ``deploy --wait`` shows its changes: one line per service."""
    out = []
    for svc in _service_rows(status):
        line = f"{svc.get('name', '')}: {_ready_text(svc)} ready"
        if svc.get("rollout") and svc.get("rollout") != "complete":
            line += f", rollout {svc['rollout']}"
        if svc.get("last_error"):
            line += f" ({svc['last_error']})"
        out.append(line)
    return out


# -- service ls|logs|scale|restart ---------------------------------------------------------


@click.group("service", cls=DockerGroup)
def service() -> None:
    """Manage a deployment's services (ls, logs, scale, restart)."""


@service.command("ls")
@click.argument("name", metavar="DEPLOYMENT")
@FORMAT_OPTION
def service_ls(name: str, fmt: str) -> None:
    """List a deployment's services with their replicas and state."""
    from lamina.cli._output import print_listing

    rows = [_status_row(s) for s in client().services(name)]
    print_listing(fmt, rows, ("Service", "Ready", "Running", "Health", "Rollout"),
                  _STATUS_HEADERS)  # fmt: skip


service.add_command(service_ls, "list")


@service.command("scale")
@click.argument("target", metavar="DEPLOYMENT/SERVICE")
@click.argument("replicas", type=click.IntRange(min=0))
def service_scale(target: str, replicas: int) -> None:
    """Set a service's replicas (the daemon converges to it)."""
    name, svc = _target(target, "service scale")
    client().scale(name, svc, replicas)
    click.echo(f"{name}/{svc} scaled to {replicas}")


@service.command("restart")
@click.argument("target", metavar="DEPLOYMENT/SERVICE")
def service_restart(target: str) -> None:
    """Restart a service's replicas one by one (a rolling restart)."""
    name, svc = _target(target, "service restart")
    client().restart(name, svc)
    click.echo(f"{name}/{svc} restarting")


@service.command("logs")
@click.argument("target", metavar="DEPLOYMENT/SERVICE")
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option("-n", "--tail", default="all", show_default=True,
              help="Lines to show from the end of each replica's logs.")  # fmt: skip
@click.option("--no-prefix", is_flag=True, help="Do not print the replica's name before a line.")
def service_logs(target: str, follow: bool, tail: str, no_prefix: bool) -> None:
    """The logs of a service's replicas, merged, each line after its replica's name;
    with -f, replicas that replace others are followed as they appear."""
    from lamina.errors import NotFound

    name, svc = _target(target, "service logs")
    api = client()

    def replicas() -> list[str] | None:
        try:
            return sorted(r["name"] for r in api.replicas(name, svc))
        except NotFound:  # the deployment went (down): nothing more to follow
            return None

    first = sorted(r["name"] for r in api.replicas(name, svc))
    print_merged_logs(api, first, follow, _tail(tail, "service logs"), not no_prefix,
                      refresh=replicas if follow else None)  # fmt: skip


def _tail(tail: str, command_path: str) -> int | None:
    if tail == "all":
        return None
    try:
        n = int(tail)
    except ValueError:
        raise FlagError(f"invalid --tail {tail!r}: expected a number or all", command_path)
    return None if n < 0 else n


_REFRESH = 1.0  # seconds between looks for new replicas while following


def print_merged_logs(api: DeployClient, containers: Sequence[str], follow: bool,
                      tail: int | None, prefix: bool,
                      refresh: Callable[[], list[str] | None] | None = None) -> None:  # fmt: skip
    """The containers' logs with ``name | `` prefixes (as Compose prints them): in
    time order, then (``follow``) as they come. ``refresh`` (when following) names the
    containers to follow now: a name not followed any more (its container was
    replaced) is followed again from the last line seen of it, a new one from its
    start; it returns None once there is nothing left to follow."""
    width = max((len(c) for c in containers), default=0)
    out = sys.stdout.buffer
    lock = threading.Lock()
    last_seen: dict[str, float] = {}

    def emit(container: str, entry: Any) -> None:
        head = f"{container.ljust(width)} | ".encode() if prefix else b""
        data = entry.data if entry.data.endswith(b"\n") else entry.data + b"\n"
        with lock:
            out.write(b"".join(head + line for line in data.splitlines(keepends=True)))
            last_seen[container] = entry.timestamp
            if follow:
                out.flush()

    if not follow:
        entries = []
        for c in containers:
            entries += [(e.timestamp, c, e) for e in _logs(api, c, False, tail)]
        for _ts, c, e in sorted(entries, key=lambda item: item[0]):
            emit(c, e)
        out.flush()
        return

    def relay(container: str, tail: int | None, since: float | None) -> None:
        for entry in _logs(api, container, True, tail, since):
            emit(container, entry)

    followers: dict[str, threading.Thread] = {}

    def follow_all(names: Sequence[str], first: bool) -> None:
        nonlocal width
        for c in names:
            if c in followers and followers[c].is_alive():
                continue
            with lock:
                width = max(width, len(c))
                since = last_seen[c] + 1e-6 if c in last_seen else None
            t = threading.Thread(target=relay, args=(c, tail if first else None, since),
                                 daemon=True)  # fmt: skip
            followers[c] = t
            t.start()

    follow_all(containers, True)
    while True:
        if refresh is None:
            if not any(t.is_alive() for t in followers.values()):
                break
            time.sleep(0.2)
            continue
        time.sleep(_REFRESH)
        names = refresh()
        if names is None:
            break
        follow_all(names, False)
    for t in followers.values():
        t.join(5)
    out.flush()


def _logs(api: DeployClient, container: str, follow: bool, tail: int | None,
          since: float | None = None) -> Iterator[Any]:  # fmt: skip
    from lamina.errors import NotFound

    try:
        yield from api.engine.logs(container, follow=follow, tail=tail, since=since)
    except NotFound:  # a replica replaced meanwhile: its logs went with it
        return


# -- job run|ls|logs -----------------------------------------------------------------------


@click.group("job", cls=DockerGroup)
def job() -> None:
    """Run a deployment's job services and see their runs (run, ls, logs)."""


def _run_row(run: Mapping[str, Any]) -> Any:
    from lamina.cli._output import Row, human_age

    exit_code = run.get("exit_code")
    return Row("JobRow", {
        "ID": str(run.get("id", "")), "Service": str(run.get("service", "")),
        "Container": str(run.get("container", "")), "Status": str(run.get("status", "")),
        "ExitCode": "" if exit_code is None else str(exit_code),
        "Started": human_age(run.get("started")) if run.get("started") else "",
    })  # fmt: skip


@job.command("run")
@click.argument("target", metavar="DEPLOYMENT/SERVICE")
@click.option("--wait", is_flag=True, help="Wait for the run's end; exit with its exit code.")
def job_run(target: str, wait: bool) -> None:
    """Start a run of a job service; prints its container's name."""
    name, svc = _target(target, "job run")
    api = client()
    run = api.run_job(name, svc)
    container = str(run.get("container", ""))
    click.echo(container)
    if wait and container:
        outcome = api.engine.wait(container)
        sys.exit(outcome.exit_code or 0)


_JOB_HEADERS = {"ID": "RUN", "Service": "SERVICE", "Container": "CONTAINER",
                "Status": "STATUS", "ExitCode": "EXIT CODE", "Started": "STARTED"}  # fmt: skip


@job.command("ls")
@click.argument("target", metavar="DEPLOYMENT/SERVICE")
@FORMAT_OPTION
def job_ls(target: str, fmt: str) -> None:
    """A job's runs, newest last."""
    from lamina.cli._output import print_listing

    name, svc = _target(target, "job ls")
    rows = [_run_row(r) for r in client().jobs(name, svc)]
    print_listing(fmt, rows, ("ID", "Container", "Status", "ExitCode", "Started"), _JOB_HEADERS)


job.add_command(job_ls, "list")


@job.command("logs")
@click.argument("target", metavar="DEPLOYMENT/SERVICE")
@click.option("-f", "--follow", is_flag=True, help="Follow log output.")
@click.option("--all", "all_runs", is_flag=True, help="Every run's logs, not only the last's.")
def job_logs(target: str, follow: bool, all_runs: bool) -> None:
    """The logs of a job's last run (of every run with --all)."""
    name, svc = _target(target, "job logs")
    api = client()
    runs = [str(r["container"]) for r in api.jobs(name, svc) if r.get("container")]
    if not runs:
        raise click.ClickException(f"job {name}/{svc} has not run")
    print_merged_logs(api, runs if all_runs else runs[-1:], follow, None, all_runs)


# -- secret create|ls|rm -------------------------------------------------------------------


@click.group("secret", cls=DockerGroup)
def secret() -> None:
    """Manage secrets (create, ls, rm): stored encrypted, never shown."""


_SECRET_LIMIT = 64 << 10


@secret.command("create")
@click.argument("name")
@click.argument("file", metavar="FILE|-")
def secret_create(name: str, file: str) -> None:
    """Create a secret from a file or stdin (-); prints its name."""
    if file == "-":
        data = sys.stdin.buffer.read(_SECRET_LIMIT + 1)
    else:
        try:
            with open(file, "rb") as f:
                data = f.read(_SECRET_LIMIT + 1)
        except OSError as e:
            raise click.ClickException(f"cannot read {file}: {e.strerror}") from None
    client().create_secret(name, data)
    click.echo(name)


_SECRET_HEADERS = {"Name": "NAME", "Size": "SIZE", "Created": "CREATED"}


@secret.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display names.")
@FORMAT_OPTION
def secret_ls(quiet: bool, fmt: str) -> None:
    """List secrets (names, sizes, ages: never values)."""
    from lamina.cli._output import Row, human_age, print_listing

    infos = client().secrets()
    if quiet:
        for info in infos:
            click.echo(info["name"])
        return
    rows = [Row("SecretRow", {"Name": i["name"], "Size": str(i.get("size", "")),
                              "Created": human_age(i.get("created"))}) for i in infos]  # fmt: skip
    print_listing(fmt, rows, ("Name", "Size", "Created"), _SECRET_HEADERS)


secret.add_command(secret_ls, "list")


@secret.command("rm")
@click.argument("names", nargs=-1, required=True)
def secret_rm(names: tuple[str, ...]) -> None:
    """Remove one or more secrets."""
    from lamina.errors import LaminaError

    api = client()
    failed = False
    for name in names:
        try:
            api.remove_secret(name)
        except LaminaError as e:
            print(f"lamina: error: {' '.join(str(e).split())}", file=sys.stderr)
            failed = True
            continue
        click.echo(name)
    if failed:
        sys.exit(1)


secret.add_command(secret_rm, "remove")
