"""A pull by tag checks the manifest against the registry's Docker-Content-Digest, as
containerd and Docker do, and records ``repo@digest`` as the digest of the manifest
bytes served. A real docker-registry sits behind a loopback proxy that rewrites the
header or the body of the manifest response."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_server import (
    Fault,
    FaultProxy,
    RegistryServer,
    Rewrite,
    TestImage,
    build_image,
    build_index,
    busybox_layer,
)
from runtime_fixtures import error_line, lamina_cli, lamina_ok, store_leftovers

from lamina.image import LocalImages
from lamina.registry import push

HEADER = "docker-content-digest"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def image() -> TestImage:
    return build_image([busybox_layer()], cmd=["/bin/sh"])


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    p = FaultProxy(registry.port)
    yield p
    p.stop()


def publish(registry: RegistryServer, image: TestImage, tmp_path: Path, repo: str) -> str:
    """Push ``image`` as ``repo:1``; returns the reference's path (repo:1)."""
    publisher = LocalImages.open(tmp_path / "publisher")
    try:
        image.store(publisher, f"{registry.host}/{repo}:1")
        push(publisher, f"{registry.host}/{repo}:1")
    finally:
        publisher.close()
    return f"{repo}:1"


def on_manifests(proxy: FaultProxy, rewrite: Rewrite) -> None:
    proxy.add_fault(Fault("rewrite", path_part="/manifests/", times=-1, rewrite=rewrite))


def set_header(value: str | None) -> Rewrite:
    def edit(headers: list[tuple[str, str]], body: bytes) -> tuple[list[tuple[str, str]], bytes]:
        kept = [(k, v) for k, v in headers if k.lower() != HEADER]
        return (kept if value is None else [*kept, ("Docker-Content-Digest", value)]), body

    return edit


def reserialise(headers: list[tuple[str, str]], body: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """The same manifest in other bytes (indented), the header left as it was: what a
    proxy that re-encodes JSON would serve. Its digest is one the registry lacks."""
    return headers, json.dumps(json.loads(body), indent=2).encode()


def assert_nothing_stored(root: Path) -> None:
    assert lamina_ok(root, "images", "-a", "-q") == ""
    assert store_leftovers(root) == []


LIES = {
    "other-digest": sha256(b"a manifest the registry does not have"),
    "malformed": "sha256:NOT-A-DIGEST",
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_lying_header_fails_the_pull(
    registry: RegistryServer, proxy: FaultProxy, image: TestImage, tmp_path: Path, lie: str
) -> None:
    header = LIES[lie]
    repo = publish(registry, image, tmp_path, f"digest/lying-{lie}")
    on_manifests(proxy, set_header(header))
    root = tmp_path / "root"
    r = lamina_cli(root, "pull", f"{proxy.host}/{repo}")
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = error_line(r.stderr)
    assert f"manifest {proxy.host}/{repo}" in line and "Docker-Content-Digest" in line, line
    if lie == "malformed":
        assert "is not a digest" in line
    else:
        assert f"content with digest {image.target}" in line and header in line, line
    assert_nothing_stored(root)


def test_body_not_matching_the_header_fails_the_pull(
    registry: RegistryServer, proxy: FaultProxy, image: TestImage, tmp_path: Path
) -> None:
    """Unchecked, this pull recorded ``repo@<digest of the re-encoded bytes>``: a
    digest the registry does not have."""
    repo = publish(registry, image, tmp_path, "digest/rewritten")
    on_manifests(proxy, reserialise)
    root = tmp_path / "root"
    r = lamina_cli(root, "pull", f"{proxy.host}/{repo}")
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = error_line(r.stderr)
    assert f"Docker-Content-Digest says {image.target}" in line, line
    assert_nothing_stored(root)


def test_index_with_a_lying_header_fails_the_pull(
    registry: RegistryServer, proxy: FaultProxy, tmp_path: Path
) -> None:
    index = build_index({"linux/amd64": [busybox_layer()], "linux/arm64": [busybox_layer()]})
    repo = publish(registry, index, tmp_path, "digest/index")
    proxy.add_fault(
        Fault("rewrite", path_part=f"/manifests/{repo.split(':')[1]}", rewrite=reserialise)
    )
    root = tmp_path / "root"
    r = lamina_cli(root, "pull", f"{proxy.host}/{repo}")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"Docker-Content-Digest says {index.target}" in error_line(r.stderr)
    assert_nothing_stored(root)


def test_matching_header_records_the_registry_digest(
    registry: RegistryServer, proxy: FaultProxy, image: TestImage, tmp_path: Path
) -> None:
    repo = publish(registry, image, tmp_path, "digest/honest")
    root = tmp_path / "root"
    lamina_ok(root, "pull", f"{proxy.host}/{repo}")
    got = [r for r in proxy.seen("GET", "/manifests/") if r.status == 200]
    assert got, "the manifest went through the proxy"
    (inspected,) = json.loads(lamina_ok(root, "image", "inspect", f"{proxy.host}/{repo}"))
    assert inspected["RepoDigests"] == [f"{proxy.host}/{repo.split(':')[0]}@{image.target}"]


@pytest.mark.parametrize("body", ["as-pushed", "re-encoded"])
def test_registry_without_the_header_still_works(
    registry: RegistryServer, proxy: FaultProxy, image: TestImage, tmp_path: Path, body: str
) -> None:
    """No header, nothing to check: the recorded digest is that of the bytes served."""
    repo = publish(registry, image, tmp_path, f"digest/no-header-{body}")
    served: list[bytes] = []

    def edit(headers: list[tuple[str, str]], data: bytes) -> tuple[list[tuple[str, str]], bytes]:
        if body == "re-encoded":
            headers, data = reserialise(headers, data)
        served.append(data)
        return set_header(None)(headers, data)

    on_manifests(proxy, edit)
    root = tmp_path / "root"
    lamina_ok(root, "pull", f"{proxy.host}/{repo}")
    assert len(served) == 1
    digest = sha256(served[0])
    assert (digest == image.target) is (body == "as-pushed")
    (inspected,) = json.loads(lamina_ok(root, "image", "inspect", f"{proxy.host}/{repo}"))
    assert inspected["RepoDigests"] == [f"{proxy.host}/{repo.split(':')[0]}@{digest}"]
    assert inspected["Digest"] == digest
    manifest_blob = root / "content" / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert manifest_blob.read_bytes() == served[0]
