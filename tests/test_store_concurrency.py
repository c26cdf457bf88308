"""The image store under concurrent commands: ``rmi`` and ``image prune`` while a pull,
a build, an import or a load relies on layers another image brought must leave the new
image complete (its blobs and snapshots there: save, run); ``hold`` and ``rmi`` agree;
an image listing one layer twice pulls. Real registries, real ``lamina`` processes; the
racing command runs while the other one is held at a known point (a registry that holds
a download mid-way, an ``ADD`` URL that answers when told, or the library call paused
just before it writes its record), so every iteration exercises the race."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from registry_server import RegistryServer, TestImage, build_image, busybox_layer, layer_tar
from runtime_fixtures import import_busybox, lamina_ok
from store_fixtures import StallProxy, assert_clean, finish, released, start

from lamina.errors import InUse, NotFound
from lamina.image import LocalImages, import_rootfs, load, save
from lamina.registry import pull, push
from lamina.testing import make_busybox_rootfs

BIG = 4 * 1024 * 1024
T = TypeVar("T")


@pytest.fixture(scope="module")
def shared_images(
    registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TestImage, TestImage, str, str]:
    """``present`` (busybox + a small layer) and ``pulled`` (the same two layers and a
    big third one) in the registry: (present, pulled, present ref, pulled ref)."""
    common = [busybox_layer(), layer_tar({"etc/shared": b"shared\n"})]
    present = build_image(common, cmd=["/bin/sh"], compress=False)
    pulled = build_image(
        [*common, layer_tar({"data/big": os.urandom(BIG)})], cmd=["/bin/sh"], compress=False
    )
    assert pulled.layers()[:2] == present.layers()
    publisher = LocalImages.open(tmp_path_factory.mktemp("publisher") / "root")
    refs = []
    for image, name in ((present, "present"), (pulled, "pulled")):
        ref = f"{registry.host}/race/{name}:1"
        image.store(publisher, ref)
        push(publisher, ref)
        refs.append(f"race/{name}:1")
    publisher.close()
    return present, pulled, refs[0], refs[1]


def _complete(root: Path, ref: str, tmp_path: Path) -> None:
    """Every blob and snapshot of ``ref`` is there: save reads all blobs, and inspect
    says every layer is unpacked."""
    out = tmp_path / "check.tar"
    lamina_ok(root, "save", "-o", str(out), ref)
    out.unlink()
    assert json.loads(lamina_ok(root, "image", "inspect", ref))[0]["Unpacked"] is True


def test_rmi_and_prune_racing_a_pull_of_shared_layers(
    registry: RegistryServer,
    shared_images: tuple[TestImage, TestImage, str, str],
    tmp_path: Path,
) -> None:
    _, pulled, present_path, pulled_path = shared_images
    big = pulled.layers()[2]
    root = tmp_path / "root"
    with released(StallProxy(registry.port, big, after=BIG // 4)) as proxy:
        present_ref = f"{proxy.host}/{present_path}"
        pulled_ref = f"{proxy.host}/{pulled_path}"
        for racing in (["rmi"], ["image", "prune", "-a", "-f"]) * 2:
            present_id = lamina_ok(root, "pull", "-q", present_ref).strip()
            proxy.rearm()
            puller = start(root, "pull", "-q", pulled_ref)
            assert proxy.stalled.wait(60), finish(puller)
            # The pull found the two shared layers present and relies on them now.
            lamina_ok(root, *racing, *([present_id] if racing == ["rmi"] else []))
            assert lamina_ok(root, "images", "-q", present_ref) == ""
            proxy.release()
            code, pulled_id, err = finish(puller)
            assert code == 0, err
            _complete(root, pulled_ref, tmp_path)
            lamina_ok(root, "rmi", pulled_id.strip())
        assert lamina_ok(root, "images", "-q") == ""
        out = lamina_ok(root, "image", "prune", "-f")
        assert out == ""  # nothing was left to collect
        assert list((root / "content" / "blobs" / "sha256").iterdir()) == []
        assert_clean(root)


class _Url:
    """A file served at ``url`` once ``go`` is set; ``asked`` is set on the request."""

    def __init__(self, body: bytes) -> None:
        self.asked = threading.Event()
        self.go = threading.Event()
        served = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                served.asked.set()
                served.go.wait(120)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/payload"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.go.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def url_payload() -> Iterator[_Url]:
    served = _Url(b"fetched while the base image was removed\n")
    yield served
    served.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (build mounts, runc)")
def test_rmi_racing_a_build_from_the_image(tmp_path: Path, url_payload: _Url) -> None:
    root = tmp_path / "root"
    import_busybox(root, tmp_path, "base:1")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM base:1\nADD {url_payload.url} /payload\nRUN cat /payload /bin/busybox > /copy\n"
    )
    builder = start(root, "build", "-q", "-t", "built:1", str(context))
    assert url_payload.asked.wait(60), finish(builder)
    # The build resolved base:1 and waits for the ADD source; the base goes meanwhile.
    lamina_ok(root, "rmi", "base:1")
    url_payload.go.set()
    code, _, err = finish(builder)
    assert code == 0, err
    _complete(root, "built:1", tmp_path)
    out = lamina_ok(root, "run", "--rm", "built:1", "head", "-n", "1", "/copy")
    assert out == "fetched while the base image was removed\n"
    assert_clean(root)


def _paused_before_record(
    local: LocalImages, call: Callable[[], T]
) -> tuple[threading.Event, threading.Event, list[T | BaseException], threading.Thread]:
    """Run ``call`` on a thread, held the first time it makes an image record (every
    blob it needs is decided by then): (paused, go, outcome, thread)."""
    paused, go = threading.Event(), threading.Event()
    real = local.record

    def record(*args: Any, **kwargs: Any) -> Any:
        if not paused.is_set():
            paused.set()
            go.wait(120)
        return real(*args, **kwargs)

    local.record = record  # type: ignore[method-assign]
    outcome: list[T | BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return paused, go, outcome, thread


def _race_with_rmi(root: Path, local: LocalImages, name: str, call: Callable[[], object]) -> None:
    paused, go, outcome, thread = _paused_before_record(local, call)
    try:
        assert paused.wait(60), outcome
        lamina_ok(root, "rmi", name)
    finally:
        go.set()
        thread.join(120)
    assert not isinstance(outcome[0], BaseException), outcome[0]


def test_rmi_racing_an_import_of_the_same_layer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    local = LocalImages.open(root)
    try:
        first = import_rootfs(local, rootfs, reference="first:1", source_date_epoch=0)
        (shared,) = local.manifest_for(first.digest).layers

        def second() -> object:
            return import_rootfs(
                local, rootfs, reference="second:1", source_date_epoch=0, message="again"
            )

        _race_with_rmi(root, local, "first:1", second)
        assert local.manifest_for(local.images.resolve("second:1").digest).layers == [shared]
    finally:
        local.close()
    lamina_ok(root, "save", "-o", str(tmp_path / "second.tar"), "second:1")
    assert_clean(root)


def test_rmi_racing_a_load_of_shared_layers(tmp_path: Path) -> None:
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    source = LocalImages.open(tmp_path / "source")
    import_rootfs(source, rootfs, reference="loaded:1", source_date_epoch=0, message="other")
    save(source, ["loaded:1"], tmp_path / "loaded.tar", format="oci-archive")
    source.close()
    root = tmp_path / "root"
    local = LocalImages.open(root)
    try:
        import_rootfs(local, rootfs, reference="first:1", source_date_epoch=0)
        _race_with_rmi(root, local, "first:1", lambda: load(local, tmp_path / "loaded.tar"))
    finally:
        local.close()
    lamina_ok(root, "save", "-o", str(tmp_path / "check.tar"), "loaded:1")
    assert_clean(root)


def test_hold_of_a_removed_image_fails_and_a_held_image_stays(tmp_path: Path) -> None:
    local = LocalImages.open(tmp_path / "root")
    try:
        record = import_rootfs(local, make_busybox_rootfs(tmp_path / "rootfs"), reference="a:1")
        local.images.hold("container:c1", record.digest)
        with pytest.raises(InUse):
            local.remove(record.id)
        local.images.release("container:c1")
        local.remove("a:1")
        # A create that comes after the rmi cannot hold what is gone.
        with pytest.raises(NotFound):
            local.images.hold("container:c2", record.digest)
        assert local.images.holders(record.digest) == []
    finally:
        local.close()


def test_a_hold_keeps_its_images_content_even_without_the_record(tmp_path: Path) -> None:
    """Holds written before hold() checked the record (the rmi race of issue 9) may
    name a record that is gone: the container's layers must survive a collection."""
    local = LocalImages.open(tmp_path / "root")
    try:
        record = import_rootfs(local, make_busybox_rootfs(tmp_path / "rootfs"), reference="a:1")
        chains = local.unpack(record)
        local.images.hold("container:c1", record.digest)
        with local.images._db:  # as an old rmi left it: the record gone, the hold kept
            local.images._db.execute("DELETE FROM names WHERE digest=?", (record.digest,))
            local.images._db.execute("DELETE FROM images WHERE digest=?", (record.digest,))
        local.collect_garbage()
        assert local.content.exists(record.digest) and local.content.exists(record.id)
        assert all(local.snapshots.exists(c) for c in chains)
    finally:
        local.close()


def test_an_image_listing_a_layer_twice(registry: RegistryServer, tmp_path: Path) -> None:
    """Both copies were downloaded into one ingest at once: the pull failed with a
    digest mismatch and every retry made the ingest grow."""
    twice = layer_tar({"data/blob": os.urandom(1 << 20)})
    image = build_image([twice, layer_tar({"etc/x": b"x\n"}), twice], compress=False)
    publisher = LocalImages.open(tmp_path / "publisher")
    ref = f"{registry.host}/race/twice:1"
    image.store(publisher, ref)
    push(publisher, ref)
    publisher.close()
    root = tmp_path / "root"
    local = LocalImages.open(root)
    try:
        record = pull(local, ref)
        assert local.content.read(image.layers()[0]) == image.blobs[image.layers()[0]]
        assert local.is_unpacked(record)
    finally:
        local.close()
    assert_clean(root)
