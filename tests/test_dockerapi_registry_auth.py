"""Registry credentials through Docker's API: ``docker login`` then ``docker push`` and
``docker pull`` against a registry that requires them (htpasswd), the credentials
coming with each request (``X-Registry-Auth``), never from or into the daemon's own
credential files; a build's ``FROM`` pull with ``X-Registry-Config``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dockerapi_fixtures import docker_endpoint
from registry_server import RegistryServer
from runtime_fixtures import IMAGE_REF, cli_image_root


def _daemon_credential_files() -> list[Path]:
    """Where the daemon (started with this test's environment) keeps its own."""
    return [Path(os.environ["DOCKER_CONFIG"]) / "config.json"]


def test_login_push_pull_with_the_clients_credentials(
    auth_registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    root = cli_image_root(tmp_path_factory, "dockerapi-auth")
    host = auth_registry.host
    remote = f"{host}/private/busybox:1"
    with docker_endpoint(root) as ep:
        ep.docker_ok("tag", IMAGE_REF, remote)
        refused = ep.docker("push", remote)
        assert refused.returncode != 0
        assert "no basic auth credentials" in refused.stderr + refused.stdout

        wrong = ep.docker("login", "-u", "alice", "--password-stdin", host, input="nope\n")
        assert wrong.returncode != 0
        login = ep.docker("login", "-u", "alice", "--password-stdin", host,
                          input=auth_registry.users["alice"] + "\n")  # fmt: skip
        assert login.returncode == 0, login.stderr
        assert "Login Succeeded" in login.stdout

        pushed = ep.docker_ok("push", remote)
        assert "digest: sha256:" in pushed
        ep.docker_ok("rmi", remote)
        pulled = ep.docker_ok("pull", remote)
        assert "Downloaded newer image" in pulled or "Image is up to date" in pulled
        assert ep.docker_ok("run", "--rm", remote, "echo", "pulled") == "pulled\n"

        # With a build: its FROM pull takes the client's credentials too.
        ep.docker_ok("rmi", remote)
        context = tmp_path / "context"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {remote}\nRUN echo built > /built\n")
        ep.docker_ok("build", "-t", "built-on-private", str(context))
        assert ep.docker_ok("run", "--rm", "built-on-private", "cat", "/built") == "built\n"

        ep.docker_ok("logout", host)
        ep.docker_ok("rmi", remote)
        again = ep.docker("pull", remote)
        assert again.returncode != 0
        assert "no basic auth credentials" in again.stderr + again.stdout
    assert not any(p.exists() for p in _daemon_credential_files())
