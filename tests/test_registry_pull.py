"""Pull (and push for setup) against a real docker-registry: round trips, digests,
platform selection, pull policies, layers, progress events."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from registry_server import (
    FaultProxy,
    RegistryServer,
    TestImage,
    build_image,
    build_index,
    layer_tar,
    sha256,
)

from lamina.errors import LaminaError, NotFound
from lamina.image import LocalImages, parse_platform
from lamina.image._snapshots import chain_ids
from lamina.registry import PlainProgress, ProgressEvent, RegistryClient, pull, push


class Events:
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def event(self, ev: ProgressEvent) -> None:
        self.events.append(ev)

    def kinds(self, digest: str) -> list[str]:
        return [e.kind for e in self.events if e.digest == digest and e.kind != "advance"]


def _second_local(tmp_path: Path, name: str = "other") -> LocalImages:
    return LocalImages.open(tmp_path / name)


def _publish(local: LocalImages, image: TestImage, ref: str) -> str:
    """Store ``image`` locally under ``ref`` and push it."""
    image.store(local, ref)
    return push(local, ref)


def test_push_then_pull_round_trip_keeps_digests(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    ref = f"{registry.host}/roundtrip/busybox:1.0"
    pushed = _publish(local_images, busybox_image, ref)
    assert pushed == busybox_image.target

    other = _second_local(tmp_path)
    record = pull(other, ref)

    assert record.digest == busybox_image.target
    assert record.config_digest == busybox_image.config_digest()
    assert sorted(record.names) == sorted([ref, f"{registry.host}/roundtrip/busybox@{pushed}"])
    for digest in busybox_image.blobs:
        assert other.content.read(digest) == busybox_image.blobs[digest]
    # The layer is unpacked: busybox and its applet links are in the snapshot.
    (chain,) = chain_ids(other.diff_ids(record))
    fs = other.snapshots.path(chain)
    assert (fs / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert os.readlink(fs / "bin" / "sh") == "busybox"
    assert other.images.resolve(ref).digest == pushed
    other.close()


def test_pull_by_digest_names_only_the_digest(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    ref = f"{registry.host}/bydigest/busybox:latest"
    digest = _publish(local_images, busybox_image, ref)
    other = _second_local(tmp_path)
    record = pull(other, f"{registry.host}/bydigest/busybox@{digest}")
    assert record.digest == digest
    assert record.names == [f"{registry.host}/bydigest/busybox@{digest}"]
    other.close()


def test_pull_unknown_tag_is_not_found_and_leaves_nothing(
    registry: RegistryServer, local_images: LocalImages
) -> None:
    with pytest.raises(NotFound) as e:
        pull(local_images, f"{registry.host}/nothing/here:nope")
    assert "\n" not in str(e.value)
    assert "nothing/here:nope" in str(e.value)
    assert local_images.images.list() == []
    assert list(local_images.content.list()) == []


def test_index_platform_selection(
    registry: RegistryServer, local_images: LocalImages, tmp_path: Path
) -> None:
    index = build_index(
        {
            "linux/amd64": [layer_tar({"etc/arch": b"amd64\n"})],
            "linux/arm64/v8": [layer_tar({"etc/arch": b"arm64\n"})],
        }
    )
    ref = f"{registry.host}/multi/arch:1"
    assert _publish(local_images, index, ref) == index.target

    other = _second_local(tmp_path)
    arm = pull(other, ref, platform=parse_platform("linux/arm64"))
    assert arm.digest == index.target
    assert arm.manifest_digest == index.manifests[1]
    assert arm.platform == "linux/arm64/v8"
    (chain,) = chain_ids(other.diff_ids(arm))
    assert (other.snapshots.path(chain) / "etc" / "arch").read_text() == "arm64\n"
    # Only the selected platform's layer was fetched.
    amd_layer = index.layers(index.manifests[0])[0]
    assert not other.content.exists(amd_layer)

    with pytest.raises(NotFound) as e:
        pull(_second_local(tmp_path, "third"), ref, platform=parse_platform("linux/s390x"))
    assert "linux/s390x" in str(e.value) and "linux/arm64" in str(e.value)
    other.close()


def test_multi_layer_image_with_whiteout(
    registry: RegistryServer, local_images: LocalImages, tmp_path: Path
) -> None:
    base = layer_tar({"etc/keep": b"keep\n", "etc/gone": b"bye\n", "bin/busybox": b"x"})
    top = layer_tar({"etc/.wh.gone": b"", "etc/new": b"new\n"})
    image = build_image([base, top])
    ref = f"{registry.host}/layers/whiteout:1"
    _publish(local_images, image, ref)

    other = _second_local(tmp_path)
    record = pull(other, ref)
    base_chain, top_chain = chain_ids(other.diff_ids(record))
    top_fs = other.snapshots.path(top_chain)
    # Overlay form: the whiteout is a 0:0 character device in the upper layer.
    st = os.lstat(top_fs / "etc" / "gone")
    assert (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0
    assert (top_fs / "etc" / "new").read_text() == "new\n"
    assert (other.snapshots.path(base_chain) / "etc" / "gone").read_text() == "bye\n"
    other.close()


def _proxied(registry: RegistryServer) -> FaultProxy:
    return FaultProxy(registry.port)


def test_policy_never_and_if_not_present(
    registry_factory: Any, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    server = registry_factory()
    ref = f"{server.host}/policy/busybox:1"
    other = _second_local(tmp_path)
    with pytest.raises(NotFound) as e:
        pull(other, ref, policy="never")
    assert "never" in str(e.value)

    _publish(local_images, busybox_image, ref)
    first = pull(other, ref, policy="if-not-present")
    server.kill()  # from here on any network use would fail
    assert pull(other, ref, policy="if-not-present").digest == first.digest
    assert pull(other, ref, policy="never").digest == first.digest
    with pytest.raises(LaminaError) as e:
        pull(other, ref, policy="always")
    assert f"cannot reach registry {server.host}" in str(e.value)
    other.close()


def test_policy_newer_pulls_only_when_remote_changed(
    registry: RegistryServer, local_images: LocalImages, tmp_path: Path
) -> None:
    proxy = _proxied(registry)
    try:
        ref = f"{proxy.host}/policy/newer:latest"
        v1 = build_image([layer_tar({"etc/version": b"1\n"})])
        v2 = build_image([layer_tar({"etc/version": b"2\n"})])
        _publish(local_images, v1, ref)

        other = _second_local(tmp_path)
        assert pull(other, ref, policy="newer").digest == v1.target
        gets_before = len(proxy.seen("GET", "/manifests/"))
        assert pull(other, ref, policy="newer").digest == v1.target
        assert len(proxy.seen("GET", "/manifests/")) == gets_before  # HEAD only
        assert proxy.seen("HEAD", "/manifests/latest")

        _publish(_second_local(tmp_path, "publisher"), v2, ref)
        record = pull(other, ref, policy="newer")
        assert record.digest == v2.target
        assert other.images.resolve(ref).digest == v2.target
        # "always" re-resolves the manifest but downloads no blob it already has.
        blob_gets = len(proxy.seen("GET", "/blobs/"))
        assert pull(other, ref, policy="always").digest == v2.target
        assert len(proxy.seen("GET", "/blobs/")) == blob_gets
        other.close()
    finally:
        proxy.stop()


def test_unknown_policy_is_refused(local_images: LocalImages) -> None:
    with pytest.raises(LaminaError, match="pull policy"):
        pull(local_images, "127.0.0.1:1/x:1", policy="sometimes")


def test_progress_events_and_plain_output(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    ref = f"{registry.host}/progress/busybox:1"
    _publish(local_images, busybox_image, ref)
    layer = busybox_image.layers()[0]
    size = len(busybox_image.blobs[layer])

    events = Events()
    other = _second_local(tmp_path)
    pull(other, ref, progress=events)
    assert events.kinds(layer) == ["started", "verifying", "extracting", "done"]
    assert sum(e.advance for e in events.events if e.kind == "advance") == size
    assert events.events[0].kind == "resolved" and events.events[-1].kind == "finished"

    # Pulling a second tag of the same image: the layer already exists.
    tag2 = f"{registry.host}/progress/busybox:2"
    with RegistryClient(registry.host) as client:
        client.put_manifest(
            "progress/busybox",
            "2",
            busybox_image.blobs[busybox_image.target],
            busybox_image.media_type,
        )
    out = io.StringIO()
    pull(other, tag2, progress=PlainProgress(out), policy="always")
    assert f"layer {layer[7:19]}: already exists" in out.getvalue()
    other.close()


def test_pull_uses_concurrent_downloads(
    registry: RegistryServer, local_images: LocalImages, tmp_path: Path
) -> None:
    layers = [layer_tar({f"data/{i}": os.urandom(256 * 1024)}) for i in range(6)]
    image = build_image(layers, compress=False)
    ref = f"{registry.host}/many/layers:1"
    _publish(local_images, image, ref)
    other = _second_local(tmp_path)
    record = pull(other, ref, max_concurrent=4)
    chains = chain_ids(other.diff_ids(record))
    assert all(other.snapshots.exists(c) for c in chains)
    assert len(json.loads(other.content.read(record.digest))["layers"]) == 6
    assert sha256(other.content.read(record.config_digest)) == record.config_digest
    other.close()


def test_two_concurrent_pulls_of_one_image_share_the_work(
    registry: RegistryServer, local_images: LocalImages, tmp_path: Path
) -> None:
    import threading

    image = build_image([layer_tar({"data/x": os.urandom(2 * 1024 * 1024)})], compress=False)
    ref = f"{registry.host}/concurrent/pull:1"
    _publish(local_images, image, ref)
    root = tmp_path / "shared"
    LocalImages.open(root).close()  # create the store first (concurrent creation: see report)
    results: list[object] = []

    def worker() -> None:
        local = LocalImages.open(root)  # as two processes would, each with its own handle
        try:
            results.append(pull(local, ref, policy="always").digest)
        except Exception as e:  # pragma: no cover - reported by the assert below
            results.append(e)
        finally:
            local.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [image.target, image.target]
    check = LocalImages.open(root)
    assert check.is_unpacked(check.images.resolve(ref))
    assert not [p for p in (root / "content" / "ingest").iterdir()]
    check.close()


def test_rich_progress_renders(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    from rich.console import Console

    from lamina.registry import RichProgress

    ref = f"{registry.host}/progress/rich:1"
    _publish(local_images, busybox_image, ref)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    progress = RichProgress(console)  # no context manager: the CLI's way
    pull(_second_local(tmp_path), ref, progress=progress)
    assert not progress._live
    text = out.getvalue()
    assert busybox_image.layers()[0][7:19] in text
    assert "Done" in text


def test_pull_without_unpack_then_unpack_offline(
    registry_factory: Any, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    server = registry_factory()
    ref = f"{server.host}/nounpack/busybox:1"
    _publish(local_images, busybox_image, ref)
    other = _second_local(tmp_path)
    record = pull(other, ref, unpack=False)
    assert other.content.exists(busybox_image.layers()[0])
    assert other.snapshots.list() == [] and not other.is_unpacked(record)
    server.kill()
    assert pull(other, ref).digest == record.digest  # unpacks from local blobs
    assert other.is_unpacked(record)
    other.close()


def test_rich_progress_stops_on_failure(local_images: LocalImages) -> None:
    from rich.console import Console

    from lamina.registry import RichProgress

    out = io.StringIO()
    progress = RichProgress(Console(file=out, force_terminal=True, width=100))
    events = Events()

    class Both:
        def event(self, ev: ProgressEvent) -> None:
            events.event(ev)
            progress.event(ev)

    with pytest.raises(LaminaError):
        pull(local_images, "127.0.0.1:1/nothing:1", progress=Both())
    assert events.events[-1].kind == "failed"
    assert not progress._live
