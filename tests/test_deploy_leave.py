"""Issue 14's follow-ups in the deployment controller, on real containers, networks,
aardvark-dns and health checks: a replica whose check fails leaves its service's name
at once (woken by the engine's ``health_check`` event, not by the controller's next
pass or the check's interval) and comes back as soon as a check passes; the event is
lamina's (``lamina events`` shows it, Docker's API does not); ``restart_policy:
unless_stopped`` keeps a replica the user stopped stopped, across a controller's
restart, until the next deploy or scale of its service, where ``always`` replaces it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deploy_fixtures import Controller, bring_down_and_check, controller, deploy_root, httpd, spec
from dockerapi_fixtures import DockerEndpoint, docker_endpoint
from runtime_fixtures import (
    IMAGE_REF,
    NEEDS_NETAVARK,
    cli_image_root,
    lamina_cli,
    lamina_ok,
    until,
)

from lamina.deploy import Deployments, _controller
from lamina.engine._events import read

__all__ = ["controller", "deploy_root"]

pytestmark = [pytest.mark.timeout(240), NEEDS_NETAVARK]

AT_ONCE = 0.5  # seconds from a check's end to the DNS change it causes (the bound)
POLL = 0.01  # seconds between DNS queries while measuring


def gateway(root: Path, network: str) -> str:
    """The network's aardvark-dns address (its IPv4 gateway)."""
    net = json.loads(lamina_ok(root, "network", "inspect", network))[0]
    return str(next(c["Gateway"] for c in net["IPAM"]["Config"] if "." in c["Gateway"]))


def dns_answer(server: str, name: str) -> set[str] | None:
    """The A records aardvark-dns answers for ``name`` (none: NXDOMAIN); None when it
    did not answer in time."""
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server]
    # short: a query lost while aardvark-dns reloads must not delay the measurement
    resolver.timeout = resolver.lifetime = 0.2
    try:
        return {str(a) for a in resolver.resolve(name, "A")}
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return set()
    except dns.exception.Timeout:
        return None


def resolve(server: str, name: str) -> set[str]:
    """``dns_answer``, asked again while aardvark-dns does not answer in time."""
    deadline = time.monotonic() + 10
    while (answer := dns_answer(server, name)) is None:
        assert time.monotonic() < deadline, f"aardvark-dns at {server} does not answer"
    return answer


def first_time(condition: Callable[[], bool], timeout: float) -> float:
    """When ``condition`` first held (time.time()), polled every POLL seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.time()
        time.sleep(POLL)
    raise AssertionError(f"not within {timeout:g}s")


def rfc3339_seconds(stamp: str) -> float:
    """Go's RFC3339Nano (``2026-12-06T11:50:00.123456789Z``) as seconds since the epoch."""
    import calendar

    whole, _, frac = stamp.rstrip("Z").partition(".")
    secs = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return secs + (int(frac) / 10 ** len(frac) if frac else 0.0)


def health_log(root: Path, container: str) -> list[dict[str, object]]:
    health = json.loads(lamina_ok(root, "inspect", "-f", "{{json .State.Health}}", container))
    return list(health["Log"])


def check_end(root: Path, container: str, failed: bool, after: float) -> float:
    """When the first check of ``container`` that ``failed`` (or passed) and started
    after ``after`` ended."""
    for entry in health_log(root, container):
        start, end = rfc3339_seconds(str(entry["Start"])), rfc3339_seconds(str(entry["End"]))
        if start > after and (entry["ExitCode"] != 0) == failed:
            return end
    raise AssertionError(f"no such check of {container} after {after}")


def test_a_failing_replica_leaves_the_name_at_its_first_failed_check(
    controller: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks 5 s apart, 3 retries; the controller's periodic pass made a minute long:
    only the check's event can explain a change within AT_ONCE of the check."""
    monkeypatch.setattr(_controller, "PASS_INTERVAL", 60.0)
    d, root = controller.d, controller.root
    # healthy within the start period's 1 s start interval, then a check every 5 s
    health = {"start_grace": "60s", "interval": "5s", "retries": 3}
    d.apply(spec("lve", api=httpd("api", scale={"replicas": 2}, health=health)))
    d.wait("lve", timeout=60)
    server = gateway(root, "lve")
    replicas = d.replicas("lve", "api")
    both = {r.address for r in replicas}
    until(lambda: dns_answer(server, "api") == both, timeout=10)
    sick = replicas[0]

    made_sick = time.time()
    lamina_ok(root, "exec", sick.name, "touch", "/tmp/sick")
    # the next check (within 5 s) fails: out of the name at once, well before unhealthy
    left = first_time(lambda: dns_answer(server, "api") == both - {sick.address}, timeout=5 + 3)
    failed = check_end(root, sick.name, failed=True, after=made_sick)
    assert 0 <= left - failed < AT_ONCE, left - failed
    assert resolve(server, "api") == both - {sick.address}
    assert resolve(server, sick.name) == {sick.address}  # its own name stays

    made_well = time.time()
    lamina_ok(root, "exec", sick.name, "rm", "/tmp/sick")
    back = first_time(lambda: dns_answer(server, "api") == both, timeout=5 + 3)
    passed = check_end(root, sick.name, failed=False, after=made_well)
    assert 0 <= back - passed < AT_ONCE, back - passed
    # the same replica: never unhealthy, not replaced
    assert [(r.name, r.address, r.health) for r in d.replicas("lve", "api")] == [
        (r.name, r.address, "healthy") for r in replicas
    ]
    # the events: one at each edge of the failing streak, none per passing check
    checks = [(e.action, e.attributes.get("exitCode")) for e in read(root)
              if e.type == "container" and e.action.startswith("health_check")
              and e.attributes.get("name") == sick.name]  # fmt: skip
    assert checks == [("health_check: failing", "1"), ("health_check: passing", "0")]
    shown = lamina_ok(root, "events", "--since", f"{made_sick:.3f}", "--until", "0s",
                      "--filter", "event=health_check",
                      "--format", "{{.Action}} {{.Actor.Attributes.name}}")  # fmt: skip
    assert shown.splitlines() == [f"health_check: failing {sick.name}",
                                  f"health_check: passing {sick.name}"]  # fmt: skip


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEndpoint]:
    root = cli_image_root(tmp_path_factory, "leave-dockerapi")
    with docker_endpoint(root) as endpoint:
        yield endpoint


def test_docker_clients_do_not_see_lamina_health_check_events(ep: DockerEndpoint) -> None:
    root = ep.daemon.root
    start = time.time()
    cid = ep.docker_ok("run", "-d", "--health-cmd", "test ! -e /tmp/sick",
                       "--health-interval", "0.2s", "--health-retries", "50",
                       IMAGE_REF.removesuffix(":latest"), "sleep", "60").strip()  # fmt: skip

    def actions() -> list[str]:
        return [e.action for e in read(root) if e.actor_id == cid]

    until(lambda: "health_status: healthy" in actions(), timeout=30)
    ep.docker_ok("exec", cid, "touch", "/tmp/sick")
    until(lambda: "health_check: failing" in actions(), timeout=10)
    ep.docker_ok("exec", cid, "rm", "/tmp/sick")
    until(lambda: "health_check: passing" in actions(), timeout=10)
    end = time.time() + 1
    seen = ep.docker_ok("events", "--since", f"{start:.3f}", "--until", f"{end:.3f}",
                        "--filter", f"container={cid}", "--format", "{{.Action}}",
                        timeout=30).splitlines()  # fmt: skip
    assert "health_status: healthy" in seen and "exec_die" in seen
    assert not [a for a in seen if a.startswith("health_check")], seen
    ep.docker_ok("rm", "-f", cid)


def test_unless_stopped_keeps_a_replica_the_user_stopped(controller: Controller) -> None:
    d, root = controller.d, controller.root
    keep = httpd("keep", scale={"mode": "manual"}, restart_policy={"kind": "unless_stopped"})
    s = spec("uls", keep=keep, back=httpd("back", restart_policy={"kind": "always"}))
    d.apply(s)
    d.scale("uls", "keep", 2)
    d.wait("uls", timeout=60)

    def ids(svc: str) -> dict[str, str]:
        """Replica name -> container ID, of the replicas there now (one the controller
        removes between the listing and its inspect is left out)."""
        found = {r.name: lamina_cli(root, "inspect", "-f", "{{.Id}}", r.name)
                 for r in d.replicas("uls", svc)}  # fmt: skip
        return {name: r.stdout.strip() for name, r in found.items() if r.returncode == 0}

    before = {**ids("keep"), **ids("back")}
    lamina_ok(root, "stop", "uls-keep-1")
    lamina_ok(root, "stop", "uls-back-1")
    # always: replaced (a new container, ready)
    until(lambda: ids("back").get("uls-back-1") not in (None, before["uls-back-1"])
          and all(x.ready for x in d.replicas("uls", "back")), timeout=30)  # fmt: skip

    def held(d: Deployments) -> None:
        while d.converge("uls"):  # passes until there is nothing left to do
            pass
        keep = d.status("uls").service("keep")
        assert keep is not None
        assert [(r.name, r.state, r.ready) for r in keep.replicas] == [
            ("uls-keep-1", "exited", False), ("uls-keep-2", "running", True)]  # fmt: skip
        assert ids("keep") == {k: before[k] for k in ("uls-keep-1", "uls-keep-2")}
        assert (keep.ready, keep.completed, keep.rollout) == (1, 1, "complete")
        assert d.status("uls").state == "running"
        server = gateway(root, "uls")
        assert resolve(server, "keep") == {r.address for r in keep.replicas if r.ready}

    held(d)
    # a controller started again (a daemon's restart) keeps it stopped too
    d.close()
    controller.d = d = Deployments(root, say=controller.said.append)
    d.start()
    held(d)
    # the next scale of the service asks for every replica again
    d.scale("uls", "keep", 2)
    until(lambda: len([r for r in d.replicas("uls", "keep") if r.ready]) == 2, timeout=30)
    # and so does the next deploy, once the user stopped one again
    lamina_ok(root, "stop", "uls-keep-2")
    held_two = ids("keep")["uls-keep-2"]
    while d.converge("uls"):
        pass
    assert ids("keep")["uls-keep-2"] == held_two
    assert [r.state for r in d.replicas("uls", "keep")] == ["running", "exited"]
    d.apply(s)
    until(lambda: len([r for r in d.replicas("uls", "keep") if r.ready]) == 2, timeout=30)


def test_a_replica_the_controller_was_removing_is_not_taken_for_a_user_stop(
    deploy_root: Path,
) -> None:
    """unless_stopped: the controller stops an unhealthy replica to replace it and is
    killed (SIGKILL) between the stop and the removal. The next controller replaces
    it: the stop was the controller's (its mark), not the user's."""
    from leak_check import container_traces, kill
    from test_deploy_sigkill import stopped_controller

    root = deploy_root
    s = spec("ulk", web=httpd("web", restart_policy={"kind": "unless_stopped"}))
    c = Controller(root)
    try:
        c.d.apply(s)
        c.d.wait("ulk", timeout=60)
    finally:
        c.close()
    first = lamina_ok(root, "inspect", "-f", "{{.Id}}", "ulk-web-1").strip()
    lamina_ok(root, "exec", "ulk-web-1", "touch", "/tmp/sick")
    until(lambda: lamina_ok(root, "inspect", "-f", "{{.State.Health.Status}}",
                            "ulk-web-1").strip() == "unhealthy", timeout=30)  # fmt: skip
    kill(stopped_controller(root, "deploy:removing", "apply", s.model_dump_json()))
    assert lamina_ok(root, "inspect", "-f", "{{.State.Status}}", "ulk-web-1").strip() == "exited"
    c = Controller(root)
    try:
        until(lambda: [(r.name, r.ready) for r in c.d.replicas("ulk", "web")]
              == [("ulk-web-1", True)], timeout=30)  # fmt: skip
        assert lamina_ok(root, "inspect", "-f", "{{.Id}}", "ulk-web-1").strip() != first
    finally:
        ids = container_traces(root)
        c.close()
        bring_down_and_check(root, ids)


def test_docker_has_no_deployment_or_health_check_events() -> None:
    """What lamina's Docker API leaves out of ``/events`` (its own types and actions)."""
    from lamina.engine._events import Event, docker_sends

    assert docker_sends(Event("container", "health_status: healthy", "c"))
    assert docker_sends(Event("container", "exec_die", "c"))
    assert not docker_sends(Event("container", "health_check: failing", "c"))
    assert not docker_sends(Event("deployment", "create", "shop"))
