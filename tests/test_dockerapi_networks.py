"""Docker's network and volume endpoints, driven by the installed docker CLI: what a
user of ``docker network`` and ``docker volume`` sees, and what the engine then holds
(lamina's own CLI on the same root)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerapi_fixtures import DockerEndpoint, docker_endpoint
from runtime_fixtures import lamina_ok


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEndpoint]:
    with docker_endpoint(tmp_path_factory.mktemp("dockernet") / "root") as endpoint:
        yield endpoint


def test_network_create_inspect_list_remove(ep: DockerEndpoint) -> None:
    root = ep.daemon.root
    net_id = ep.docker_ok(
        "network", "create", "--subnet", "10.231.0.0/24", "--gateway", "10.231.0.254",
        "--ip-range", "10.231.0.128/25", "--internal", "--label", "tier=back",
        "--label", "com.docker.compose.project=p1", "-o", "com.docker.network.driver.mtu=1400",
        "backnet",
    ).strip()  # fmt: skip
    assert len(net_id) == 64
    shown = json.loads(ep.docker_ok("network", "inspect", "backnet"))[0]
    assert shown["Id"] == net_id and shown["Name"] == "backnet" and shown["Driver"] == "bridge"
    assert shown["Internal"] is True
    assert shown["IPAM"]["Config"] == [
        {"Subnet": "10.231.0.0/24", "Gateway": "10.231.0.254", "IPRange": "10.231.0.128/25"}
    ]
    assert shown["Labels"] == {"tier": "back", "com.docker.compose.project": "p1"}
    assert shown["Options"]["com.docker.network.driver.mtu"] == "1400"
    # The engine holds the same network: lamina's CLI sees it.
    assert "backnet" in lamina_ok(root, "network", "ls")
    # A second create of the name is Docker's conflict.
    r = ep.docker("network", "create", "backnet")
    assert r.returncode != 0 and "already exists" in r.stderr
    ep.docker_ok("network", "create", "frontnet", "--label", "tier=front")

    def names(*filters: str) -> list[str]:
        args = [a for f in filters for a in ("--filter", f)]
        return sorted(ep.docker_ok("network", "ls", *args, "--format", "{{.Name}}").split())

    # Docker's default network is called bridge; label filters are exact.
    assert names() == ["backnet", "bridge", "frontnet"]
    assert names("label=tier=back") == ["backnet"]
    assert names("label=tier") == ["backnet", "frontnet"]
    assert names("label=tier=bac") == []
    assert names("label=com.docker.compose.project=p1") == ["backnet"]
    assert names("name=front") == ["frontnet"]
    assert names(f"id={net_id[:12]}") == ["backnet"]
    assert names("type=custom") == ["backnet", "frontnet"]
    assert names("driver=bridge") == ["backnet", "bridge", "frontnet"]
    default = json.loads(ep.docker_ok("network", "inspect", "bridge"))[0]
    assert default["Name"] == "bridge" and default["Driver"] == "bridge"
    # Bad input: Docker's errors, one line each.
    r = ep.docker("network", "create", "-d", "overlay", "ovl")
    assert r.returncode != 0 and "not supported" in r.stderr
    r = ep.docker("network", "create", "--aux-address", "a=10.232.0.5", "--subnet",
                  "10.232.0.0/24", "auxnet")  # fmt: skip
    assert r.returncode != 0 and "AuxiliaryAddresses" in r.stderr
    r = ep.docker("network", "rm", "bridge")
    assert r.returncode != 0 and "pre-defined" in r.stderr
    r = ep.docker("network", "inspect", "nosuchnet")
    assert r.returncode != 0 and "nosuchnet" in r.stderr
    ep.docker_ok("network", "rm", "backnet")
    assert ep.docker_ok("network", "prune", "-f").split()[-1] == "frontnet"
    assert names() == ["bridge"]
    assert "backnet" not in lamina_ok(root, "network", "ls")


def test_network_connect_disconnect(ep: DockerEndpoint) -> None:
    """A created container joins a network with an alias and a static address through
    the Docker API; lamina's record of it says so; disconnect takes it out."""
    root = ep.daemon.root
    from runtime_fixtures import import_busybox

    image = import_busybox(root, root.parent / "scratch-connect")
    ep.docker_ok("network", "create", "--subnet", "10.233.0.0/24", "joinnet")
    cid = lamina_ok(root, "create", "--name", "joiner", image, "true").strip()
    ep.docker_ok("network", "connect", "--alias", "db", "--ip", "10.233.0.7", "joinnet", "joiner")
    shown = json.loads(ep.docker_ok("network", "inspect", "joinnet"))[0]
    assert shown["Containers"][cid]["Name"] == "joiner"
    assert shown["Containers"][cid]["IPv4Address"] == "10.233.0.7/24"
    settings = json.loads(lamina_ok(root, "inspect", "joiner"))[0]["NetworkSettings"]["Networks"]
    assert "db" in settings["joinnet"]["Aliases"]
    r = ep.docker("network", "rm", "joinnet")
    assert r.returncode != 0 and "active endpoints" in r.stderr
    r = ep.docker("network", "connect", "joinnet", "nosuchcontainer")
    assert r.returncode != 0 and "nosuchcontainer" in r.stderr
    ep.docker_ok("network", "disconnect", "joinnet", "joiner")
    assert json.loads(ep.docker_ok("network", "inspect", "joinnet"))[0]["Containers"] == {}
    lamina_ok(root, "rm", "joiner")
    ep.docker_ok("network", "rm", "joinnet")


def test_volumes(ep: DockerEndpoint) -> None:
    root = ep.daemon.root
    assert ep.docker_ok("volume", "create", "--label", "app=web", "data1").strip() == "data1"
    ep.docker_ok("volume", "create", "--label", "app=webdb", "data2")
    anon = ep.docker_ok("volume", "create").strip()
    shown = json.loads(ep.docker_ok("volume", "inspect", "data1"))[0]
    assert shown["Name"] == "data1" and shown["Driver"] == "local"
    assert shown["Labels"] == {"app": "web"} and shown["Scope"] == "local"
    assert Path(shown["Mountpoint"]).is_dir()
    assert "data1" in lamina_ok(root, "volume", "ls")

    def names(*filters: str) -> list[str]:
        args = [a for f in filters for a in ("--filter", f)]
        return sorted(ep.docker_ok("volume", "ls", "-q", *args).split())

    assert names() == sorted(["data1", "data2", anon])
    assert names("label=app=web") == ["data1"]
    assert names("label=app") == ["data1", "data2"]
    assert names("name=data") == ["data1", "data2"]
    assert names("dangling=true") == sorted(["data1", "data2", anon])
    assert names("driver=local") == sorted(["data1", "data2", anon])
    r = ep.docker("volume", "create", "-d", "nfs", "x")
    assert r.returncode != 0 and "not supported" in r.stderr
    r = ep.docker("volume", "create", "-o", "type=tmpfs", "y")
    assert r.returncode != 0 and "DriverOpts" in r.stderr
    r = ep.docker("volume", "inspect", "nosuchvol")
    assert r.returncode != 0 and "nosuchvol" in r.stderr
    # A volume in use is not removed, even with force.
    from runtime_fixtures import import_busybox

    image = import_busybox(root, root.parent / "scratch-vol")
    lamina_ok(root, "create", "--name", "voluser", "-v", "data2:/data", image, "true")
    r = ep.docker("volume", "rm", "-f", "data2")
    assert r.returncode != 0 and "in use" in r.stderr
    assert names("dangling=false") == ["data2"]
    # prune: unused volumes only; named ones only with --all (API >= 1.42).
    ep.docker_ok("volume", "prune", "-f", "--filter", "label=app=web")
    assert names() == sorted(["data1", "data2", anon])
    ep.docker_ok("volume", "prune", "-f", "--all", "--filter", "label=app=web")
    assert names() == sorted(["data2", anon])
    ep.docker_ok("volume", "rm", anon)
    lamina_ok(root, "rm", "voluser")
    ep.docker_ok("volume", "rm", "data2")
    assert names() == []
    ep.docker_ok("volume", "rm", "-f", "nosuchvol")
