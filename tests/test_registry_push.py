"""Push against a real docker-registry: interop with skopeo (and umoci-built images),
chunked uploads, cross-repository mounts, indexes, skipping existing blobs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from registry_server import (
    FaultProxy,
    RegistryServer,
    TestImage,
    build_index,
    layer_tar,
    skopeo,
)

from lamina.errors import InvalidReference, NotFound
from lamina.image import LocalImages
from lamina.registry import ProgressEvent, RegistryClient, pull, push


class Events:
    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def event(self, ev: ProgressEvent) -> None:
        self.events.append(ev)

    def of(self, kind: str) -> list[ProgressEvent]:
        return [e for e in self.events if e.kind == kind]


def _inspect_raw(ref: str) -> bytes:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
        capture_output=True,
        check=True,
    )
    return out.stdout


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_lamina_push_is_what_skopeo_sees(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages
) -> None:
    ref = f"{registry.host}/interop/from-lamina:1"
    busybox_image.store(local_images, ref)
    digest = push(local_images, ref)
    out = skopeo("inspect", "--tls-verify=false", f"docker://{ref}")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["Digest"] == digest == busybox_image.target
    assert info["Layers"] == busybox_image.layers()
    assert _sha(_inspect_raw(ref)) == digest


@pytest.mark.slow
def test_skopeo_push_then_lamina_pull(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    layout = busybox_image.write_oci_layout(tmp_path / "layout", "v1")
    ref = f"{registry.host}/interop/from-skopeo:v1"
    out = skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{ref}")
    assert out.returncode == 0, out.stderr
    record = pull(local_images, ref)
    assert record.digest == _sha(_inspect_raw(ref)) == busybox_image.target
    assert local_images.is_unpacked(record)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed")
def test_pull_an_image_built_by_umoci_and_pushed_by_skopeo(
    registry: RegistryServer, local_images: LocalImages, tmp_path: Path
) -> None:
    layout, bundle = tmp_path / "oci", tmp_path / "bundle"

    def umoci(*args: str) -> None:
        res = subprocess.run(["umoci", *args], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr

    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:t")
    umoci("unpack", "--image", f"{layout}:t", str(bundle))
    (bundle / "rootfs" / "bin").mkdir()
    shutil.copy("/bin/busybox", bundle / "rootfs" / "bin" / "busybox")
    (bundle / "rootfs" / "bin" / "sh").symlink_to("busybox")
    umoci("repack", "--image", f"{layout}:t", str(bundle))
    umoci("config", "--image", f"{layout}:t", "--config.cmd", "/bin/sh")
    ref = f"{registry.host}/interop/umoci:t"
    out = skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:t", f"docker://{ref}")
    assert out.returncode == 0, out.stderr

    record = pull(local_images, ref)
    assert record.digest == _sha(_inspect_raw(ref))
    chains = local_images.unpack(record)
    fs = local_images.snapshots.path(chains[-1])
    assert (fs / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()


def test_push_index_pushes_children_first(
    registry: RegistryServer, local_images: LocalImages
) -> None:
    index = build_index(
        {
            "linux/amd64": [layer_tar({"etc/arch": b"amd64\n"})],
            "linux/arm64/v8": [layer_tar({"etc/arch": b"arm64\n"})],
        }
    )
    ref = f"{registry.host}/push/index:1"
    index.store(local_images, ref)
    assert push(local_images, ref) == index.target
    assert _sha(_inspect_raw(ref)) == index.target
    repo = f"{registry.host}/push/index"
    for child in index.manifests:
        assert _sha(_inspect_raw(f"{repo}@{child}")) == child
    with RegistryClient(registry.host) as client:
        for child in index.manifests:
            for blob in [index.config_digest(child), *index.layers(child)]:
                assert client.blob_size("push/index", blob) == len(index.blobs[blob])


def test_chunked_upload_sends_patches(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    proxy = FaultProxy(registry.port)
    try:
        ref = f"{proxy.host}/push/chunked:1"
        busybox_image.store(local_images, ref)
        assert push(local_images, ref, chunk_size=256 * 1024) == busybox_image.target
        layer = busybox_image.layers()[0]
        size = len(busybox_image.blobs[layer])
        patches = proxy.seen("PATCH", "/blobs/uploads/")
        assert len(patches) == -(-size // (256 * 1024))
        assert patches[0].header("Content-Range") == f"0-{256 * 1024 - 1}"
        encoded = layer.replace(":", "%3A")
        finals = [r for r in proxy.seen("PUT", "/blobs/uploads/") if encoded in r.path]
        assert len(finals) == 1 and finals[0].header("Content-Length") == "0"

        other = LocalImages.open(tmp_path / "other")
        assert pull(other, ref).digest == busybox_image.target
        assert other.content.read(layer) == busybox_image.blobs[layer]
        other.close()
    finally:
        proxy.stop()


def test_push_skips_blobs_the_registry_has(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages
) -> None:
    proxy = FaultProxy(registry.port)
    try:
        ref = f"{proxy.host}/push/again:1"
        busybox_image.store(local_images, ref)
        push(local_images, ref)
        uploads = len(proxy.seen("POST", "/blobs/uploads/"))
        events = Events()
        assert push(local_images, ref, progress=events) == busybox_image.target
        assert len(proxy.seen("POST", "/blobs/uploads/")) == uploads
        assert {e.digest for e in events.of("exists")} == {
            busybox_image.config_digest(),
            *busybox_image.layers(),
        }
    finally:
        proxy.stop()


def test_cross_repository_mount(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages, tmp_path: Path
) -> None:
    proxy = FaultProxy(registry.port)
    try:
        source = f"{proxy.host}/mount/source:1"
        busybox_image.store(local_images, source)
        push(local_images, source)

        # A fresh store that pulled from the source repository knows where the blobs are.
        other = LocalImages.open(tmp_path / "other")
        pull(other, source)
        events = Events()
        dest = f"{proxy.host}/mount/dest:1"
        assert push(other, source, dest, progress=events) == busybox_image.target

        layer = busybox_image.layers()[0]
        mounts = [
            r for r in proxy.seen("POST", "/v2/mount/dest/blobs/uploads/") if "mount=" in r.path
        ]
        assert any(f"mount={layer.replace(':', '%3A')}" in r.path for r in mounts)
        assert all("from=mount%2Fsource" in r.path for r in mounts)
        assert all(r.status == 201 for r in mounts)
        assert not proxy.seen("PATCH", "/v2/mount/dest/")
        assert not [r for r in proxy.seen("PUT", "/v2/mount/dest/blobs/uploads/")]
        assert {e.message for e in events.of("mounted")} == {"mount/source"}
        sources = json.loads((tmp_path / "other" / "registry-sources.json").read_text())
        assert f"{proxy.host}/mount/dest" in sources["blobs"][layer]
        other.close()
    finally:
        proxy.stop()


def test_push_errors_are_one_line(
    registry: RegistryServer, busybox_image: TestImage, local_images: LocalImages
) -> None:
    with pytest.raises(NotFound) as e:
        push(local_images, f"{registry.host}/nope/absent:1")
    assert "\n" not in str(e.value)
    record = busybox_image.store(local_images, None)
    with pytest.raises(InvalidReference, match="destination"):
        push(local_images, record.id[7:19])
    # With a destination, an image ID pushes fine.
    dest = f"{registry.host}/push/by-id:1"
    assert push(local_images, record.id[7:19], dest) == busybox_image.target


def test_push_of_a_partially_pulled_index(
    registry: RegistryServer, local_images: LocalImages, tmp_path: Path
) -> None:
    """A pull keeps one platform of an index: pushing it back works where the other
    platforms already are, and fails clearly elsewhere."""
    index = build_index(
        {
            "linux/amd64": [layer_tar({"etc/arch": b"amd64\n"})],
            "linux/arm64/v8": [layer_tar({"etc/arch": b"arm64\n"})],
        }
    )
    ref = f"{registry.host}/partial/index:1"
    index.store(local_images, ref)
    push(local_images, ref)
    other = LocalImages.open(tmp_path / "other")
    pull(other, ref)
    assert push(other, ref, f"{registry.host}/partial/index:2") == index.target
    with pytest.raises(NotFound) as e:
        push(other, ref, f"{registry.host}/partial/elsewhere:1")
    assert "linux/arm64/v8" in str(e.value) and "\n" not in str(e.value)
    other.close()
