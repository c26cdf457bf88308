"""Registry mirrors (dockerd's ``registry-mirrors``): pulls of docker.io names try a
local docker-registry standing as the mirror first. This machine reaches no public
registry, so a pull that succeeds came from the mirror."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from registry_server import RegistryServer, TestImage, skopeo
from runtime_fixtures import error_line, lamina_cli, lamina_ok


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, busybox_image: TestImage) -> RegistryServer:
    """The session's registry holding ``library/busybox:latest`` as a Hub mirror would."""
    from registry_server import start_registry

    server = start_registry(tmp_path_factory.mktemp("mirror"))
    layout = busybox_image.write_oci_layout(tmp_path_factory.mktemp("layout"), "latest")
    res = skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
                 f"docker://{server.host}/library/busybox:latest")  # fmt: skip
    assert res.returncode == 0, res.stderr
    yield server  # type: ignore[misc]
    server.stop()


def _config(path: Path, *mirrors: str) -> dict[str, str]:
    path.write_text(json.dumps({"registry_mirrors": list(mirrors)}))
    return {"LAMINA_REGISTRIES_CONFIG": str(path)}


def test_lamina_pull_uses_the_configured_mirror(tmp_path: Path, mirror: RegistryServer,
                                                busybox_image: TestImage) -> None:  # fmt: skip
    root = tmp_path / "root"
    env = _config(tmp_path / "registries.json", f"http://{mirror.host}")
    before = mirror.requests_logged("GET", "/v2/library/busybox/manifests/latest")
    r = lamina_cli(root, "pull", "busybox", env=env)
    assert r.returncode == 0, r.stderr
    assert mirror.requests_logged("GET", "/v2/library/busybox/manifests/latest") > before
    shown = json.loads(lamina_ok(root, "image", "inspect", "busybox"))[0]
    assert shown["RepoTags"] == ["busybox:latest"]
    assert any(d.endswith(busybox_image.target) for d in shown["RepoDigests"])
    # A name the mirror does not hold: the mirror was tried, then Docker Hub (which
    # this machine cannot reach); the error says both.
    r = lamina_cli(root, "pull", "alpine:3.19", env=env)
    line = error_line(r.stderr)
    assert r.returncode != 0 and f"registry mirror {mirror.host}" in line
    # Names of other registries never go to the mirror.
    before = mirror.requests_logged("GET", "/v2/")
    r = lamina_cli(root, "pull", "127.0.0.1:1/other/thing:1", env=env)
    assert r.returncode != 0 and "registry mirror" not in r.stderr
    # A bad mirror in the config is one error line.
    bad = _config(tmp_path / "bad.json", "ftp://mirror")
    r = lamina_cli(root, "pull", "busybox:1", env=bad)
    assert "invalid registry mirror 'ftp://mirror'" in error_line(r.stderr)


def test_daemon_registry_mirror_flag(tmp_path: Path, mirror: RegistryServer) -> None:
    """``lamina daemon --registry-mirror URL``: the daemon's pulls use it (lamina's API;
    Docker's below with the docker CLI)."""
    from daemon_fixtures import running_daemon

    root = tmp_path / "root"
    r = lamina_cli(root, "daemon", "--registry-mirror", "mirror.example")
    assert r.returncode != 0 and "invalid registry mirror" in error_line(r.stderr)
    with running_daemon(root, "--registry-mirror", f"http://{mirror.host}") as daemon:
        host = {"LAMINA_HOST": f"unix://{daemon.socket}"}
        r = lamina_cli(root, "pull", "busybox", env=host)
        assert r.returncode == 0, r.stderr
        shown = json.loads(lamina_ok(root, "image", "inspect", "busybox"))[0]
        assert shown["RepoTags"] == ["busybox:latest"]


def test_docker_pull_through_the_mirror(tmp_path: Path, mirror: RegistryServer) -> None:
    """``docker pull busybox`` against ``lamina daemon --docker-host ... --registry-mirror``."""
    from dockerapi_fixtures import docker_endpoint

    root = tmp_path / "root"
    with docker_endpoint(root, "--registry-mirror", f"http://{mirror.host}") as ep:
        before = mirror.requests_logged("GET", "/v2/library/busybox/manifests/latest")
        out = ep.docker_ok("pull", "busybox")
        assert "docker.io/library/busybox:latest" in out
        assert mirror.requests_logged("GET", "/v2/library/busybox/manifests/latest") > before
        assert ep.docker_ok("images", "--format", "{{.Repository}}:{{.Tag}}").split() == [
            "busybox:latest"
        ]
        r = ep.docker("pull", "alpine:3.19")
        assert r.returncode != 0 and f"registry mirror {mirror.host}" in r.stderr
