"""The controller killed (SIGKILL) at named points of a deploy, a rollout and a down,
then started again: exactly the desired replicas run, none twice, nothing orphaned."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_fixtures import Controller, bring_down_and_check, deploy_root, get, httpd, spec
from leak_check import container_traces, kill, pid_stopped
from runtime_fixtures import lamina_ok, until

from lamina.deploy._model import DeploymentSpec

__all__ = ["deploy_root"]

# A controller in a process of its own (what the daemon runs), told one thing to do.
SCRIPT = """
import sys, time
from lamina.deploy import Deployments
from lamina.deploy._model import DeploymentSpec
d = Deployments(sys.argv[1], say=lambda line: None)
d.start()
if sys.argv[2] == "apply":
    d.apply(DeploymentSpec.model_validate_json(sys.argv[3]))
else:
    d.down(sys.argv[3])
time.sleep(300)
"""


def stopped_controller(root: Path, point: str, action: str, arg: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(root), action, arg],
        env={**__import__("os").environ, "LAMINA_TEST_STOP_AT": point},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def stopped() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"controller ended before {point}: {proc.communicate()[1]!r}")
        return pid_stopped(proc.pid)

    until(stopped, timeout=60)
    return proc


def names(root: Path) -> list[str]:
    return sorted(lamina_ok(root, "ps", "-a", "--format", "{{.Names}}").split())


@pytest.fixture
def root(deploy_root: Path) -> Iterator[Path]:
    yield deploy_root
    bring_down_and_check(deploy_root, container_traces(deploy_root), full=True)


def _shop(text: str) -> DeploymentSpec:
    return spec("kdp", web=httpd(text, scale={"replicas": 2}), db=httpd("db"))


def _deployed(root: Path) -> None:
    """``_shop("v1")`` deployed by a controller that is then closed."""
    c = Controller(root)
    try:
        c.d.apply(_shop("v1"))
        c.d.wait("kdp", timeout=90)
    finally:
        c.close()


@pytest.mark.parametrize("point", ["deploy:applied", "deploy:created"])
def test_killed_mid_deploy(root: Path, point: str) -> None:
    proc = stopped_controller(root, point, "apply", _shop("v1").model_dump_json())
    kill(proc)
    if point == "deploy:created":  # a replica made, never started
        assert len(names(root)) == 1
    c = Controller(root)
    try:
        status = c.d.wait("kdp", timeout=90)
    finally:
        c.close()
    assert names(root) == ["kdp-db-1", "kdp-web-1", "kdp-web-2"]
    assert all(r.ready for s in status.services for r in s.replicas)


@pytest.mark.parametrize("point", ["deploy:created", "deploy:removing"])
def test_killed_mid_rollout(root: Path, point: str) -> None:
    _deployed(root)
    proc = stopped_controller(root, point, "apply", _shop("v2").model_dump_json())
    kill(proc)
    if point == "deploy:created":
        assert "kdp-web-3" in names(root)  # the surge replica, created, not started
    c = Controller(root)
    try:
        status = c.d.wait("kdp", timeout=120)
    finally:
        c.close()
    web = status.service("web")
    assert web is not None and web.rollout == "complete"
    assert len(web.replicas) == 2 and all(r.current and r.ready for r in web.replicas)
    assert {get(r.address) for r in web.replicas} == {"v2"}
    assert len(names(root)) == 3 and len(set(names(root))) == 3


def test_killed_mid_down(root: Path) -> None:
    _deployed(root)
    proc = stopped_controller(root, "deploy:removed", "down", "kdp")
    kill(proc)
    assert len(names(root)) < 3  # one removed at least; the network, the state not yet
    assert (root / "deployments" / "kdp").is_dir()
    c = Controller(root)
    try:
        until(lambda: c.d.list() == [], timeout=60)
    finally:
        c.close()
    assert names(root) == []
    assert "kdp" not in lamina_ok(root, "network", "ls", "--format", "{{.Name}}").split()
