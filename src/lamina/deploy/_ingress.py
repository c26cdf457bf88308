"""Deployments' public endpoints through the root's ingress (``lamina.ingress``).

``desired_routes`` turns every ``expose: public`` endpoint of the root's deployments
into an ingress route and a backend whose servers are the service's replicas on the
deployment's network, ready exactly when the controller counts them ready (running,
healthy when checked, init done, not leaving): the readiness that puts a replica in
its service's DNS name. ``IngressSync`` (one per controller) applies that after each
converge pass and at once when a replica joins or leaves its service's name, so that
HAProxy follows within a pass; it starts the root's HAProxy only once some deployment
has a public endpoint, closes it when none has, and never on the controller's close:
HAProxy keeps serving and the next controller adopts it. With an ACME directory, the
https endpoints' hosts get certificates in a thread of their own (after applies, and
a renewal check daily).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from lamina.deploy import _state
from lamina.errors import LaminaError

if TYPE_CHECKING:
    from lamina.deploy._model import DeploymentSpec, EndpointSpec, ServiceSpec
    from lamina.deploy._state import Desired
    from lamina.deploy._status import DeploymentStatus
    from lamina.engine import Engine
    from lamina.ingress import Backend, Ingress, Route

ACME_EVERY = 24 * 3600.0  # seconds between renewal checks
ACME_RETRY_FIRST, ACME_RETRY_MAX = 30.0, 3600.0  # after a failure: doubling, capped


@dataclass(frozen=True)
class IngressOptions:
    """The daemon's ingress flags."""

    address: str = "0.0.0.0"  # --ingress-address: where public endpoints listen
    acme_directory: str | None = None  # --acme-directory URL: certificates for https hosts
    acme_email: str = ""  # --acme-email
    acme_ca_bundle: str | None = None  # --acme-ca-bundle: CAs of the directory's own TLS


@dataclass(frozen=True)
class PublicView:
    """A deployment with public endpoints, as the controller sees it now."""

    name: str
    spec: DeploymentSpec
    status: DeploymentStatus
    created: float = 0.0  # the older of two clashing deployments keeps its routes


def backend_key(deployment: str, service: str, endpoint: str) -> str:
    return f"{deployment}-{service}-{endpoint}"


def has_public(spec: dict[str, Any]) -> bool:
    """Whether a desired state's spec (as dumped) has a public endpoint (no parse)."""
    return any(
        ep.get("expose") == "public"
        for service in (spec.get("services") or {}).values()
        for ep in service.get("endpoints") or ()
    )


def deployment_routes(view: PublicView) -> tuple[list[Route], list[Backend]]:
    """The routes and backends of one deployment's public endpoints."""
    from lamina.ingress import Backend, Route, Server

    routes: list[Route] = []
    backends: list[Backend] = []
    for svc, service in view.spec.services.items():
        if service.rtype != "service":
            continue
        status = view.status.service(svc)
        replicas = sorted(status.replicas, key=lambda r: r.n) if status is not None else []
        for ep in service.endpoints:
            if ep.expose != "public":
                continue
            key = backend_key(view.name, svc, ep.name)
            port = ep.container_port()
            servers = tuple(
                Server(r.name, r.address, port, ready=r.ready) for r in replicas if r.address
            )
            backends.append(Backend(key, servers, health_path=health_path(service, ep)))
            routes.append(Route(ep.port, ep.protocol, key, ep.host, ep.path))
    return routes, backends


def health_path(service: ServiceSpec, ep: EndpointSpec) -> str | None:
    """HAProxy's own check of an endpoint's servers: a GET of the service's http check
    path when that check asks the endpoint's port (else a TCP connect; also for a URL
    the ingress cannot put in its config, one with a query say)."""
    health = service.health
    if health is None or health.check.type != "http" or ep.protocol in ("tcp", "udp"):
        return None
    if health.check.expect_status >= 400:  # HAProxy counts only 2xx and 3xx as up
        return None
    url = urlsplit(health.check.url)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        return None
    if url.scheme != "http" or port != ep.container_port():
        return None
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    from lamina.ingress._model import _PATH

    return path if _PATH.match(path) else None


def public_states(root: Path) -> Iterator[Desired]:
    """The desired states of the root's deployments that have public endpoints (not
    being removed; one that cannot be read is skipped: the next pass reads it again)."""
    for name in _state.names(root):
        try:
            desired = _state.load(root, name)
        except LaminaError:
            continue
        if not desired.removing and has_public(desired.spec):
            yield desired


def clash(root: Path, spec: DeploymentSpec) -> str | None:
    """Why the ingress could not serve ``spec``'s public endpoints beside those of the
    root's other deployments (a port used for another protocol, a host and path taken),
    or None. Asked before a deploy is accepted, so that the clash is the deploy's error
    and not a line in the daemon's log."""
    from lamina.deploy._model import DeploymentSpec
    from lamina.deploy._status import DeploymentStatus

    if not has_public(spec.model_dump(mode="json")):
        return None
    def view(name: str, spec: DeploymentSpec, created: float) -> PublicView:
        return PublicView(name, spec, DeploymentStatus(name, "running"), created)  # no replicas

    views = [view(d.name, DeploymentSpec.model_validate(d.spec), d.created)
             for d in public_states(root) if d.name != spec.deployment]  # fmt: skip
    # the one asking is the newest: the others keep what they have
    mine = view(spec.deployment, spec, float("inf"))
    refused: dict[str, str] = {}
    desired_routes([*views, mine], refused.__setitem__)
    return refused.get(spec.deployment)


def desired_routes(
    views: Iterable[PublicView],
    refused: Callable[[str, str], None] | None = None,
) -> tuple[list[Route], list[Backend]]:
    """Every public endpoint of ``views`` as ingress routes and backends. A deployment
    whose routes the ingress cannot take with those of older ones (a port another
    deployment uses for another protocol, the same host and path twice) is left out
    whole and named to ``refused(deployment, why)``: it never breaks the others'."""
    from lamina.ingress import InvalidIngress
    from lamina.ingress._model import validate

    routes: list[Route] = []
    backends: list[Backend] = []
    for view in sorted(views, key=lambda v: (v.created, v.name)):
        mine, theirs = deployment_routes(view)
        try:
            validate([*routes, *mine], [*backends, *theirs])
        except InvalidIngress as e:
            if refused is not None:
                refused(view.name, str(e))
            continue
        routes += mine
        backends += theirs
    return routes, backends


class IngressSync:
    """The root's ingress kept in line with its deployments (one per controller)."""

    def __init__(
        self, root: Path, options: IngressOptions | None, say: Callable[[str], None]
    ) -> None:
        self.root = Path(root)
        self.options = options or IngressOptions()
        self.say = say
        self._ingress: Ingress | None = None
        self._specs: dict[str, tuple[float, DeploymentSpec]] = {}  # name -> (updated, spec)
        self._said = ""
        self._lock = threading.Lock()
        self._acme: _AcmeThread | None = None

    @property
    def applied_file(self) -> Path:
        return self.root / "ingress" / "applied.json"

    def sync(
        self, engine: Engine, status_of: Callable[[Engine, Desired], DeploymentStatus]
    ) -> None:
        """Apply the routes of the deployments as they are now (nothing when HAProxy
        already serves exactly that)."""
        with self._lock:
            try:
                views = self._views(engine, status_of)
            except LaminaError as e:  # the next pass tries again
                self._say_once(f"ingress: {e}")
                return
            routes, backends = desired_routes(views, self._refused)
            self._apply(routes, backends)

    def close(self) -> None:
        """Stop the ACME thread; HAProxy keeps serving (the next controller adopts it)."""
        if self._acme is not None:
            self._acme.close()
            self._acme = None

    def _views(
        self, engine: Engine, status_of: Callable[[Engine, Desired], DeploymentStatus]
    ) -> list[PublicView]:
        from lamina.deploy._model import DeploymentSpec

        out: list[PublicView] = []
        for desired in public_states(self.root):
            name = desired.name
            cached = self._specs.get(name)
            if cached is None or cached[0] != desired.updated:
                cached = (desired.updated, DeploymentSpec.model_validate(desired.spec))
                self._specs[name] = cached
            out.append(PublicView(name, cached[1], status_of(engine, desired), desired.created))
        self._specs = {v.name: self._specs[v.name] for v in out}
        return out

    def _apply(self, routes: list[Route], backends: list[Backend]) -> None:
        from lamina.ingress import Ingress, IngressError

        if self._ingress is None:
            if not routes and not self.applied_file.exists():
                return  # no public endpoint ever: no HAProxy
            self._ingress = Ingress(self.root, self.options.address)
        ingress = self._ingress
        try:
            if not routes:
                if self.applied_file.exists() or ingress.running() is not None:
                    ingress.close()
                    self.say("ingress: no public endpoint left, HAProxy stopped")
                return
            if self._applied(routes, backends) and ingress.running() is not None:
                return
            outcome = ingress.apply(routes, backends)
        except (IngressError, OSError) as e:
            self._say_once(f"ingress: {e}")
            return
        self._said = ""
        if outcome == "started":
            self.say(f"ingress: HAProxy serves public endpoints on {self.options.address}")
        if self.options.acme_directory and any(r.protocol == "https" for r in routes):
            self._acme_thread(ingress).poke()

    def _applied(self, routes: list[Route], backends: list[Backend]) -> bool:
        """Whether the ingress's applied state is ``routes`` and ``backends`` already
        (read from its file: an ACME refresh or another writer may have changed it)."""
        try:
            applied = json.loads(self.applied_file.read_text())
        except (OSError, ValueError):
            return False
        wanted = {
            "address": self.options.address,
            "routes": [dataclasses.asdict(r) for r in routes],
            "backends": [dataclasses.asdict(b) for b in backends],
        }
        wanted = json.loads(json.dumps(wanted))  # tuples as the file has them: lists
        return isinstance(applied, dict) and all(applied.get(k) == v for k, v in wanted.items())

    def _refused(self, deployment: str, why: str) -> None:
        self._say_once(f"ingress: public endpoints of deployment {deployment} left out: {why}")

    def _say_once(self, line: str) -> None:
        if line != self._said:  # said once, not every pass
            self._said = line
            self.say(line)

    def _acme_thread(self, ingress: Ingress) -> _AcmeThread:
        if self._acme is None:
            self._acme = _AcmeThread(ingress, self.options, self.say)
        return self._acme


class _AcmeThread:
    """Certificates for the https routes' hosts from the ACME directory: after an
    apply asks (``poke``) and once a day (renewals)."""

    def __init__(self, ingress: Ingress, options: IngressOptions, say: Callable[[str], None]):
        self.ingress = ingress
        self.options = options
        self.say = say
        self._due = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingress-acme", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._due.set()

    def close(self) -> None:
        self._closing.set()
        self._due.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        retry = 0.0  # after a failure: the next try sooner than the daily one
        while not self._closing.is_set():
            self._due.wait(retry or ACME_EVERY)
            self._due.clear()
            if self._closing.is_set():
                return
            try:
                ok = self._ensure()
            except Exception as e:  # the thread must go on to the next renewal
                self.say(f"ingress: ACME: {e}")
                ok = False
            retry = 0.0 if ok else min(max(retry * 2, ACME_RETRY_FIRST), ACME_RETRY_MAX)

    def _ensure(self) -> bool:
        """Certificates for the https routes' hosts; False when one could not be had."""
        from lamina.ingress import Acme

        try:
            applied = json.loads(self.ingress.paths.applied.read_text())
        except (OSError, ValueError):
            return True  # nothing applied: nothing to certify
        hosts = [r["host"] for r in applied.get("routes", [])
                 if r.get("protocol") == "https" and r.get("host")]  # fmt: skip
        if not hosts:
            return True
        assert self.options.acme_directory is not None
        acme = Acme(self.ingress, self.options.acme_directory, self.options.acme_email,
                    self.options.acme_ca_bundle)  # fmt: skip
        issued, failed = acme.ensure(hosts)
        for info in issued:
            self.say(f"ingress: certificate for {info.host} from {acme.directory}")
        for host, why in failed.items():
            self.say(f"ingress: no certificate for {host}: {why}")
        return not failed
