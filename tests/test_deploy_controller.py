"""The deployment controller on real containers, networks and health checks: services
in dependency order, DNS of ready replicas, scaling, down, dependency timeouts."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_fixtures import Controller, controller, deploy_root, get, httpd, spec
from leak_check import assert_clean, container_traces
from runtime_fixtures import CLI, IMAGE_REF, lamina_cli, lamina_ok, until

from lamina.deploy._model import DeploymentSpec
from lamina.deploy._spec import InvalidSpec
from lamina.engine._events import read
from lamina.errors import NotFound

__all__ = ["controller", "deploy_root"]


def _events(root: Path, type: str) -> list[tuple[str, str, dict[str, str]]]:
    return [(e.action, e.actor_id, dict(e.attributes)) for e in read(root) if e.type == type]


def _when(root: Path, action: str, container: str) -> int:
    """When the journal says ``container`` first did ``action`` (ns)."""
    return next(e.time_nano for e in read(root) if e.type == "container"
                and e.action == action and e.attributes.get("name") == container)  # fmt: skip


def test_three_services_start_in_dependency_order(controller: Controller) -> None:
    d, root = controller.d, controller.root
    s = spec(
        "shop",
        web=httpd("web", depends=[{"service": "api", "condition": "ready", "timeout": "60s"}]),
        api=httpd("api", scale={"replicas": 2},
                  depends=[{"service": "db", "condition": "healthy", "timeout": "60s"}]),
        db=httpd("db"),
    )  # fmt: skip
    plan = d.apply(s)
    assert "create network shop" in plan.lines
    assert "create service api: 2 replicas" in plan.lines
    status = d.wait("shop", timeout=90)
    assert status.state == "running"
    assert {(x.name, x.desired, x.ready, x.health, x.rollout) for x in status.services} == {
        ("web", 1, 1, "healthy", "complete"),
        ("api", 2, 2, "healthy", "complete"),
        ("db", 1, 1, "healthy", "complete"),
    }
    api = status.service("api")
    assert api is not None
    assert [r.name for r in api.replicas] == ["shop-api-1", "shop-api-2"]
    for r in api.replicas:
        assert get(r.address) == "api"
    # created after what they depend on was healthy (api) or ready (web)
    events = [(a, attrs.get("name", ""), attrs.get("health_status", ""))
              for a, _i, attrs in _events(root, "container")]  # fmt: skip
    order = [(a.split(":")[0], n) for a, n, _h in events
             if a == "create" or a.startswith("health_status: healthy")]  # fmt: skip
    assert order.index(("health_status", "shop-db-1")) < order.index(("create", "shop-api-1"))
    first_api_healthy = min(order.index(("health_status", f"shop-api-{n}")) for n in (1, 2))
    assert first_api_healthy < order.index(("create", "shop-web-1"))
    # labels name the deployment and the service; the network is the deployment's
    labels = lamina_ok(root, "inspect", "-f", "{{json .Config.Labels}}", "shop-api-2")
    for pair in ('"lamina.deployment":"shop"', '"lamina.service":"api"', '"lamina.replica":"2"'):
        assert pair in labels
    nets = lamina_ok(root, "network", "ls", "--filter", "label=lamina.deployment=shop",
                     "--format", "{{.Name}}")  # fmt: skip
    assert nets.split() == ["shop"]
    assert ("create", "shop") in [(a, i) for a, i, _ in _events(root, "deployment")]
    # what another apply would do, said and not done
    plan = d.plan(spec("shop", web=httpd("web2"), db=httpd("db"), cache=httpd("cache")))
    assert plan.lines == [
        "unchanged network shop",
        "replace (rolling) service web: 1 replicas",
        "unchanged service db: 1 replicas",
        "create service cache: 1 replicas",
        "remove service api",
    ]
    assert d.status("shop").state == "running" and len(lamina_ok(root, "ps", "-q").split()) == 4


def test_a_service_name_resolves_to_ready_replicas_only(controller: Controller) -> None:
    d, root = controller.d, controller.root
    d.apply(spec("dns", api=httpd("api", scale={"replicas": 2}), client=httpd("client")))
    d.wait("dns", timeout=90)

    def resolved() -> set[str]:
        out = lamina_cli(root, "exec", "dns-client-1", "nslookup", "api").stdout  # NXDOMAIN: 1
        answer = out.split("Name:", 1)[-1] if "Name:" in out else ""
        return {line.split()[-1] for line in answer.splitlines() if line.startswith("Address")}

    def ready() -> set[str]:
        return {r.address for r in d.replicas("dns", "api") if r.ready}

    until(lambda: resolved() == ready() and len(ready()) == 2, timeout=30)
    own = lamina_ok(root, "exec", "dns-client-1", "nslookup", "dns-api-2")
    assert next(r.address for r in d.replicas("dns", "api") if r.name == "dns-api-2") in own
    sick = next(r for r in d.replicas("dns", "api") if r.name == "dns-api-1")
    lamina_ok(root, "exec", "dns-api-1", "touch", "/tmp/sick")
    # out of the name at its first failed check (well before it is replaced)
    until(lambda: sick.address not in resolved() and resolved() == ready(), timeout=10)
    # then replaced by a new healthy dns-api-1, which the name resolves to again
    until(lambda: len(ready()) == 2 and resolved() == ready(), timeout=60)


def test_scale_up_and_down(controller: Controller) -> None:
    d, root = controller.d, controller.root
    d.apply(spec("scl", web=httpd("web", scale={"mode": "manual"})))
    assert [r.name for r in d.wait("scl", timeout=60).services[0].replicas] == ["scl-web-1"]
    d.scale("scl", "web", 4)
    status = d.wait("scl", timeout=90)
    assert [r.name for r in status.services[0].replicas] == [f"scl-web-{n}" for n in (1, 2, 3, 4)]
    assert all(r.ready for r in status.services[0].replicas)
    d.scale("scl", "web", 2)
    status = d.wait("scl", timeout=60)
    assert [r.name for r in status.services[0].replicas] == ["scl-web-1", "scl-web-2"]
    names = lamina_ok(root, "ps", "-a", "--format", "{{.Names}}").split()
    assert names == ["scl-web-2", "scl-web-1"]
    scaled = [attrs for a, _i, attrs in _events(root, "deployment") if a == "scale"]
    assert [x.get("replicas") for x in scaled][-2:] == ["4", "2"]
    with pytest.raises(Exception, match="fixed scale"):
        d.apply(spec("sc2", web=httpd("web")))
        d.scale("sc2", "web", 3)


def test_down_removes_everything_and_is_repeatable(controller: Controller) -> None:
    d, root = controller.d, controller.root
    d.apply(spec("gone", web=httpd("web", storage=[{"type": "named", "name": "data",
                                                       "target": "/data"}])))  # fmt: skip
    d.wait("gone", timeout=60)
    assert "gone_data" in lamina_ok(root, "volume", "ls", "-q").split()
    ids = container_traces(root)
    removed = d.down("gone", volumes=True)
    assert "gone-web-1" in removed and "network gone" in removed and "volume gone_data" in removed
    assert lamina_ok(root, "ps", "-a", "-q") == ""
    assert "gone_data" not in lamina_ok(root, "volume", "ls", "-q").split()
    assert "gone" not in lamina_ok(root, "network", "ls", "--format", "{{.Name}}").split()
    with pytest.raises(Exception, match="no such deployment"):
        d.down("gone")
    assert [a for a, i, _ in _events(root, "deployment") if i == "gone"][-1] == "remove"
    assert_clean(root, ids)  # no mount, cgroup, process, netns, bridge, rule, lease


def test_dependency_timeout_fails_the_deployment_with_one_line(controller: Controller) -> None:
    d = controller.d
    never = httpd("db", health={"check": {"command": "false"}})
    dep = {"service": "db", "condition": "healthy", "timeout": "2s", "on_timeout": "fail"}
    d.apply(spec("dep", db=never, web=httpd("web", depends=[dep])))
    with pytest.raises(Exception, match="failed: service web: db not healthy after 2s"):
        d.wait("dep", timeout=60)
    status = d.status("dep")
    assert status.state == "failed" and "\n" not in status.message
    assert status.service("web").replicas == []  # type: ignore[union-attr]


def test_jobs_run_on_demand_and_cron_on_schedule(controller: Controller) -> None:
    d = controller.d
    job = {"rtype": "job", "image": {"name": IMAGE_REF, "pull_policy": "never"},
           "command": {"args": ["sh", "-c", "echo done"]}}  # fmt: skip
    cron = {**job, "rtype": "cron", "schedule": "* * * * * *"}  # every second
    d.apply(spec("job", web=httpd("web"), once=job, tick=cron))
    status = d.wait("job", timeout=60)
    assert status.service("once").replicas == []  # type: ignore[union-attr]
    assert [r.service for r in d.jobs("job", "once")] == []  # not started by deploy
    run = d.run_job("job", "once")
    assert run.container == "job-once-job-1"
    until(lambda: d.jobs("job", "once")[0].status == "succeeded", timeout=30)
    until(lambda: len(d.jobs("job", "tick")) >= 2, timeout=30)
    assert all(r.container.startswith("job-tick-job-") for r in d.jobs("job", "tick"))
    with pytest.raises(Exception, match="not a job"):
        d.run_job("job", "web")


def test_init_steps_run_before_a_replica_is_ready(controller: Controller) -> None:
    d, root = controller.d, controller.root
    steps = [{"id": "db-up", "uses": "init.wait_http", "with": {"url": "http://db:8080/"}},
             {"id": "mark", "uses": "init.run", "with": {"command": "echo ran"}}]  # fmt: skip
    d.apply(spec("ini", db=httpd("db"), web=httpd("web", init={"steps": steps})))
    status = d.wait("ini", timeout=90)
    assert status.service("web").ready == 1  # type: ignore[union-attr]
    assert (root / "deployments" / "ini" / "init").is_dir()
    # a failing step (on_failure fail) keeps the replica from ever serving
    bad = [{"id": "nope", "uses": "init.run", "with": {"command": "exit 4"}}]
    d.apply(spec("ini", db=httpd("db"), web=httpd("web2", init={"steps": bad})))
    with pytest.raises(Exception, match=r"ini-web-2 never turned healthy: .*nope"):
        d.wait("ini", timeout=90)
    assert [r.name for r in d.replicas("ini", "web")] == ["ini-web-1"]


def test_adaptive_scale_follows_cpu_load(controller: Controller) -> None:
    d, root = controller.d, controller.root
    web = httpd("web", scale={"mode": "adaptive", "min": 1, "max": 2, "cooldown": "1s",
                              "targets": {"cpu": 50}}, resources={"cpu": 0.2})  # fmt: skip
    d.apply(spec("asc", web=web))
    d.wait("asc", timeout=60)
    loop = "while [ ! -e /tmp/stop ]; do :; done"
    busy = subprocess.Popen(  # generated load: a busy loop in the replica
        [*CLI, "--root", str(root), "exec", "asc-web-1", "sh", "-c", loop],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        until(lambda: len(d.replicas("asc", "web")) == 2, timeout=60)
    finally:
        busy.kill()
        busy.wait()
        lamina_ok(root, "exec", "asc-web-1", "touch", "/tmp/stop")
    until(lambda: len(d.replicas("asc", "web")) == 1, timeout=60)
    scaled = [e.attributes.get("replicas") for e in read(root) if e.type == "deployment"
              and e.action == "scale" and e.actor_id == "asc"]  # fmt: skip
    assert scaled[-2:] == ["2", "1"]


def test_a_dead_replica_is_replaced_and_a_crash_loop_backs_off(controller: Controller) -> None:
    d, root = controller.d, controller.root
    d.apply(spec("crl", web=httpd("web", scale={"replicas": 2})))
    d.wait("crl", timeout=60)
    first = lamina_ok(root, "inspect", "-f", "{{.Id}}", "crl-web-1").strip()
    lamina_ok(root, "kill", "crl-web-1")

    def replaced() -> bool:
        now = lamina_cli(root, "inspect", "-f", "{{.Id}}", "crl-web-1").stdout.strip()
        return now not in ("", first) and all(r.ready for r in d.replicas("crl", "web"))

    until(replaced, timeout=10)
    assert [r.name for r in d.replicas("crl", "web")] == ["crl-web-1", "crl-web-2"]
    assert "crl-web-1 exited with code 137" in d.status("crl").services[0].last_error
    # a replica that always exits is made again after 0, 0.5, 1, 2 s ... (not in a spin)
    crash = {"image": {"name": IMAGE_REF, "pull_policy": "never"},
             "command": {"args": ["sh", "-c", "exit 7"]}}  # fmt: skip
    d.apply(spec("crl", web=httpd("web", scale={"replicas": 2}), crash=crash))

    def creates() -> list[float]:
        return [e.time_nano / 1e9 for e in read(root) if e.type == "container"
                and e.action == "create" and e.attributes.get("name") == "crl-crash-1"]  # fmt: skip

    until(lambda: len(creates()) >= 5, timeout=30)
    gaps = [b - a for a, b in itertools.pairwise(creates())]
    assert min(gaps) > 0.1 and gaps[-1] > 1.5 and gaps[-1] > 2 * gaps[0], gaps
    crashed = d.status("crl").service("crash")
    assert crashed is not None and crashed.last_error.startswith("crl-crash-1 exited with code 7")


def test_a_service_that_runs_to_completion_stays_done(controller: Controller) -> None:
    """restart_policy no (Compose's ``restart: "no"``): its replica ends and is kept, and
    ``depends`` on it ``completed`` (Compose's service_completed_successfully) holds."""
    d, root = controller.d, controller.root
    migrate = {"image": {"name": IMAGE_REF, "pull_policy": "never"},
               "command": {"args": ["sh", "-c", "sleep 0.5"]}, "restart_policy": {"kind": "no"},
               "scale": {"mode": "fixed", "replicas": 1}}  # fmt: skip
    dep = {"service": "migrate", "condition": "completed", "timeout": "30s"}
    d.apply(spec("run", migrate=migrate, web=httpd("web", depends=[dep])))
    status = d.wait("run", timeout=60)
    done = status.service("migrate")
    assert done is not None and (done.completed, done.ready, done.rollout) == (1, 0, "complete")
    assert [r.state for r in done.replicas] == ["exited"]
    creates = [e for e in read(root) if e.type == "container" and e.action == "create"
               and e.attributes.get("lamina.service") == "migrate"]  # fmt: skip
    assert len(creates) == 1  # not replaced
    assert _when(root, "die", "run-migrate-1") < _when(root, "create", "run-web-1")


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None
    or not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")),
    reason="needs qemu-system-x86 and linux-image-cloud-amd64",
)
def test_a_service_in_micro_vms(controller: Controller) -> None:
    d, root = controller.d, controller.root
    d.apply(spec("vms", web=httpd("in a vm", isolation="vm", scale={"replicas": 1},
                                 health={"start_grace": "60s"})))  # fmt: skip
    status = d.wait("vms", timeout=180)
    web = status.services[0].replicas
    assert [(r.name, r.health, r.ready) for r in web] == [("vms-web-1", "healthy", True)]
    assert get(web[0].address) == "in a vm"
    assert lamina_ok(root, "inspect", "-f", "{{.Isolation}}", "vms-web-1").strip() == "vm"


def test_hostile_names_and_specs_are_refused(controller: Controller) -> None:
    d, root = controller.d, controller.root
    for name in ("../../etc", "/tmp/x", "a", "UPPER"):
        with pytest.raises(NotFound, match="no such deployment"):
            d.status(name)
        with pytest.raises(NotFound):
            d.down(name)
    bad = DeploymentSpec.model_validate({"deployment": "../x"})  # as a client may send it
    with pytest.raises(InvalidSpec, match="not a valid deployment name"):
        d.apply(bad)
    cyclic = spec("cyc", a=httpd("a", depends=[{"service": "b"}]),
                  b=httpd("b", depends=[{"service": "a"}]))  # fmt: skip
    with pytest.raises(InvalidSpec, match="dependency cycle"):
        d.apply(cyclic)
    assert d.list() == [] and not (root / "x").exists()
