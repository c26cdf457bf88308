"""Init steps of a service: what must hold before a replica serves.

- ``init.wait_tcp`` (``with: {host, port}``): a TCP connection to ``host:port``
  succeeds. ``init.wait_http`` (``with: {url, expect_status}``): a GET of ``url``
  answers ``expect_status`` (any 2xx when not given). A host name is resolved the way
  the deployment's replicas resolve it: asked of the deployment network's aardvark-dns
  (at the network's gateway, port 53); the host then connects to the address (it
  routes to the bridge's subnet).
- ``init.run`` (``with: {command}`` run by ``/bin/sh -c``, or ``{args}`` executed as
  they are): a container of the service's config (its image, env, mounts, user) on
  the deployment's network, never on the host; waited for and removed, its output in
  the failure message. It is owned by a lease of the calling process
  (``ContainerConfig.owner``): if that process dies, the engine removes it.

Per step, as ZLayer has them: ``timeout`` (the step's whole time, default 300 s; a
``with.timeout`` is taken when the step gives none), ``retry`` (failed attempts tried
again, at most that many times; without it a wait step tries until its timeout and
``init.run`` runs once) and ``on_failure``: ``fail`` stops the replica's start
(``InitFailed``), ``warn`` reports the failure and goes on with the next step,
``continue`` goes on quietly. (ZLayer's own ``warn`` and ``continue`` end the init
there, skipping the steps after; lamina runs them.)
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lamina import _leases
from lamina.deploy._jobs import DEPLOYMENT_LABEL, INIT_LABEL, SERVICE_LABEL, one_off_config
from lamina.errors import LaminaError

if TYPE_CHECKING:
    from lamina.deploy._model import InitStep
    from lamina.engine import ContainerConfig, Engine

DEFAULT_TIMEOUT = 300.0
RETRY_DELAY = 0.5  # between a failed attempt and the next
_PROBE_TIMEOUT = 5.0  # one connection attempt at most
_OUTPUT_TAIL = 1024  # bytes of an init.run's output in its failure message
_KEYS = {
    "init.wait_tcp": {"host", "port", "timeout"},
    "init.wait_http": {"url", "expect_status", "timeout"},
    "init.run": {"command", "args", "timeout"},
}


class InitFailed(LaminaError):
    """A step whose ``on_failure`` is ``fail`` failed: the replica must not start."""

    def __init__(self, step_id: str, message: str) -> None:
        super().__init__(f"init step {step_id} failed: {message}")
        self.step_id = step_id
        self.reason = message


class _AttemptFailed(Exception):
    pass


def step_errors(step: InitStep) -> list[tuple[str, str]]:
    """What is wrong with a step's ``with`` (the spec's validation reports them under
    the step's path): (key under the step, message) pairs."""
    given = step.with_
    problems = [(f"with.{k}", "unknown key") for k in sorted(set(given) - _KEYS[step.uses])]
    if step.uses == "init.wait_tcp":
        if not isinstance(given.get("host"), str) or not given["host"]:
            problems.append(("with.host", "required for init.wait_tcp"))
        port = given.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            problems.append(("with.port", "required for init.wait_tcp: a port 1-65535"))
    elif step.uses == "init.wait_http":
        url = given.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(("with.url", "required for init.wait_http: an http(s) URL"))
        status = given.get("expect_status")
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            problems.append(("with.expect_status", "must be an HTTP status 100-599"))
    else:
        command, args = given.get("command"), given.get("args")
        if (command is None) == (args is None):
            problems.append(("with", "init.run needs one of command or args"))
        elif command is not None and not _is_command(command):
            problems.append(("with.command", "must be a string or a list of strings"))
        elif args is not None and not (_is_command(args) and isinstance(args, list)):
            problems.append(("with.args", "must be a list of strings"))
    if "timeout" in given:
        try:
            _duration(given["timeout"])
        except ValueError as e:
            problems.append(("with.timeout", str(e)))
    return problems


def _is_command(value: object) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, list) and bool(value) and all(isinstance(a, str) for a in value)


def _duration(value: Any) -> float:
    from lamina.deploy._units import parse_duration

    return parse_duration(value)


@dataclass
class _Context:
    engine: Engine
    deployment: str
    service: str
    template: ContainerConfig
    network: str | None
    _gateway: str | None = field(default=None, init=False)

    def gateway(self) -> str:
        """The deployment network's aardvark-dns address (its IPv4 gateway)."""
        if self._gateway is None:
            if self.network is None:
                raise _AttemptFailed("the service has no network to resolve names on")
            net = self.engine.networks.get(self.network)
            v4 = [s.gateway for s in net.subnets if ipaddress.ip_address(s.gateway).version == 4]
            if not v4 or not net.dns:
                raise _AttemptFailed(f"network {self.network} resolves no names")
            self._gateway = v4[0]
        return self._gateway

    def resolve(self, host: str) -> str:
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(host))
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.gateway()]
        resolver.lifetime = 2.0
        try:
            answer = resolver.resolve(host, "A")
        except dns.exception.DNSException as e:
            raise _AttemptFailed(f"cannot resolve {host} on network {self.network}: {e}") from None
        return str(answer[0])


def run_init_steps(
    engine: Engine,
    deployment: str,
    service_name: str,
    steps: Sequence[InitStep],
    template: ContainerConfig,
    network_name: str | None,
    say: Callable[[str], None] | None = None,
) -> list[str]:
    """Run ``steps`` in order for one replica of ``service_name``. ``template`` is the
    replica's container config as the controller makes it (image, env with secrets
    resolved, mounts), ``network_name`` the deployment's network. Returns the
    warnings (steps with ``on_failure: warn`` that failed); InitFailed for a step with
    ``on_failure: fail``."""
    if network_name is None and template.networks:
        network_name = template.networks[0].name  # the service's first network
    ctx = _Context(engine, deployment, service_name, template, network_name)
    warnings: list[str] = []
    for step in steps:
        try:
            _run_step(ctx, step)
        except _AttemptFailed as e:
            if step.on_failure == "fail":
                raise InitFailed(step.id, str(e)) from None
            if step.on_failure == "warn":
                line = f"init step {step.id} of {deployment}/{service_name} failed: {e}"
                warnings.append(line)
                if say is not None:
                    say(line)
    return warnings


def _run_step(ctx: _Context, step: InitStep) -> None:
    problems = step_errors(step)
    if problems:
        raise _AttemptFailed("; ".join(f"{key}: {message}" for key, message in problems))
    given = step.with_
    if step.timeout is not None:
        timeout = step.timeout
    elif "timeout" in given:
        timeout = _duration(given["timeout"])
    else:
        timeout = DEFAULT_TIMEOUT
    deadline = time.monotonic() + timeout
    attempt: Callable[[_Context, Mapping[str, Any], str, float], None] = _ATTEMPTS[step.uses]
    retries = step.retry if step.retry is not None else (0 if step.uses == "init.run" else None)
    failed = 0
    while True:
        try:
            attempt(ctx, given, step.id, deadline)
            return
        except _AttemptFailed as e:
            failed += 1
            if retries is not None and failed > retries:
                raise
            if time.monotonic() + RETRY_DELAY >= deadline:
                raise _AttemptFailed(f"{e} (gave up after {timeout:g}s)") from None
        time.sleep(RETRY_DELAY)


def _remaining(deadline: float) -> float:
    return max(0.1, min(_PROBE_TIMEOUT, deadline - time.monotonic()))


def _wait_tcp(ctx: _Context, given: Mapping[str, Any], _step: str, deadline: float) -> None:
    host, port = str(given["host"]), int(given["port"])
    address = ctx.resolve(host)
    try:
        with socket.create_connection((address, port), timeout=_remaining(deadline)):
            return
    except OSError as e:
        raise _AttemptFailed(f"cannot connect to {host}:{port} ({address}): {_why(e)}") from None


def _wait_http(ctx: _Context, given: Mapping[str, Any], _step: str, deadline: float) -> None:
    import http.client

    url = str(given["url"])
    parts = urlsplit(url)
    host = parts.hostname or ""
    address = ctx.resolve(host)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = _pinned(parts.scheme, host, address, port, _remaining(deadline))
    try:
        conn.request("GET", path, headers={"Host": parts.netloc, "User-Agent": "lamina-init"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        raise _AttemptFailed(f"GET {url} ({address}): {_why(e)}") from None
    finally:
        conn.close()
    expected = given.get("expect_status")
    good = status == expected if expected is not None else 200 <= status < 300
    if not good:
        wanted = expected if expected is not None else "2xx"
        raise _AttemptFailed(f"GET {url} answered {status}, expected {wanted}")


def _pinned(scheme: str, host: str, address: str, port: int, timeout: float) -> Any:
    """An HTTP(S) connection to ``address`` for ``host`` (TLS checked against ``host``)."""
    import http.client
    import ssl

    if scheme == "https":
        context = ssl.create_default_context()

        class _Https(http.client.HTTPSConnection):
            def connect(self) -> None:
                raw = socket.create_connection((address, port), timeout=timeout)
                self.sock = context.wrap_socket(raw, server_hostname=host)

        return _Https(host, port, timeout=timeout, context=context)

    class _Http(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.create_connection((address, port), timeout=timeout)

    return _Http(host, port, timeout=timeout)


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _run(ctx: _Context, given: Mapping[str, Any], step_id: str, deadline: float) -> None:
    from lamina.engine import WaitTimeout

    command = given.get("command")
    argv = (
        ["/bin/sh", "-c", command] if isinstance(command, str) else list(command or given["args"])
    )
    engine = ctx.engine
    with _leases.take(engine.root, "deploy-init") as lease:
        name = f"{ctx.deployment}-{ctx.service}-init-{os.urandom(4).hex()}"
        labels = {DEPLOYMENT_LABEL: ctx.deployment, SERVICE_LABEL: ctx.service, INIT_LABEL: step_id}
        config = one_off_config(ctx.template, name=name, labels=labels,
                                network_name=ctx.network, command=argv, entrypoint=[])  # fmt: skip
        config.owner = lease.id  # removed by the engine if this process dies
        container = engine.create(config)
        try:
            try:
                engine.start(container.id)
                outcome = engine.wait(container.id, timeout=max(0.1, deadline - time.monotonic()))
            except WaitTimeout:
                raise _AttemptFailed(
                    f"{_shown(argv)} did not end in time{_output(engine, name)}"
                ) from None
            except LaminaError as e:
                raise _AttemptFailed(f"{_shown(argv)} could not start: {e}") from None
            if outcome.exit_code != 0:
                raise _AttemptFailed(
                    f"{_shown(argv)} exited with code {outcome.exit_code}{_output(engine, name)}"
                )
        finally:
            with contextlib.suppress(LaminaError):
                engine.remove(container.id, force=True, volumes=True)


def _shown(argv: Sequence[str]) -> str:
    return " ".join(argv[2:] if argv[:2] == ["/bin/sh", "-c"] else argv)


def _output(engine: Engine, ref: str) -> str:
    """``: <the output's last lines>``, on one line, or nothing."""
    try:
        data = b"".join(entry.data for entry in engine.logs(ref))
    except LaminaError:
        return ""
    text = data[-_OUTPUT_TAIL:].decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f": {' | '.join(lines)}" if lines else ""


_ATTEMPTS: dict[str, Callable[[_Context, Mapping[str, Any], str, float], None]] = {
    "init.wait_tcp": _wait_tcp,
    "init.wait_http": _wait_http,
    "init.run": _run,
}
