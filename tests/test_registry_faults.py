"""Failures during pull: unreachable registry, dropped and resumed downloads, a registry
killed mid-pull, truncated and corrupted blobs, server errors. After every failure
nothing is half-written: no blob, no snapshot, no image record."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from registry_server import (
    Fault,
    FaultProxy,
    RegistryServer,
    TestImage,
    build_image,
    free_port,
    layer_tar,
)

from lamina.errors import DigestMismatch, RegistryError
from lamina.image import LocalImages
from lamina.registry import RegistryClient, pull, push

LAYER_BYTES = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def big_image() -> TestImage:
    """Two uncompressed layers, the second big enough to be cut mid-way."""
    return build_image(
        [
            layer_tar({"etc/small": b"small\n"}),
            layer_tar({"data/blob": os.urandom(LAYER_BYTES)}),
        ],
        compress=False,
    )


@pytest.fixture
def proxied(
    registry_factory: Callable[..., RegistryServer],
    big_image: TestImage,
    tmp_path: Path,
) -> Iterator[tuple[RegistryServer, FaultProxy, str]]:
    """A private registry holding ``big_image``, behind a fault-injecting proxy."""
    server = registry_factory()
    proxy = FaultProxy(server.port)
    publisher = LocalImages.open(tmp_path / "publisher")
    ref = f"{proxy.host}/faults/big:1"
    big_image.store(publisher, ref)
    push(publisher, ref)
    publisher.close()
    proxy.requests.clear()
    yield server, proxy, ref
    proxy.stop()


def _assert_nothing_written(local: LocalImages) -> None:
    assert local.images.list() == []
    assert list(local.content.list()) == []
    assert local.snapshots.list() == []


def _ingests(local: LocalImages) -> list[Path]:
    return [p for p in (local.content.root / "ingest").iterdir() if (p / "data").exists()]


def _ingest_of(local: LocalImages, digest: str) -> Path:
    """The partial download of ``digest`` (pull keys its ingests ``pull-<digest>``)."""
    key = hashlib.sha256(f"pull-{digest}".encode()).hexdigest()
    return local.content.root / "ingest" / key / "data"


def test_registry_down_is_one_clear_line(local_images: LocalImages) -> None:
    port = free_port()
    with pytest.raises(RegistryError) as e:
        pull(local_images, f"127.0.0.1:{port}/busybox:latest")
    assert str(e.value) == f"cannot reach registry 127.0.0.1:{port}: connection refused"
    _assert_nothing_written(local_images)
    assert _ingests(local_images) == []


def test_dropped_connection_resumes_with_range(
    proxied: tuple[RegistryServer, FaultProxy, str], big_image: TestImage, local_images: LocalImages
) -> None:
    _, proxy, ref = proxied
    big = big_image.layers()[1]
    cut = 1024 * 1024
    proxy.add_fault(Fault("drop", path_part=big, after=cut))
    record = pull(local_images, ref)
    assert record.digest == big_image.target
    gets = proxy.seen("GET", big)
    assert len(gets) == 2
    assert gets[0].header("Range") is None
    resumed_at = int(gets[1].header("Range").removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= cut
    assert gets[1].status == 206
    assert local_images.content.read(big) == big_image.blobs[big]


@pytest.mark.slow
def test_registry_killed_mid_pull_then_resumed(
    proxied: tuple[RegistryServer, FaultProxy, str], big_image: TestImage, local_images: LocalImages
) -> None:
    server, proxy, ref = proxied
    big = big_image.layers()[1]
    proxy.add_fault(Fault("drop", path_part=big, after=1024 * 1024, on_fire=server.kill))
    with pytest.raises(RegistryError) as e:
        pull(local_images, ref)
    assert proxy.host in str(e.value) and "\n" not in str(e.value)
    _assert_nothing_written(local_images)
    kept = _ingest_of(local_images, big).stat().st_size
    assert 0 < kept <= 1024 * 1024

    server.start()  # same port, same storage
    proxy.clear_faults()
    proxy.requests.clear()
    record = pull(local_images, ref)
    assert record.digest == big_image.target
    (resume,) = proxy.seen("GET", big)
    assert resume.header("Range") == f"bytes={kept}-"
    assert _ingests(local_images) == []
    assert local_images.is_unpacked(record)


def test_always_truncated_blob_fails_after_retries(
    proxied: tuple[RegistryServer, FaultProxy, str], big_image: TestImage, local_images: LocalImages
) -> None:
    _, proxy, ref = proxied
    big = big_image.layers()[1]
    proxy.add_fault(Fault("drop", path_part=big, after=256 * 1024, times=-1))
    client = RegistryClient(proxy.host, retries=2, backoff=(0.0,))
    with pytest.raises(RegistryError, match="download failed after 2 retries") as e:
        pull(local_images, ref, client=client)
    client.close()
    assert "\n" not in str(e.value)
    assert len(proxy.seen("GET", big)) == 3
    _assert_nothing_written(local_images)


def test_corrupted_blob_never_enters_the_store(
    proxied: tuple[RegistryServer, FaultProxy, str], big_image: TestImage, local_images: LocalImages
) -> None:
    _, proxy, ref = proxied
    big = big_image.layers()[1]
    proxy.add_fault(Fault("corrupt", path_part=big, times=-1))
    with pytest.raises(DigestMismatch) as e:
        pull(local_images, ref)
    assert big in str(e.value) and "\n" not in str(e.value)
    _assert_nothing_written(local_images)
    # A corrupt download is not kept for resume (the complete small layer is).
    assert not _ingest_of(local_images, big).exists()
    assert _ingest_of(local_images, big_image.layers()[0]).exists()


def test_blob_shorter_than_its_descriptor(
    registry: RegistryServer, local_images: LocalImages, tmp_path: Path
) -> None:
    image = build_image([layer_tar({"etc/x": b"x\n"})], compress=False)
    layer = image.layers()[0]
    # Lie about the layer size in the manifest (the registry does not check it).
    doc = json.loads(image.blobs[image.target])
    doc["layers"][0]["size"] += 10
    lying = json.dumps(doc).encode()
    with RegistryClient(registry.host) as client:
        for digest in (layer, image.config_digest()):
            data = image.blobs[digest]
            client.upload_blob("faults/short", digest, len(data), partial(io.BytesIO, data))
        client.put_manifest("faults/short", "1", lying, image.media_type)
    with pytest.raises(DigestMismatch, match="expected"):
        pull(local_images, f"{registry.host}/faults/short:1")
    _assert_nothing_written(local_images)


def test_server_error_on_manifest_is_one_line(
    proxied: tuple[RegistryServer, FaultProxy, str], local_images: LocalImages
) -> None:
    _, proxy, ref = proxied
    proxy.add_fault(Fault("status", path_part="/manifests/", status=500, times=-1))
    with pytest.raises(RegistryError) as e:
        pull(local_images, ref)
    assert "injected failure" in str(e.value) and "HTTP 500" in str(e.value)
    assert "\n" not in str(e.value)
    _assert_nothing_written(local_images)


def test_transient_blob_error_is_retried(
    proxied: tuple[RegistryServer, FaultProxy, str], big_image: TestImage, local_images: LocalImages
) -> None:
    _, proxy, ref = proxied
    big = big_image.layers()[1]
    proxy.add_fault(Fault("status", path_part=big, status=503))
    assert pull(local_images, ref).digest == big_image.target
    assert [r.status for r in proxy.seen("GET", big)] == [503, 200]


def test_failed_layer_rolls_back_the_other_layers(
    proxied: tuple[RegistryServer, FaultProxy, str], big_image: TestImage, local_images: LocalImages
) -> None:
    """The small layer downloads and unpacks fine; the big one fails: neither stays."""
    _, proxy, ref = proxied
    big = big_image.layers()[1]
    proxy.add_fault(Fault("corrupt", path_part=big, times=-1))
    with pytest.raises(DigestMismatch):
        pull(local_images, ref, max_concurrent=1)
    _assert_nothing_written(local_images)
    # Once the registry behaves, the same store pulls fine.
    proxy.clear_faults()
    record = pull(local_images, ref)
    assert local_images.is_unpacked(record)


def test_blob_redirect_is_followed(
    proxied: tuple[RegistryServer, FaultProxy, str], big_image: TestImage, local_images: LocalImages
) -> None:
    _, proxy, ref = proxied
    proxy.add_fault(Fault("redirect", path_part="/blobs/sha256:", times=-1))
    record = pull(local_images, ref)
    assert record.digest == big_image.target
    assert {r.status for r in proxy.seen("GET", "/blobs/")} == {307}


def test_server_ignoring_range_restarts_the_download(
    proxied: tuple[RegistryServer, FaultProxy, str], big_image: TestImage, local_images: LocalImages
) -> None:
    _, proxy, ref = proxied
    big = big_image.layers()[1]
    proxy.add_fault(Fault("drop", path_part=big, after=512 * 1024))
    proxy.add_fault(Fault("ignore-range", path_part=big, times=-1))
    record = pull(local_images, ref)
    assert record.digest == big_image.target
    _first, second = proxy.seen("GET", big)
    assert second.header("Range") is not None and second.status == 200
    assert local_images.content.read(big) == big_image.blobs[big]
