"""TLS and connection policy: the scheme per host, custom CAs (explicit, config file,
certs.d directories), insecure registries, and the config file itself."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from registry_server import RegistryServer, TestCA, TestImage

from lamina.errors import RegistryError
from lamina.image import LocalImages
from lamina.registry import RegistryClient, RegistryConfig, pull, push
from lamina.registry._config import is_loopback


def test_scheme_policy_and_api_host() -> None:
    cfg = RegistryConfig(insecure_registries=frozenset({"reg.lan:5000", "plain.lan"}))
    for host in ("localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "localhost"):
        assert is_loopback(host), host
        assert cfg.plain_http_allowed(host)
    assert not cfg.plain_http_allowed("registry.example.com")
    assert not cfg.plain_http_allowed("10.0.0.1:5000")
    assert cfg.plain_http_allowed("reg.lan:5000") and cfg.is_insecure("reg.lan:5000")
    assert cfg.is_insecure("plain.lan:443")  # a bare host name covers every port
    assert cfg.tls_verify("reg.lan:5000") is False
    assert cfg.api_host("docker.io") == "registry-1.docker.io"
    assert cfg.api_host("quay.io") == "quay.io"


def test_config_file_merges_with_flags(tmp_path: Path) -> None:
    path = tmp_path / "explicit.json"
    path.write_text(json.dumps({"insecure_registries": ["a:1"], "ca_files": {"b:2": "/etc/b.crt"}}))
    cfg = RegistryConfig.load(path, insecure_registries=["c:3"], ca_files={"d:4": "/d.crt"})
    assert cfg.insecure_registries == {"a:1", "c:3"}
    assert cfg.ca_file("b:2") == Path("/etc/b.crt")
    assert cfg.ca_file("d:4") == Path("/d.crt")
    # The environment variable names the default file; a missing file is fine.
    assert RegistryConfig.load().insecure_registries == frozenset()
    Path(os.environ["LAMINA_REGISTRIES_CONFIG"]).write_text('{"insecure_registries": ["e:5"]}')
    assert RegistryConfig.load().insecure_registries == {"e:5"}


def test_bad_config_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "registries.json"
    path.write_text("{not json")
    with pytest.raises(RegistryError, match="cannot read registries config") as e:
        RegistryConfig.load(path)
    assert "\n" not in str(e.value)
    path.write_text('{"insecure_registries": "a:1"}')
    with pytest.raises(RegistryError, match="must be a list"):
        RegistryConfig.load(path)


def test_tls_registry_with_ca_file(
    tls_registry: RegistryServer,
    test_ca: TestCA,
    busybox_image: TestImage,
    local_images: LocalImages,
    tmp_path: Path,
) -> None:
    host = tls_registry.host
    cfg = RegistryConfig.load(ca_files={host: str(test_ca.ca_cert)})
    ref = f"{host}/tls/busybox:1"
    busybox_image.store(local_images, ref)
    assert push(local_images, ref, config=cfg) == busybox_image.target
    other = LocalImages.open(tmp_path / "other")
    assert pull(other, ref, config=cfg).digest == busybox_image.target
    with RegistryClient(host, config=cfg) as client:
        assert client.base_url == f"https://{host}"
    other.close()


def test_tls_registry_without_ca_fails_clearly(
    tls_registry: RegistryServer, local_images: LocalImages
) -> None:
    host = tls_registry.host
    with pytest.raises(RegistryError) as e:
        pull(local_images, f"{host}/tls/busybox:1", config=RegistryConfig.load())
    message = str(e.value)
    assert "\n" not in message
    assert f"registry {host}: TLS certificate not trusted" in message
    assert "--ca-file" in message
    # Loopback may fall back to plain HTTP only when the server does not speak TLS:
    # a certificate problem is never "solved" by going plain.
    assert local_images.images.list() == []


def test_tls_ca_from_certs_d_next_to_the_config(
    tls_registry: RegistryServer,
    test_ca: TestCA,
    busybox_image: TestImage,
    local_images: LocalImages,
) -> None:
    host = tls_registry.host
    config_dir = Path(os.environ["LAMINA_REGISTRIES_CONFIG"]).parent
    (config_dir / "certs.d" / host).mkdir(parents=True)
    shutil.copy(test_ca.ca_cert, config_dir / "certs.d" / host / "ca.crt")
    ref = f"{host}/tls/certsd:1"
    busybox_image.store(local_images, ref)
    assert push(local_images, ref, config=RegistryConfig.load()) == busybox_image.target


def test_tls_ca_from_docker_certs_d(
    tls_registry: RegistryServer, test_ca: TestCA, tmp_path: Path
) -> None:
    host = tls_registry.host
    docker_dir = tmp_path / "etc-docker-certs.d"
    (docker_dir / host).mkdir(parents=True)
    shutil.copy(test_ca.ca_cert, docker_dir / host / "ca.crt")
    cfg = RegistryConfig(certs_dirs=(docker_dir,))
    assert cfg.ca_file(host) == docker_dir / host / "ca.crt"
    with RegistryClient(host, config=cfg, credentials=None) as client:
        client.ping()


def test_insecure_tls_registry(
    tls_registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages
) -> None:
    """Listed as insecure (config file), TLS is used but not verified."""
    host = tls_registry.host
    Path(os.environ["LAMINA_REGISTRIES_CONFIG"]).write_text(
        json.dumps({"insecure_registries": [host]})
    )
    ref = f"{host}/tls/insecure:1"
    busybox_image.store(local_images, ref)
    assert push(local_images, ref, config=RegistryConfig.load()) == busybox_image.target
    with RegistryClient(host, insecure=True) as client:
        assert client.base_url == f"https://{host}"


def test_plain_http_registry_on_loopback(registry: RegistryServer) -> None:
    with RegistryClient(registry.host, config=RegistryConfig()) as client:
        assert client.base_url == f"http://{registry.host}"
