"""Rolling updates on real containers: zero failed requests under steady HTTP load,
halts that keep the old replicas serving, a new apply resuming, rolling restarts."""

from __future__ import annotations

import random
import threading
import time

import pytest
from deploy_fixtures import Controller, controller, deploy_root, get, httpd, spec
from runtime_fixtures import IMAGE_REF, lamina_ok, until

from lamina.deploy import DeploymentFailed
from lamina.engine._events import read

__all__ = ["controller", "deploy_root"]


class Load:
    """Steady HTTP requests from the host to the service's ready replicas (as a proxy
    that follows the controller's ready set would send them), counting failures."""

    def __init__(self, controller: Controller, deployment: str, service: str) -> None:
        self.d, self.dep, self.svc = controller.d, deployment, service
        self.ok = 0
        self.failed: list[str] = []
        self.answers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready = [r.address for r in self.d.replicas(self.dep, self.svc) if r.ready]
            if not ready:
                self.failed.append("no ready replica")
                time.sleep(0.05)
                continue
            for _ in range(3):
                address = random.choice(ready)
                try:
                    self.answers.append(get(address, timeout=5))
                    self.ok += 1
                except OSError as e:
                    self.failed.append(f"{address}: {e}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_rolling_update_under_load_fails_no_request(controller: Controller) -> None:
    d, root = controller.d, controller.root
    d.apply(spec("rud", web=httpd("v1", scale={"replicas": 3})))
    before = {r.name: r.spec_hash for r in d.wait("rud", timeout=90).services[0].replicas}
    load = Load(controller, "rud", "web")
    try:
        until(lambda: load.ok > 20, timeout=30)
        plan = d.apply(spec("rud", web=httpd("v2", scale={"replicas": 3})))
        assert plan.lines == ["unchanged network rud", "replace (rolling) service web: 3 replicas"]
        seen: set[int] = set()

        def rolled() -> bool:
            s = d.status("rud").services[0]
            seen.add(len(s.replicas))
            return s.rollout == "complete" and all(r.current for r in s.replicas)

        until(rolled, timeout=120)
        until(lambda: load.answers[-20:] == ["v2"] * 20, timeout=30)
    finally:
        load.stop()
    assert load.failed == [] and load.ok > 100
    assert max(seen) <= 4  # surge 1
    after = d.status("rud").services[0].replicas
    assert len(after) == 3 and all(r.ready for r in after)
    assert not set(before.values()) & {r.spec_hash for r in after}
    assert {get(r.address) for r in after} == {"v2"}
    events = [e for e in read(root) if e.type == "deployment"]
    actions = [(e.action, e.attributes.get("service")) for e in events]
    assert ("update", None) in actions and ("rollout", "web") in actions


def test_a_crashing_new_replica_halts_the_rollout_and_old_ones_keep_serving(
    controller: Controller,
) -> None:
    d, root = controller.d, controller.root
    d.apply(spec("bad", web=httpd("v1", scale={"replicas": 2})))
    d.wait("bad", timeout=60)
    broken = httpd("v2", scale={"replicas": 2}, command={"args": ["echo broken; exit 3"]})
    d.apply(spec("bad", web=broken))
    with pytest.raises(DeploymentFailed, match="halted") as e:
        d.wait("bad", timeout=60)
    line = str(e.value)
    assert "\n" not in line
    assert "web: bad-web-3 never turned healthy: exited with code 3" in line
    status = d.status("bad")
    assert status.state == "halted"
    assert status.services[0].rollout.startswith("halted: bad-web-3 never turned healthy")
    web = status.services[0].replicas
    assert [(r.name, r.current, r.ready) for r in web] == [
        ("bad-web-1", False, True), ("bad-web-2", False, True)]  # fmt: skip
    assert {get(r.address) for r in web} == {"v1"}
    assert any(e.type == "deployment" and e.action == "halt" for e in read(root))
    # a new apply resumes
    d.apply(spec("bad", web=httpd("v3", scale={"replicas": 2})))
    fixed = d.wait("bad", timeout=120).services[0].replicas
    assert len(fixed) == 2 and {get(r.address) for r in fixed} == {"v3"}


def test_a_never_healthy_new_replica_halts_at_its_deadline(controller: Controller) -> None:
    d = controller.d
    d.apply(spec("sick", web=httpd("v1")))
    d.wait("sick", timeout=60)
    # serves on another port than its check asks: running, never healthy
    wrong = httpd("v2", command={"args": ["exec httpd -f -p 9999 -h /"]})
    started = time.monotonic()
    d.apply(spec("sick", web=wrong))
    with pytest.raises(DeploymentFailed, match="sick-web-2 never turned healthy: "):
        d.wait("sick", timeout=60)
    assert time.monotonic() - started < 30
    web = d.status("sick").services[0].replicas
    assert [(r.name, r.current) for r in web] == [("sick-web-1", False)]
    assert get(web[0].address) == "v1"


def test_rolling_restart_replaces_every_replica(controller: Controller) -> None:
    d = controller.d
    d.apply(spec("rrs", web=httpd("v1", scale={"replicas": 2})))
    first = {r.address: r.spec_hash for r in d.wait("rrs", timeout=60).services[0].replicas}
    d.restart("rrs", "web")
    after = d.wait("rrs", timeout=90).services[0].replicas
    assert len(after) == 2 and not {r.spec_hash for r in after} & set(first.values())
    assert {get(r.address) for r in after} == {"v1"}


def test_a_new_image_under_the_same_name_rolls_out(controller: Controller) -> None:
    d, root = controller.d, controller.root
    lamina_ok(root, "tag", IMAGE_REF, "example.com/test/app:1")
    app = httpd("v1", scale={"replicas": 2}, image={"name": "example.com/test/app:1"})
    d.apply(spec("img", web=app))
    d.wait("img", timeout=60)
    old_image = lamina_ok(root, "inspect", "-f", "{{.Image}}", "img-web-1").strip()
    # the tag moves to another image (what a pull of a new digest does)
    lamina_ok(root, "run", "--name", "img-build", IMAGE_REF, "touch", "/new")
    lamina_ok(root, "commit", "img-build", "example.com/test/app:1")
    lamina_ok(root, "rm", "img-build")
    plan = d.apply(spec("img", web=app))
    assert "replace (rolling) service web: 2 replicas" in plan.lines
    web = d.wait("img", timeout=90).services[0].replicas
    images = {lamina_ok(root, "inspect", "-f", "{{.Image}}", r.name).strip() for r in web}
    assert len(web) == 2 and len(images) == 1 and old_image not in images
    assert lamina_ok(root, "exec", web[0].name, "ls", "/new").strip() == "/new"
