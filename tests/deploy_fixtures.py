"""Helpers of the deployment tests: specs of busybox services, a started controller on
a root holding the busybox image, and what must be left once deployments are down."""

from __future__ import annotations

import copy
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from leak_check import assert_clean, container_traces
from runtime_fixtures import IMAGE_REF, cli_image_root, lamina_cli, remove_all_containers

from lamina.deploy import Deployments
from lamina.deploy._model import DeploymentSpec

PORT = 8080


def httpd(text: str = "v1", *, port: int = PORT, **over: Any) -> dict[str, Any]:
    """A service serving ``text`` at / with busybox httpd, healthy when / answers."""
    service: dict[str, Any] = {
        "image": {"name": IMAGE_REF, "pull_policy": "never"},
        "command": {
            "entrypoint": ["/bin/sh", "-c"],
            "args": [
                f"mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p {port} -h /www"
            ],
        },
        "scale": {"mode": "fixed", "replicas": 1},
        "health": {
            "start_grace": "0s",
            "interval": "0.3s",
            "timeout": "2s",
            "retries": 2,
            "check": {
                "type": "command",
                "command": f"test ! -e /tmp/sick && wget -q -O /dev/null http://127.0.0.1:{port}/",
            },
        },
        "stop_grace_period": "1s",
    }
    if "scale" in over:  # replaced, not merged: each mode has its own keys
        service["scale"] = {"mode": "fixed", **over.pop("scale")}
    return merge(service, over)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def spec(name: str, **services: dict[str, Any]) -> DeploymentSpec:
    data = {"version": "v1", "deployment": name, "services": services}
    return DeploymentSpec.model_validate(data)


def get(address: str, port: int = PORT, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}/", timeout=timeout) as r:
        return str(r.read().decode().strip())


SEEN: dict[Path, set[str]] = {}  # per root: the containers its tests made


@pytest.fixture(scope="module")
def deploy_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root with the busybox image; at the module's end, after every test brought its
    deployments down, nothing of any of them may be left (``assert_clean``: mounts,
    cgroups, processes, network namespaces, bridges, rules, leases)."""
    root = cli_image_root(tmp_path_factory, "deploy")
    SEEN[root] = set()
    yield root
    try:
        assert_clean(root, SEEN.pop(root) | container_traces(root))
    finally:
        remove_all_containers(root)
        lamina_cli(root, "network", "prune", "-f")


class Controller:
    """A started ``Deployments`` (what the daemon runs), its lines collected."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.said: list[str] = []
        self.d = Deployments(root, say=self.said.append)
        self.d.start()

    def close(self) -> None:
        self.d.close()


def bring_down_and_check(root: Path, ids: set[str], *, full: bool = False) -> None:
    """Every deployment of ``root`` brought down by a new controller: no container, no
    network of theirs, no desired state left; with ``full`` (else at the module's end)
    nothing at all (``assert_clean``)."""
    SEEN.setdefault(root, set()).update(ids)
    c = Controller(root)
    try:
        for status in c.d.list():
            c.d.down(status.name, volumes=True)
    finally:
        c.close()
    assert lamina_cli(root, "ps", "-a", "-q").stdout.split() == []
    assert list((root / "deployments").glob("*/")) == []
    nets = lamina_cli(root, "network", "ls", "--filter", "label=lamina.deployment", "-q")
    assert nets.stdout.split() == []
    if full:
        assert_clean(root, ids | container_traces(root))


@pytest.fixture
def controller(deploy_root: Path) -> Iterator[Controller]:
    """A started controller; after the test, ``bring_down_and_check``."""
    c = Controller(deploy_root)
    try:
        yield c
    finally:
        ids = container_traces(deploy_root)
        c.close()
        bring_down_and_check(deploy_root, ids)
