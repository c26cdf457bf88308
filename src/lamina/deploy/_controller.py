"""The controller: makes deployments so and keeps them so.

``Deployments(root)`` is what the daemon runs. ``apply`` persists the desired state
first (``_state``), then wakes the converge thread; each pass of that thread reads
the desired state and the actual containers (by their labels) of every deployment
and takes the next steps (``_rollout.decide`` per service, services in dependency
order). Nothing the controller does is remembered only in memory but back-offs,
dependency wait clocks and notes: after ``kill -9`` at any point, the next pass
sees what exists and goes on from there. Replica names are deterministic
(``{deployment}-{service}-{n}``, the lowest free n), so a create repeated after a
crash is a name conflict, never a second replica.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina import _hooks
from lamina.deploy import _state
from lamina.deploy._rollout import Decision, Replica, ServiceView, decide, finished
from lamina.deploy._state import Desired, Halt
from lamina.deploy._status import (
    DeploymentStatus,
    ReplicaStatus,
    ServiceStatus,
    rollout_word,
    service_health,
)
from lamina.errors import AlreadyExists, InUse, LaminaError, NotFound

if TYPE_CHECKING:
    from lamina.deploy._autoscale import Autoscaler
    from lamina.deploy._ingress import IngressOptions
    from lamina.deploy._jobs import JobRun
    from lamina.deploy._model import DeploymentSpec, ServiceSpec
    from lamina.engine import Container, Engine
    from lamina.runtime._types import Record

LABEL_DEPLOYMENT = "lamina.deployment"
LABEL_SERVICE = "lamina.service"
LABEL_REPLICA = "lamina.replica"
LABEL_HASH = "lamina.spec-hash"

PASS_INTERVAL = 1.0  # a pass at least this often, besides wake-ups
ACTED_PAUSE = 0.05  # between a pass that acted and the next
DRAIN = 1.0  # seconds between a replica leaving its service's name and its stop
NO_CHECK_READY = 1.0  # a replica without a health check is ready once up this long
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0  # crash loops: doubling delay, capped
STABLE_RUN = 10.0  # all replicas ready this long: the back-off starts over
_PULL = {"always": "always", "newer": "newer", "if_not_present": "missing", "never": "never"}


class DeploymentFailed(LaminaError):
    """A deployment failed or its rollout halted: the message is the status line."""


@dataclass
class PlanChange:
    kind: str  # create | replace | remove | unchanged | scale
    object: str  # service | network | volume
    name: str
    detail: str = ""

    def line(self) -> str:
        how = "replace (rolling)" if self.kind == "replace" else self.kind
        return f"{how} {self.object} {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Plan:
    deployment: str
    changes: list[PlanChange] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [c.line() for c in self.changes]

    def to_json(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "changes": [dataclasses.asdict(c) for c in self.changes],
            "lines": self.lines,
        }


@dataclass
class _Backoff:
    crashes: int = 0
    until: float = 0.0
    stable_since: float | None = None


@dataclass
class _Notes:
    """What a pass found that is no container's state (kept in memory, remade by the
    next pass after a restart)."""

    failed: str = ""
    service_notes: dict[str, list[str]] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)


class Deployments:
    def __init__(
        self,
        root: Path,
        oci_runtime: str = "runc",
        say: Callable[[str], None] = print,
        ingress: IngressOptions | None = None,
    ) -> None:
        from lamina.deploy._ingress import IngressSync

        self.root = Path(root).absolute()
        self.oci_runtime = oci_runtime
        self.say = say
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._state_lock = threading.Lock()  # read-modify-write of a desired state
        self._converge_lock = threading.RLock()  # one pass (or down) at a time
        self._threads: builtins.list[threading.Thread] = []
        self._held = contextlib.ExitStack()
        self._backoff: dict[tuple[str, str], _Backoff] = {}
        self._waiting: dict[tuple[str, str, str], float] = {}  # dependency clocks
        self._notes: dict[str, _Notes] = {}
        self._autoscaler: Autoscaler | None = None
        self._draining: set[str] = set()  # replicas out of their service's name, to be removed
        # (deployment, container ID) -> running | failed: why
        self._inits: dict[tuple[str, str], str] = {}
        self._ingress = IngressSync(self.root, ingress, say)  # public endpoints (HAProxy)

    # -- the converge thread --------------------------------------------------------------
    def start(self) -> None:
        """Take the root's controller lock and start converging (refused when another
        controller holds it)."""
        if not self._held.enter_context(_state.controller_lock(self.root)):
            self._held.close()
            raise LaminaError(f"another deployment controller runs on {self.root}")
        _state.clean_scratch(self.root)
        self._release_orphans()
        for target, name in ((self._run, "deploy-converge"), (self._watch, "deploy-events")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._wake.set()

    def _release_orphans(self) -> None:
        """Secret files of replicas a dead controller removed (or never finished)."""
        from lamina.deploy._secrets import release_orphans

        with self._engine() as engine:
            found = engine.list(all=True, filters={"label": [LABEL_DEPLOYMENT]})
        release_orphans(self.root, {c.name for c in found})

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=60)
        self._threads.clear()
        self._ingress.close()  # HAProxy stays: it serves on, the next controller adopts it
        self._held.close()

    def _run(self) -> None:
        said = ""
        while not self._closing.is_set():
            self._wake.wait(PASS_INTERVAL)
            self._wake.clear()
            if self._closing.is_set():
                return
            try:
                if self.converge():
                    # it acted: look again soon (not at once: an action that fails the
                    # same way each time must not spin)
                    self._closing.wait(ACTED_PAUSE)
                    self._wake.set()
            except Exception as e:  # a pass must never end the thread
                if str(e) != said:  # said once, not every second
                    said = str(e)
                    self.say(f"deployments: {e}")

    def _watch(self) -> None:
        """Wake the converge thread when a container dies, its health changes, a check
        starts or ends a failing streak (``health_check``: the replica leaves or rejoins
        its service's name now, not at the next pass) or it is removed (whoever did it)."""
        from lamina.engine._events import EventFilter, Follower
        from lamina.engine._health import CHECK_EVENT

        filters = EventFilter(
            {
                "type": ["container"],
                "event": ["die", "health_status", CHECK_EVENT, "destroy"],
                "label": [LABEL_DEPLOYMENT],
            }
        )
        follower = Follower(self.root, from_start=False, filters=filters)
        try:
            while not self._closing.is_set():
                if any(True for _ in follower.events()):
                    self._wake.set()
                follower.wait(0.2)  # woken by the journal; the timeout checks closing
        finally:
            follower.close()

    def converge(self, name: str | None = None) -> bool:
        """One pass over every deployment (or ``name``); True when it acted."""
        acted = False
        with self._converge_lock, self._engine() as engine:
            for dep in [name] if name else _state.names(self.root):
                try:
                    acted |= self._converge_one(engine, dep)
                except NotFound:
                    continue
                except LaminaError as e:
                    self._note(dep).failed = str(e).splitlines()[0] if str(e) else "error"
            self._ingress.sync(engine, self._status)
        return acted

    @contextlib.contextmanager
    def _engine(self) -> Iterator[Engine]:
        from lamina.engine import open_engine

        with open_engine(self.root, oci_runtime=self.oci_runtime, report=None) as engine:
            yield engine

    def _note(self, name: str) -> _Notes:
        return self._notes.setdefault(name, _Notes())

    # -- desired state --------------------------------------------------------------------
    def plan(self, spec: DeploymentSpec) -> Plan:
        """What ``apply(spec)`` would do."""
        _validate(spec)
        with self._engine() as engine:
            images = self._images(engine, spec, pull=False)
            try:
                old: Desired | None = _state.load(self.root, spec.deployment)
            except NotFound:
                old = None
            new = self._desired(spec, images, old)
            return self._plan(engine, new, old)

    def apply(self, spec: DeploymentSpec) -> Plan:
        """Persist ``spec`` as the deployment's desired state (images resolved and
        pulled as their pull_policy says) and let the converge thread make it so.
        Returns what it is going to do."""
        from lamina.engine._events import emit

        _validate(spec)
        self._check_secrets(spec)
        with self._engine() as engine:
            images = self._images(engine, spec, pull=True)
            with self._state_lock:
                try:
                    old: Desired | None = _state.load(self.root, spec.deployment)
                except NotFound:
                    old = None
                if old is not None and old.removing:
                    raise LaminaError(f"deployment {spec.deployment} is being removed")
                from lamina.deploy._ingress import clash

                if why := clash(self.root, spec):
                    raise InUse(f"public endpoints of deployment {spec.deployment}: {why} "
                                "(with another deployment's)")  # fmt: skip
                new = self._desired(spec, images, old)
                plan = self._plan(engine, new, old)
                _state.save(self.root, new)
        _hooks.stop_point("deploy:applied")
        self._notes.pop(spec.deployment, None)
        self._waiting = {k: v for k, v in self._waiting.items() if k[0] != spec.deployment}
        emit(
            self.root,
            "deployment",
            "create" if old is None else "update",
            spec.deployment,
            {"name": spec.deployment, "generation": str(new.generation)},
        )
        for change in plan.changes:
            if change.kind == "replace" and change.object == "service":
                self._event("rollout", spec.deployment, service=change.name)
        self._wake.set()
        return plan

    def _desired(
        self, spec: DeploymentSpec, images: dict[str, str], old: Desired | None
    ) -> Desired:
        dumped = spec.model_dump(mode="json", by_alias=True)
        new = Desired(name=spec.deployment, spec=dumped, images=images)
        if old is not None:
            new.created = old.created
            new.generation = old.generation + 1
            new.restarts = {k: v for k, v in old.restarts.items() if k in spec.services}
            new.scale = {
                k: v
                for k, v in old.scale.items()
                if k in spec.services and spec.services[k].scale.mode != "fixed"
            }
        # a deploy asks for every replica again: those the user stopped too
        new.resumed = {svc: time.time() for svc in spec.services}
        for svc, service in dumped["services"].items():
            new.hashes[svc] = _state.service_hash(
                service, images.get(svc, ""), new.restarts.get(svc, 0)
            )
        return new

    def _images(self, engine: Engine, spec: DeploymentSpec, *, pull: bool) -> dict[str, str]:
        """Each service's image ID, resolved (and pulled, with ``pull``) as its
        pull_policy says: a new digest changes the service's hash (a rollout)."""
        out: dict[str, str] = {}
        for svc, service in spec.services.items():
            policy = _PULL[service.image.pull_policy] if pull else "never"
            platform = None
            if service.platform is not None and service.platform.arch:
                platform = f"{service.platform.os}/{service.platform.arch}"
            try:
                record = engine.resolve_image(service.image.name, pull=policy, platform=platform)
            except LaminaError:
                if pull:
                    raise
                continue  # a dry run pulls nothing: the hash says "replace"
            out[svc] = str(record.id)
        return out

    def _check_secrets(self, spec: DeploymentSpec) -> None:
        refs = spec.secret_refs()
        if not refs:
            return
        from lamina.deploy._secrets import SecretStore

        have = set(SecretStore(self.root).names())
        missing = sorted(refs - have)
        if missing:
            raise LaminaError(f"secret {missing[0]} does not exist (lamina secret create)")

    def _plan(self, engine: Engine, new: Desired, old: Desired | None) -> Plan:
        spec = _spec_of(new)
        plan = Plan(new.name)
        containers = self._containers(engine, new.name)
        for net in _networks_of(spec):
            exists = _exists(engine.networks.get, net)
            plan.changes.append(PlanChange("unchanged" if exists else "create", "network", net))
        for vol in _volumes_of(spec):
            exists = _exists(engine.volume, vol)
            plan.changes.append(PlanChange("unchanged" if exists else "create", "volume", vol))
        for svc, service in spec.services.items():
            mine = [c for c in containers if c.config.labels.get(LABEL_SERVICE) == svc]
            want = self._count(new, svc, service)
            if service.rtype != "service":
                plan.changes.append(
                    PlanChange(
                        "unchanged" if old and svc in old.hashes else "create",
                        "service",
                        svc,
                        service.rtype,
                    )
                )
            elif not mine:
                plan.changes.append(PlanChange("create", "service", svc, f"{want} replicas"))
            elif any(c.config.labels.get(LABEL_HASH) != new.hashes[svc] for c in mine):
                plan.changes.append(PlanChange("replace", "service", svc, f"{want} replicas"))
            elif len(mine) != want:
                plan.changes.append(PlanChange("scale", "service", svc, f"{len(mine)} -> {want}"))
            else:
                plan.changes.append(PlanChange("unchanged", "service", svc, f"{want} replicas"))
        gone = {c.config.labels.get(LABEL_SERVICE, "") for c in containers} - set(spec.services)
        gone |= set(old.hashes if old else ()) - set(spec.services)
        for svc in sorted(gone):
            plan.changes.append(PlanChange("remove", "service", svc))
        if old is not None:
            old_spec = _spec_of(old)
            for net in sorted(set(_networks_of(old_spec)) - set(_networks_of(spec))):
                plan.changes.append(PlanChange("remove", "network", net))
        return plan

    def _count(self, desired: Desired, svc: str, service: ServiceSpec) -> int:
        """How many replicas the service should have now."""
        scale = service.scale
        if service.rtype != "service":
            return 0
        if scale.mode == "fixed":
            return scale.replicas
        if scale.mode == "manual":
            return desired.scale.get(svc, 1)
        return min(max(desired.scale.get(svc, scale.min), scale.min), scale.max)

    def _update(self, name: str, change: Callable[[Desired], None]) -> Desired:
        with self._state_lock:
            desired = _state.load(self.root, name)
            if desired.removing:
                raise LaminaError(f"deployment {name} is being removed")
            change(desired)
            _state.save(self.root, desired)
        self._wake.set()
        return desired

    def scale(self, name: str, service: str, replicas: int) -> None:
        """Set the replicas of a service (any scale mode but fixed takes it; an adaptive
        one within its min and max)."""
        if replicas < 0:
            raise LaminaError(f"replicas must be >= 0, not {replicas}")

        def change(d: Desired) -> None:
            svc = _service(d, service)
            if svc.scale.mode == "fixed":
                raise LaminaError(
                    f"service {name}/{service} has a fixed scale: change its replicas in the spec"
                )
            d.scale[service] = replicas
            d.resumed[service] = time.time()

        self._update(name, change)
        self._event("scale", name, service=service, replicas=str(replicas))

    def restart(self, name: str, service: str) -> None:
        """A rolling restart: every replica replaced by a new one, one by one."""

        def change(d: Desired) -> None:
            _service(d, service)
            d.restarts[service] = d.restarts.get(service, 0) + 1
            d.hashes[service] = _state.service_hash(
                d.spec["services"][service], d.images.get(service, ""), d.restarts[service]
            )
            d.halted.pop(service, None)
            d.resumed[service] = time.time()

        self._update(name, change)
        self._event("rollout", name, service=service, reason="restart")

    def down(self, name: str, volumes: bool = False) -> builtins.list[str]:
        """Remove the deployment: replicas, jobs, its networks (its named volumes with
        ``volumes``), then its desired state. Marked first, so a controller killed
        halfway finishes it when it starts again. Returns what was removed."""
        with self._state_lock:
            desired = _state.load(self.root, name)
            desired.removing, desired.volumes = True, desired.volumes or volumes
            _state.save(self.root, desired)
        with self._converge_lock, self._engine() as engine:
            self._ingress.sync(engine, self._status)  # its routes go before its replicas
            return self._teardown(engine, desired)

    def _teardown(self, engine: Engine, desired: Desired) -> builtins.list[str]:
        from lamina.engine._events import emit

        removed = [c.name for c in self._containers(engine, desired.name, replicas=False)]
        self._remove_all(engine, removed)
        for net in engine.networks.list(filters={"label": [f"{LABEL_DEPLOYMENT}={desired.name}"]}):
            with contextlib.suppress(NotFound):
                engine.networks.remove(net.id)
                removed.append(f"network {net.name}")
        if desired.volumes:
            for vol in engine.list_volumes(
                filters={"label": [f"{LABEL_DEPLOYMENT}={desired.name}"]}
            ):
                with contextlib.suppress(NotFound):
                    engine.remove_volume(vol.name, force=True)
                    removed.append(f"volume {vol.name}")
        _state.remove(self.root, desired.name)
        self._notes.pop(desired.name, None)
        if self._autoscaler is not None:
            self._autoscaler.forget(desired.name)
        emit(self.root, "deployment", "remove", desired.name, {"name": desired.name})
        return removed

    # -- reading --------------------------------------------------------------------------
    def list(self) -> builtins.list[DeploymentStatus]:
        return [self.status(n) for n in _state.names(self.root)]

    def status(self, name: str) -> DeploymentStatus:
        desired = _state.load(self.root, name)
        with self._engine() as engine:
            return self._status(engine, desired)

    def inspect(self, name: str) -> dict[str, Any]:
        """The desired state (the spec, secrets as their references) and the status."""
        desired = _state.load(self.root, name)
        with self._engine() as engine:
            status = self._status(engine, desired)
        return {
            "Name": name,
            "Spec": desired.spec,
            "Generation": desired.generation,
            "Created": desired.created,
            "Updated": desired.updated,
            "Images": desired.images,
            "SpecHashes": desired.hashes,
            "Scale": desired.scale,
            "Status": status.to_json(),
        }

    def replicas(self, name: str, service: str) -> builtins.list[ReplicaStatus]:
        status = self.status(name)
        found = status.service(service)
        if found is None:
            raise NotFound(f"deployment {name} has no service {service}")
        return found.replicas

    def wait(self, name: str, timeout: float = 300.0) -> DeploymentStatus:
        """Until every service has its desired replicas ready and no rollout is in
        progress; DeploymentFailed when it failed or halted, or on ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(name)
            if status.state == "running":
                return status
            if status.state in ("failed", "halted"):
                raise DeploymentFailed(f"deployment {name} {status.state}: {status.message}")
            if time.monotonic() > deadline:
                raise DeploymentFailed(
                    f"deployment {name} not ready after {timeout:g}s: "
                    f"{status.message or status.state}"
                )
            self._wake.set()
            time.sleep(0.1)

    # -- jobs -----------------------------------------------------------------------------
    def run_job(self, name: str, service: str) -> JobRun:
        """Start one run of a job (or cron) service (not waited for)."""
        desired = _state.load(self.root, name)
        spec = _spec_of(desired)
        svc = _service(desired, service)
        if svc.rtype == "service":
            raise LaminaError(f"service {name}/{service} is not a job (rtype {svc.rtype})")
        with self._engine() as engine:
            return self._run_job(engine, desired, spec, service)

    def _run_job(self, engine: Engine, desired: Desired, spec: DeploymentSpec, svc: str) -> JobRun:
        from lamina.deploy import _jobs

        template = self._config(engine, desired, spec, svc, 0)  # one_off_config renames it
        run = _jobs.run_job(engine, desired.name, svc, template, None)
        self._event("job", desired.name, service=svc, container=run.container)
        return run

    def jobs(self, name: str, service: str | None = None) -> builtins.list[JobRun]:
        """The runs of the deployment's jobs (of ``service``), oldest first per service."""
        from lamina.deploy import _jobs

        _state.load(self.root, name)
        with self._engine() as engine:
            return _jobs.job_runs(engine, name, service)

    def _cron(self, engine: Engine, desired: Desired, spec: DeploymentSpec, svc: str) -> bool:
        """A cron service's run, when its schedule says one is due."""
        from lamina.deploy import _jobs

        schedule = spec.services[svc].schedule
        if not schedule:
            return False
        template = self._config(engine, desired, spec, svc, 0)
        run = _jobs.cron_tick(engine, desired.name, svc, schedule, template, None, desired.created)
        if run is not None:
            self._event("job", desired.name, service=svc, container=run.container)
        return run is not None

    # -- one deployment -------------------------------------------------------------------
    def _converge_one(self, engine: Engine, name: str) -> bool:
        desired = _state.load(self.root, name)
        if desired.removing:
            self._teardown(engine, desired)
            return True
        spec = _spec_of(desired)
        notes = self._note(name)
        notes.failed = ""
        notes.service_notes.clear()
        self._ensure_networks(engine, desired, spec)
        self._ensure_volumes(engine, desired, spec)
        acted = False
        for c in self._containers(engine, name, replicas=False):
            if c.config.labels.get(LABEL_SERVICE) not in spec.services:  # a service gone
                self._remove(engine, c.name, drain=True)
                acted = True
        containers = self._containers(engine, name)
        _state.forget_markers(self.root, name, {c.id for c in containers})
        live = {c.id for c in containers}
        for key in [k for k in self._inits if k[0] == name and k[1] not in live]:
            self._inits.pop(key, None)
        by_service: dict[str, builtins.list[Container]] = {}
        for c in containers:
            by_service.setdefault(c.config.labels.get(LABEL_SERVICE, ""), []).append(c)
        replicas = {
            svc: [
                self._observe(engine, desired, spec, svc, c, act=True)
                for c in by_service.get(svc, [])
            ]
            for svc in spec.services
        }
        for svc in _order(spec):
            service = spec.services[svc]
            if service.rtype == "cron":
                acted |= self._cron(engine, desired, spec, svc)
            if service.rtype != "service":
                continue
            if service.scale.mode == "adaptive":
                self._autoscale(desired, svc, service, replicas[svc], engine)
            go = self._dependencies_met(name, svc, service, replicas, notes)
            if go is None:  # failed: nothing after it starts either
                break
            view = ServiceView(
                replicas=replicas[svc],
                desired=self._count(desired, svc, service),
                spec_hash=desired.hashes[svc],
                halted=(h := desired.halted.get(svc)) is not None
                and h.spec_hash == desired.hashes[svc],
                ready_deadline=_ready_deadline(service),
                now=time.time(),
                may_create=go and self._may_create(name, svc, replicas[svc]),
                restart=_restart_kind(service),
                gave_up=self._gave_up(name, svc, service),
            )
            decision = decide(view)
            if not decision.empty():
                acted = True
                self._act(engine, desired, spec, svc, decision)
        return acted

    def _dependencies_met(
        self,
        name: str,
        svc: str,
        service: ServiceSpec,
        replicas: dict[str, builtins.list[Replica]],
        notes: _Notes,
    ) -> bool | None:
        """True when the service may make replicas, False to wait, None when its
        dependency failed it (on_timeout: fail)."""
        go = True
        for dep in service.depends:
            key = (name, svc, dep.service)
            if _condition(dep.condition, replicas.get(dep.service, [])):
                self._waiting.pop(key, None)
                continue
            since = self._waiting.setdefault(key, time.monotonic())
            if time.monotonic() - since < dep.timeout:
                go = False
                continue
            line = f"service {svc}: {dep.service} not {dep.condition} after {dep.timeout:g}s"
            if dep.on_timeout == "fail":
                notes.failed = line
                return None
            if dep.on_timeout == "warn":
                notes.service_notes.setdefault(svc, []).append(line)
        return go

    def _autoscale(self, desired: Desired, svc: str, service: ServiceSpec,
                   replicas: builtins.list[Replica], engine: Engine) -> None:  # fmt: skip
        """An adaptive service's count from its replicas' cgroup usage (with cooldown)."""
        scale = service.scale
        assert scale.mode == "adaptive"
        ids = [r.id for r in replicas if r.state == "running" and r.ready]
        current = self._count(desired, svc, service)
        if self._autoscaler is None:
            from lamina.deploy._autoscale import Autoscaler

            self._autoscaler = Autoscaler()
        wanted = self._autoscaler.replicas(engine, desired.name, svc, scale, ids, current)
        if wanted == current:
            return

        def change(d: Desired) -> None:
            d.scale[svc] = wanted

        self._update(desired.name, change)
        desired.scale[svc] = wanted
        self._event("scale", desired.name, service=svc, replicas=str(wanted), reason="adaptive")
        self.say(f"deployment {desired.name}: {svc} scaled {current} -> {wanted}")

    def _may_create(self, name: str, svc: str, replicas: builtins.list[Replica]) -> bool:
        """Crash loops back off; a stable run starts the back-off over."""
        b = self._backoff.setdefault((name, svc), _Backoff())
        now = time.monotonic()
        if replicas and all(r.ready for r in replicas):
            b.stable_since = b.stable_since or now
            if now - b.stable_since > STABLE_RUN:
                b.crashes = 0
        else:
            b.stable_since = None
        return now >= b.until

    def _gave_up(self, name: str, svc: str, service: ServiceSpec) -> bool:
        """``on_failure`` with ``max_attempts``: that many crashes, and no more tries."""
        policy = service.restart_policy
        if policy is None or policy.kind != "on_failure" or policy.max_attempts is None:
            return False
        return self._backoff.get((name, svc), _Backoff()).crashes >= policy.max_attempts

    def _crashed(self, name: str, svc: str, replica: Replica) -> None:
        b = self._backoff.setdefault((name, svc), _Backoff())
        b.crashes += 1
        # the first death is replaced at once; a crash loop waits 0.5 s, 1 s, 2 s, ...
        delay = 0.0 if b.crashes == 1 else BACKOFF_FIRST * 2 ** (b.crashes - 2)
        b.until = time.monotonic() + min(delay, BACKOFF_MAX)
        why = (
            f"exited with code {replica.exit_code}"
            if replica.exit_code is not None
            else replica.state
        )
        self._note(name).last_error[svc] = f"{replica.name} {why}"

    def _act(
        self, engine: Engine, desired: Desired, spec: DeploymentSpec, svc: str, d: Decision
    ) -> None:
        name = desired.name
        for replica in d.alias_on:
            if replica not in d.remove:
                self._set_alias(engine, spec, svc, replica, on=True)
        leaving = d.drain
        self._draining.update(leaving)  # not ready from now on, whatever the engine says
        for replica in d.alias_off:
            self._set_alias(engine, spec, svc, replica, on=False)
        if d.alias_on or d.alias_off:  # the ingress follows at once, before any stop
            self._ingress.sync(engine, self._status)
        for r in d.crashed:
            self._crashed(name, svc, r)
        if leaving and DRAIN:
            time.sleep(DRAIN)  # requests resolved or routed just before it left
        self._remove_all(engine, d.remove)
        self._draining.difference_update(leaving)
        if d.halt:  # once the new replica is gone: a halted status shows what stays
            self._halt(desired, svc, d.halt)
        for replica in d.start:
            self._start(engine, replica)
        for n in d.create:
            self._create(engine, desired, spec, svc, n)

    def _halt(self, desired: Desired, svc: str, line: str) -> None:
        def change(d: Desired) -> None:
            d.halted[svc] = Halt(d.hashes[svc], line)

        self._update(desired.name, change)
        desired.halted[svc] = Halt(desired.hashes[svc], line)
        self._event("halt", desired.name, service=svc, message=line)
        self.say(f"deployment {desired.name}: rollout of {svc} halted: {line}")

    # -- replicas -------------------------------------------------------------------------
    def _containers(
        self, engine: Engine, name: str, *, replicas: bool = True
    ) -> builtins.list[Container]:
        """The deployment's replicas (``replicas=False``: every container labelled with
        it, its jobs' runs and init steps' too)."""
        found = engine.list(all=True, filters={"label": [f"{LABEL_DEPLOYMENT}={name}"]})
        if not replicas:
            return found
        from lamina.deploy._jobs import is_one_off

        labels = [c.config.labels for c in found]
        return [c for c, lb in zip(found, labels, strict=True)
                if LABEL_REPLICA in lb and not is_one_off(lb)]  # fmt: skip

    def _observe(
        self,
        engine: Engine,
        desired: Desired,
        spec: DeploymentSpec,
        svc: str,
        c: Container,
        *,
        act: bool = False,
    ) -> Replica:
        """A replica as it is now; ``act`` (the converge pass): its init steps are
        started when they are due."""
        labels = c.config.labels
        state = str(c.state.status)
        started = c.state.started_at
        service = spec.services[svc]
        if state != "running":
            ready = False
        elif c.health:
            ready = c.health == "healthy"  # and no check failing since (below)
        else:
            ready = started is not None and time.time() - started >= NO_CHECK_READY
        address, aliased, output = "", False, ""
        rec = engine.store.get(c.id)
        user_stopped = (
            rec is not None and state == "exited" and self._user_stopped(desired, svc, rec)
        )
        if rec is not None:
            main = _networks_of(spec, service)[0] if _networks_of(spec, service) else ""
            for e in rec.endpoints:
                if e.network == main:
                    address = e.ipv4
                    aliased = svc in e.aliases
            if c.health:
                from lamina.engine._health import state_of

                health = state_of(rec) or {}
                log = health.get("Log") or []
                output = str(log[-1].get("Output", "")) if log else ""
                # a failed check takes it out of its service's name at once (the
                # engine says unhealthy only after the retries: then it is replaced)
                ready = ready and not health.get("FailingStreak")
        if service.init.steps and state == "running":
            done, failed = self._init(desired, svc, c, act=act)
            if failed:  # a dead replica for the rules: removed, backing off
                state, output = "failed", failed
            ready = ready and done
        if not _live_aliases(engine) or not _networks_of(spec, service):
            aliased = ready  # given at create, or no network: nothing to switch
        if c.name in self._draining:
            ready = aliased = False
        try:
            n = int(labels.get(LABEL_REPLICA, "0"))
        except ValueError:
            n = 0
        return Replica(
            name=c.name,
            n=n,
            spec_hash=labels.get(LABEL_HASH, ""),
            state=state,
            health=c.health,
            ready=ready,
            started_at=started,
            exit_code=c.state.exit_code,
            address=address,
            aliased=aliased,
            last_output=output,
            id=c.id,
            user_stopped=user_stopped,
        )

    def _user_stopped(self, desired: Desired, svc: str, rec: Record) -> bool:
        """Whether an ended replica was ended by a user's ``stop`` or ``kill`` (the
        engine's mark, Docker's HasBeenManuallyStopped) since its service was last
        deployed, scaled or restarted, and not by the controller removing it."""
        from lamina.engine._restart import RestartState

        if not RestartState.of(rec).stopped_by_user or rec.finished_at is None:
            return False
        if rec.finished_at < desired.resumed.get(svc, 0.0):
            return False
        return not _state.removal_marker(self.root, desired.name, rec.id).exists()

    def _init(self, desired: Desired, svc: str, c: Container, *, act: bool) -> tuple[bool, str]:
        """Whether the replica's init steps are done (a marker file, so a restarted
        controller does not run them again), or failed (why); with ``act``, started in
        a thread of their own when they have not run."""
        marker = _state.init_marker(self.root, desired.name, c.id)
        if marker.exists():
            return True, ""
        key = (desired.name, c.id)
        state = self._inits.get(key)
        if state is None and act:
            self._inits[key] = "running"
            threading.Thread(target=self._run_init, args=(desired, svc, c),
                             name=f"init-{c.name}", daemon=True).start()  # fmt: skip
        failed = state[len("failed: ") :] if state and state.startswith("failed: ") else ""
        return False, failed

    def _run_init(self, desired: Desired, svc: str, c: Container) -> None:
        from lamina.deploy._init import run_init_steps

        spec = _spec_of(desired)
        service = spec.services[svc]
        networks = _networks_of(spec, service)
        try:
            with self._engine() as engine:
                run_init_steps(engine, desired.name, svc, service.init.steps, c.config,
                               networks[0] if networks else None, say=self.say)  # fmt: skip
            _state.mark_init_done(self.root, desired.name, c.id)
            self._inits.pop((desired.name, c.id), None)
        except Exception as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            self._inits[(desired.name, c.id)] = f"failed: {why}"
        self._wake.set()

    def _set_alias(
        self, engine: Engine, spec: DeploymentSpec, svc: str, replica: str, *, on: bool
    ) -> None:
        set_aliases = _live_aliases(engine)
        if set_aliases is None:
            return
        service = spec.services[svc]
        extra = {n.name: n.aliases for n in service.networks}
        for net, key in zip(_networks_of(spec, service), _network_keys(service), strict=True):
            aliases = [svc, *extra.get(key, [])] if on else []
            with contextlib.suppress(NotFound):
                set_aliases(replica, net, aliases)

    def _create(
        self, engine: Engine, desired: Desired, spec: DeploymentSpec, svc: str, n: int
    ) -> None:
        name = f"{desired.name}-{svc}-{n}"
        config = self._config(engine, desired, spec, svc, n)
        try:
            engine.create(config)
        except AlreadyExists:
            # A create repeated after a crash: the one made then is started below. One
            # that has run (a replica a user stopped, whose removal has not happened)
            # is not started behind anybody's back: the next pass decides on it.
            with contextlib.suppress(NotFound):
                if str(engine.get(name).state.status) != "created":
                    return
        _hooks.stop_point("deploy:created")
        self._start(engine, name)

    def _start(self, engine: Engine, name: str) -> None:
        try:
            engine.start(name)
        except NotFound:
            return
        except LaminaError as e:
            self.say(f"deployments: cannot start {name}: {e}")

    def _remove_all(self, engine: Engine, names: builtins.list[str]) -> None:
        """Remove replicas, in parallel (each one's stop may wait its grace period)."""
        if len(names) <= 1:
            for name in names:
                self._remove(engine, name, drain=False)
                _hooks.stop_point("deploy:removed")
            return

        def remove(name: str) -> None:
            with self._engine() as own:  # an engine per thread
                self._remove(own, name, drain=False)
            _hooks.stop_point("deploy:removed")

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
            list(pool.map(remove, names))

    def _remove(self, engine: Engine, name: str, *, drain: bool) -> None:
        try:
            if drain:
                time.sleep(DRAIN)
            found = engine.get(name)
            deployment = found.config.labels.get(LABEL_DEPLOYMENT)
            if deployment:  # the stop below is ours, not a user's (after a crash too)
                _state.mark_removing(self.root, deployment, found.id)
            with contextlib.suppress(LaminaError):
                engine.stop(name)
            _hooks.stop_point("deploy:removing")
            engine.remove(name, force=True, volumes=True)
        except NotFound:
            pass
        from lamina.deploy._secrets import release

        release(self.root, name)  # its secret files, if it had any

    def _config(
        self, engine: Engine, desired: Desired, spec: DeploymentSpec, svc: str, n: int
    ) -> Any:
        """The replica's ContainerConfig: the service spec through the engine's run
        options (Docker's rules and messages), then what flags cannot say."""
        from lamina.engine._options import RunOptions, prepare_run

        service = spec.services[svc]
        name = f"{desired.name}-{svc}-{n}"
        labels = {
            **service.labels,
            LABEL_DEPLOYMENT: desired.name,
            LABEL_SERVICE: svc,
            LABEL_REPLICA: str(n),
            LABEL_HASH: desired.hashes[svc],
        }
        networks = _networks_of(spec, service)
        live = _live_aliases(engine) is not None
        res = service.resources
        opts = RunOptions(
            name=name,
            env=[f"{k}={v}" for k, v in self._env(service).items()],
            workdir=service.command.workdir,
            user=service.user,
            hostname=service.hostname,
            network=networks or (service.network_mode or "none"),
            network_aliases=() if live or not networks else (svc,),
            publish=[_publish(p) for p in service.port_mappings],
            expose=[f"{p.port}/{p.protocol}" for p in service.expose],
            add_hosts=list(service.extra_hosts),
            dns=list(service.dns),
            cpus=str(res.cpu) if res.cpu else None,
            memory=str(res.memory) if res.memory else None,
            pids_limit=res.pids_limit,
            privileged=service.privileged,
            cap_add=list(service.cap_add),
            cap_drop=list(service.cap_drop),
            stop_signal=service.stop_signal,
            stop_timeout=int(service.stop_grace_period)
            if service.stop_grace_period is not None
            else None,
            labels=[f"{k}={v}" for k, v in labels.items()],
            isolation=service.isolation,
            volumes=[v for s in service.storage if (v := _volume(desired.name, spec, s))],
            tmpfs=[_tmpfs(s) for s in service.storage if s.type == "tmpfs"],
        )
        config, _warnings = prepare_run(
            engine, opts, image=desired.images[svc], command=service.command.args, pull="never"
        )
        changes: dict[str, Any] = {"image_ref": service.image.name}
        if service.command.entrypoint is not None:
            changes["entrypoint"] = list(service.command.entrypoint)
        if service.health is not None:
            changes["healthcheck"] = _healthcheck(service)
        if service.secrets:
            from lamina.deploy._secrets import SecretFile, materialize

            files = [SecretFile(x.source, x.target, x.mode if x.mode is not None else 0o400)
                     for x in service.secrets]  # fmt: skip
            changes["mounts"] = [*config.mounts, *materialize(self.root, name, files)]
        return dataclasses.replace(config, **changes)

    def _env(self, service: ServiceSpec) -> dict[str, str]:
        """The service's env with ``$S:name`` read from the secret store."""
        from lamina.deploy._model import SECRET_PREFIX, secret_name

        out = dict(service.env)
        refs = {k: v for k, v in out.items() if v.startswith(SECRET_PREFIX)}
        if refs:
            from lamina.deploy._secrets import SecretStore

            store = SecretStore(self.root)
            for key, value in refs.items():
                out[key] = store.get(secret_name(value)).decode()
        return out

    def _ensure_networks(self, engine: Engine, desired: Desired, spec: DeploymentSpec) -> None:
        defs = {_network_name(spec, k): d for k, d in spec.networks.items()}
        for net in _networks_of(spec):
            d = defs.get(net)
            if d is not None and d.external:
                continue
            try:
                found = engine.networks.get(net)
            except NotFound:
                engine.networks.create(
                    net,
                    subnets=[d.subnet] if d is not None and d.subnet else (),
                    gateways=[d.gateway] if d is not None and d.gateway else (),
                    internal=d.internal if d is not None else False,
                    labels={**(d.labels if d is not None else {}), LABEL_DEPLOYMENT: desired.name},
                )
                continue
            if found.labels.get(LABEL_DEPLOYMENT) != desired.name:
                raise LaminaError(f"network {net} exists and is not deployment {desired.name}'s")

    def _ensure_volumes(self, engine: Engine, desired: Desired, spec: DeploymentSpec) -> None:
        for vol in _volumes_of(spec):
            if not _exists(engine.volume, vol):
                engine.create_volume(vol, labels={LABEL_DEPLOYMENT: desired.name})

    # -- status ---------------------------------------------------------------------------
    def _status(self, engine: Engine, desired: Desired) -> DeploymentStatus:
        spec = _spec_of(desired)
        notes = self._notes.get(desired.name, _Notes())
        containers = self._containers(engine, desired.name)
        out = DeploymentStatus(
            name=desired.name, state="running", generation=desired.generation, network=desired.name
        )
        if desired.removing:
            out.state = "removing"
        progressing = False
        for svc, service in spec.services.items():
            mine = [
                self._observe(engine, desired, spec, svc, c)
                for c in containers
                if c.config.labels.get(LABEL_SERVICE) == svc
            ]
            mine.sort(key=lambda r: r.n)
            want = self._count(desired, svc, service)
            current = desired.hashes[svc]
            halt = desired.halted.get(svc)
            halted = halt.message if halt is not None and halt.spec_hash == current else ""
            replicas = [
                ReplicaStatus(
                    r.name,
                    r.n,
                    r.state,
                    r.health or "none",
                    r.ready and r.aliased,
                    r.address,
                    r.spec_hash,
                    r.spec_hash == current,
                )
                for r in mine
            ]
            gave_up = self._gave_up(desired.name, svc, service)
            kind = _restart_kind(service)
            completed = sum(1 for r in mine if finished(r, current, kind, gave_up))
            ready_new = sum(1 for r in replicas if r.current and r.ready) + completed
            old = sum(1 for r in replicas if not r.current)
            has_check = service.health is not None or any(r.health for r in mine)
            status = ServiceStatus(
                name=svc,
                rtype=service.rtype,
                desired=want,
                running=sum(1 for r in mine if r.state == "running"),
                ready=sum(1 for r in replicas if r.ready),
                completed=completed,
                health=service_health(replicas, has_check),
                rollout=rollout_word(ready_new, want, old, halted)
                if service.rtype == "service"
                else "complete",
                last_error=notes.last_error.get(svc, ""),
                notes=list(notes.service_notes.get(svc, [])),
                replicas=replicas,
            )
            out.services.append(status)
            if service.rtype != "service":
                continue
            if halted:
                out.state, out.message = "halted", f"{svc}: {halted}"
            elif status.rollout != "complete" or len(mine) != want:
                progressing = True
        if notes.failed and out.state == "running":
            out.state, out.message = "failed", notes.failed
        elif progressing and out.state == "running":
            out.state = "progressing"
            waiting = [s for s in out.services
                       if s.rollout != "complete" or s.ready + s.completed < s.desired]  # fmt: skip
            if waiting:
                s = waiting[0]
                out.message = f"{s.name}: {s.ready}/{s.desired} ready"
        return out

    def _event(self, action: str, name: str, **attributes: str) -> None:
        from lamina.engine._events import emit

        emit(self.root, "deployment", action, name, {"name": name, **attributes})


# -- helpers ------------------------------------------------------------------------------


def _validate(spec: DeploymentSpec) -> None:
    """The checks a spec file gets (names, dependencies, cycles, ...), again: a model
    may come from a client as JSON rather than from the parser. InvalidSpec."""
    from lamina.deploy._spec import Problems, build_spec, check_deployment_name

    data = spec.model_dump(mode="json", by_alias=True)
    services = data.pop("services")
    problems = Problems()
    check_deployment_name(spec.deployment, "deployment", problems)
    build_spec(data, services, problems)
    problems.raise_if_any()


def _spec_of(desired: Desired) -> DeploymentSpec:
    from lamina.deploy._model import DeploymentSpec

    return DeploymentSpec.model_validate(desired.spec)


def _service(desired: Desired, service: str) -> ServiceSpec:
    spec = _spec_of(desired)
    found = spec.services.get(service)
    if found is None:
        raise NotFound(f"deployment {desired.name} has no service {service}")
    return found


def _exists(get: Callable[[str], object], name: str) -> bool:
    try:
        get(name)
    except NotFound:
        return False
    return True


def _network_name(spec: DeploymentSpec, key: str) -> str:
    d = spec.networks.get(key)
    return d.name if d is not None and d.name else f"{spec.deployment}_{key}"


def _network_keys(service: ServiceSpec) -> list[str]:
    return [n.name for n in service.networks] or ["default"]


def _networks_of(spec: DeploymentSpec, service: ServiceSpec | None = None) -> list[str]:
    """The networks of a service (or all of the deployment's): the deployment's own,
    named after it, unless the spec names networks."""
    if service is not None and service.network_mode in ("host", "none"):
        return []
    if service is not None:
        keys = _network_keys(service)
    else:
        keys = sorted(
            {
                k
                for s in spec.services.values()
                for k in _network_keys(s)
                if s.network_mode not in ("host", "none")
            }
        )
    return [
        spec.deployment if k == "default" and k not in spec.networks else _network_name(spec, k)
        for k in keys
    ]


def _volume_name(deployment: str, spec: DeploymentSpec, key: str) -> str:
    d = spec.volumes.get(key)
    return d.name if d is not None and d.name else f"{deployment}_{key}"


def _volumes_of(spec: DeploymentSpec) -> list[str]:
    names = {
        _volume_name(spec.deployment, spec, s.name)
        for svc in spec.services.values()
        for s in svc.storage
        if s.type == "named"
    }
    names -= {_volume_name(spec.deployment, spec, k) for k, d in spec.volumes.items() if d.external}
    return sorted(names)


def _volume(deployment: str, spec: DeploymentSpec, s: Any) -> str:
    if s.type == "bind":
        return f"{s.source}:{s.target}" + (":ro" if s.readonly else "")
    if s.type == "named":
        return f"{_volume_name(deployment, spec, s.name)}:{s.target}" + (
            ":ro" if s.readonly else ""
        )
    if s.type == "anonymous":
        return str(s.target)
    return ""


def _tmpfs(s: Any) -> str:
    opts = [f"size={s.size}"] if s.size else []
    if s.mode is not None:
        opts.append(f"mode={s.mode:o}")
    return f"{s.target}:{','.join(opts)}" if opts else str(s.target)


def _publish(p: Any) -> str:
    host = f"{p.host_ip}:" if p.host_ip else ""
    return f"{host}{p.host_port or ''}:{p.container_port}/{p.protocol}"


def _healthcheck(service: ServiceSpec) -> dict[str, Any]:
    """The service's health check as Docker's HealthConfig (tcp and http are kinds the
    engine runs in the container's network namespace)."""
    health = service.health
    assert health is not None
    check = health.check
    if check.type == "command":
        test = (
            ["CMD-SHELL", check.command]
            if isinstance(check.command, str)
            else ["CMD", *check.command]
        )
    elif check.type == "tcp":
        test = ["TCP", str(check.port)]
    elif check.type == "http":
        test = ["HTTP", check.url, str(check.expect_status)]
    else:
        return {"Test": ["NONE"]}
    ns = 1_000_000_000
    return {
        "Test": test,
        "Interval": int(health.interval * ns) or ns,
        "Timeout": int(health.timeout * ns) or ns,
        "StartPeriod": int(health.start_grace * ns),
        # checks come at most a second apart while starting: ready soon after it is
        "StartInterval": int(min(health.interval, 1.0) * ns) or ns,
        "Retries": health.retries,
    }


def _restart_kind(service: ServiceSpec) -> str:
    """What the service's restart policy says of an ended replica (none: replaced)."""
    policy = service.restart_policy
    return "always" if policy is None else policy.kind


def _ready_deadline(service: ServiceSpec) -> float:
    """How long a new replica of a rollout has to turn ready before the rollout halts."""
    health = service.health
    if health is None or health.check.type == "none":
        return NO_CHECK_READY + 10.0
    return health.start_grace + health.interval * health.retries + health.timeout + 2.0


def _condition(condition: str, replicas: list[Replica]) -> bool:
    if condition == "started":
        return any(r.state == "running" for r in replicas)
    if condition == "healthy":
        return any(
            r.state == "running" and r.health in ("healthy", "") and r.ready for r in replicas
        )
    if condition == "completed":
        return any(r.state == "exited" and r.exit_code == 0 for r in replicas)
    return any(r.ready and r.aliased for r in replicas)


def _order(spec: DeploymentSpec) -> list[str]:
    """Services in dependency order (the spec's checks refuse cycles)."""
    out: list[str] = []
    seen: set[str] = set()

    def visit(svc: str) -> None:
        if svc in seen or svc not in spec.services:
            return
        seen.add(svc)
        for dep in spec.services[svc].depends:
            visit(dep.service)
        out.append(svc)

    for svc in spec.services:
        visit(svc)
    return out


def _live_aliases(engine: Engine) -> Callable[[str, str, list[str]], None] | None:
    """``Engine.networks.set_aliases`` when the engine has it: a service's name then
    resolves to its ready replicas only; without it, replicas get the name at create."""
    return getattr(engine.networks, "set_aliases", None)
