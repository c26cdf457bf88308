"""Shared fixtures: real registries (open, htpasswd, token, TLS), test images, a lamina root.

Every test runs with registry-related environment pointed into its tmp_path (Docker's
config dir, lamina's registries config; REGISTRY_AUTH_FILE unset), so no test reads or
writes the host's credentials. Registries listen on 127.0.0.1 with random ports; see
tests/registry_server.py for the helpers behind these fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from registry_server import (
    RegistryServer,
    TestCA,
    TestImage,
    TokenServer,
    build_image,
    busybox_layer,
    start_registry,
)

USERS = {"alice": "wonderland", "bob": "builder"}


@pytest.fixture(autouse=True)
def _isolated_registry_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials and registry config come from tmp_path, never from the host.
    (XDG_RUNTIME_DIR is left alone: runtimes use it; tests of podman's auth.json set it.)"""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("LAMINA_REGISTRIES_CONFIG", str(tmp_path / "registries.json"))


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An open (no auth) registry shared by the session: use unique repository names."""
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., RegistryServer]]:
    """Start private registries (any mode) that may be killed; stopped at teardown."""
    started: list[RegistryServer] = []

    def start(mode: str = "open", **kwargs: Any) -> RegistryServer:
        server = start_registry(tmp_path / f"registry-{len(started)}", mode, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def auth_registry(registry_factory: Callable[..., RegistryServer]) -> RegistryServer:
    """htpasswd (Basic) registry; users in ``USERS`` / ``server.users``."""
    return registry_factory("htpasswd", users=USERS)


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    """Bearer token issuer: USERS get what they ask; anonymous gets pull on ``public``."""
    server = TokenServer(tmp_path / "token-server", USERS, public={"public/busybox"})
    yield server
    server.stop()


@pytest.fixture
def token_registry(
    registry_factory: Callable[..., RegistryServer], token_server: TokenServer
) -> RegistryServer:
    return registry_factory("token", token_server=token_server)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, test_ca: TestCA
) -> Iterator[RegistryServer]:
    """An open registry served over HTTPS with a certificate from ``test_ca``."""
    server = start_registry(tmp_path_factory.mktemp("tls-registry"), "tls", tls=test_ca)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def busybox_image() -> TestImage:
    """A one-layer linux/amd64 image holding /bin/busybox (OCI, gzip), in memory.
    ``.store(local, name)`` records it in a LocalImages; ``.write_oci_layout(dir)``."""
    return build_image([busybox_layer()], cmd=["/bin/sh"])


@pytest.fixture
def local_images(tmp_path: Path) -> Iterator[Any]:
    """A fresh lamina image plane (content, images, snapshots) under tmp_path."""
    from lamina.image import LocalImages

    local = LocalImages.open(tmp_path / "lamina")
    yield local
    local.close()


# -- the CLI in both modes ----------------------------------------------------------------
# A test module marked ``pytestmark = pytest.mark.both_modes`` runs each test twice:
# ``[local]`` (the CLI in-process) and ``[remote]`` (every ``lamina_cli`` command
# through a daemon serving the test's root, ``lamina --host``). LAMINA_TEST_MODES=local
# or =remote runs one of them.


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cli_mode" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_modes"
    ):
        import os

        wanted = os.environ.get("LAMINA_TEST_MODES", "local,remote").split(",")
        modes = [m for m in ("local", "remote") if m in wanted]
        metafunc.parametrize("cli_mode", modes, indirect=True, scope="module")


@pytest.fixture(autouse=True, scope="module")
def cli_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    from runtime_fixtures import RemoteMode

    mode = getattr(request, "param", "local")
    RemoteMode.on = mode == "remote"
    yield mode
    RemoteMode.on = False
    RemoteMode.stop_all()
