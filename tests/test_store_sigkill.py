"""Image-plane commands killed with SIGKILL at measured points (during a download, an
unpack, a save, a load, an import, a build's COPY, layer commit and RUN step): the next
command recovers (a pull resumes its download with Range), and a leak check finds no
ingest, no scratch directory, no lease, no mount under the root and no temp file beside
a save's output. Real registry, real ``lamina`` processes."""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_server import RegistryServer, TestImage, build_image, busybox_layer, layer_tar
from runtime_fixtures import (
    import_busybox,
    lamina_ok,
    overlay_mounts,
    remove_all_containers,
)
from store_fixtures import (
    StallProxy,
    assert_clean,
    finish,
    ingests,
    kill_when,
    leftovers,
    released,
    start,
)

from lamina import _leases
from lamina._mount import unmount_under
from lamina.image import LocalImages
from lamina.registry import pull, push
from lamina.testing import make_busybox_rootfs

BIG = 24 * 1024 * 1024

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, runc)")


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A lamina root for a build test; whatever a failed test leaves running or mounted
    there is removed afterwards."""
    root = tmp_path / "root"
    yield root
    if (root / "containers.db").exists():
        remove_all_containers(root)
    unmount_under(root)


@pytest.fixture(scope="module")
def big_image(
    registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TestImage, str]:
    """busybox and a big layer of random bytes, in the registry: (image, path)."""
    image = build_image(
        [busybox_layer(), layer_tar({"data/big": os.urandom(BIG)})], cmd=["/bin/sh"], compress=False
    )
    publisher = LocalImages.open(tmp_path_factory.mktemp("publisher") / "root")
    ref = f"{registry.host}/killed/big:1"
    image.store(publisher, ref)
    push(publisher, ref)
    publisher.close()
    return image, "killed/big:1"


@pytest.fixture(scope="module")
def big_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A busybox root filesystem with a big file, and its tarball beside it."""
    from runtime_fixtures import busybox_rootfs

    base = tmp_path_factory.mktemp("big-rootfs")
    rootfs = busybox_rootfs(base / "rootfs")
    (rootfs / "data").mkdir()
    (rootfs / "data" / "big").write_bytes(os.urandom(BIG))
    with tarfile.open(base / "rootfs.tar", "w") as tar:
        tar.add(rootfs, arcname=".")
    return rootfs


def _unpacked(root: Path, ref: str) -> bool:
    local = LocalImages.open(root)
    try:
        return local.is_unpacked(local.require(ref))
    finally:
        local.close()


def _snapshot_scratch(root: Path) -> bool:
    snaps = root / "snapshots"
    return snaps.is_dir() and any(p.name.startswith(".tmp-") for p in snaps.iterdir())


def _stalled_pull(registry: RegistryServer, big_image: tuple[TestImage, str], root: Path) -> str:
    """Start a pull of the big image, SIGKILL it while its big layer is half-way
    down (and half-way unpacked); returns the big layer's digest."""
    image, path = big_image
    big = image.layers()[1]
    with released(StallProxy(registry.port, big, after=BIG // 2)) as proxy:
        puller = start(root, "pull", f"{proxy.host}/{path}")
        kill_when(puller, proxy.stalled.is_set)
    found = leftovers(root)
    assert found["ingests"] and found["snapshot scratch"], found
    return big


def test_killed_during_download_the_next_pull_resumes_and_cleans_up(
    registry: RegistryServer, big_image: tuple[TestImage, str], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    big = _stalled_pull(registry, big_image, root)
    key = hashlib.sha256(f"pull-{big}".encode()).hexdigest()  # pull's ingest of the layer
    kept = (root / "content" / "ingest" / key / "data").stat().st_size
    assert 0 < kept <= BIG // 2 + 65536
    with released(StallProxy(registry.port, "none", after=0)) as proxy:
        lamina_ok(root, "pull", "-q", f"{proxy.host}/{big_image[1]}")
        (resumed,) = proxy.seen("GET", big)
    assert resumed.header("Range") == f"bytes={kept}-"
    assert _unpacked(root, f"{proxy.host}/{big_image[1]}")
    assert_clean(root)


def test_killed_during_download_image_prune_frees_everything(
    registry: RegistryServer, big_image: tuple[TestImage, str], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    _stalled_pull(registry, big_image, root)
    lamina_ok(root, "image", "prune", "-f")
    assert_clean(root)
    assert list((root / "content" / "blobs" / "sha256").iterdir()) == []
    assert [p.name for p in (root / "snapshots").iterdir()] == []


def test_a_killed_pulls_download_is_kept_for_a_day_then_goes(
    registry: RegistryServer, big_image: tuple[TestImage, str], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    big = _stalled_pull(registry, big_image, root)
    key = hashlib.sha256(f"pull-{big}".encode()).hexdigest()
    data = root / "content" / "ingest" / key / "data"
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    lamina_ok(root, "import", str(rootfs), "other:1")  # any command that writes images
    assert data.exists()  # a retried pull resumes it
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(data, (two_days_ago, two_days_ago))
    lamina_ok(root, "import", str(rootfs), "other:2")
    assert not data.parent.exists()


def test_killed_during_unpack(
    registry: RegistryServer, big_image: tuple[TestImage, str], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ref = f"{registry.host}/{big_image[1]}"
    local = LocalImages.open(root)
    pull(local, ref, unpack=False)  # the blobs are here: the next pull only unpacks
    local.close()
    kill_when(start(root, "pull", ref), lambda: _snapshot_scratch(root))
    lamina_ok(root, "pull", "-q", ref)
    assert _unpacked(root, ref)
    assert_clean(root)


def test_killed_while_saving(
    registry: RegistryServer, big_image: tuple[TestImage, str], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    ref = f"{registry.host}/{big_image[1]}"
    lamina_ok(root, "pull", "-q", ref)
    out = tmp_path / "out" / "big.tar"
    out.parent.mkdir()

    def temp_file() -> bool:
        return any(p.name.startswith(".big.tar.tmp-") for p in out.parent.iterdir())

    kill_when(start(root, "save", "-o", str(out), ref), temp_file)
    assert temp_file() and not out.exists()
    lamina_ok(root, "save", "-o", str(out), ref)
    assert out.stat().st_size > BIG
    assert_clean(root, out)


def test_killed_while_loading(
    registry: RegistryServer, big_image: tuple[TestImage, str], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    ref = f"{registry.host}/{big_image[1]}"
    lamina_ok(source, "pull", "-q", ref)
    archive = tmp_path / "big.tar"
    lamina_ok(source, "save", "--format", "oci-archive", "-o", str(archive), ref)
    root = tmp_path / "root"
    kill_when(start(root, "load", "-i", str(archive)), lambda: ingests(root))
    assert lamina_ok(root, "load", "-i", str(archive)) == f"Loaded image: {ref}\n"
    assert_clean(root)


def test_killed_while_importing(big_rootfs: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    tarball = big_rootfs.parent / "rootfs.tar"
    kill_when(start(root, "import", str(tarball), "big:1"), lambda: ingests(root))
    lamina_ok(root, "import", str(tarball), "big:1")
    assert_clean(root)


def _build_context(tmp_path: Path, big_rootfs: Path, dockerfile: str) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    os.link(big_rootfs / "data" / "big", context / "big")
    (context / "Dockerfile").write_text(dockerfile)
    return context


def _build_mounted(root: Path) -> bool:
    return any("/build-tmp/" in m for m in overlay_mounts(root))


@needs_root
def test_killed_during_a_build_copy(big_rootfs: Path, tmp_path: Path, root: Path) -> None:
    import_busybox(root, tmp_path, "base:1")
    context = _build_context(tmp_path, big_rootfs, "FROM base:1\nCOPY big /big\n")
    kill_when(start(root, "build", "-t", "built:1", str(context)), lambda: _build_mounted(root))
    found = leftovers(root)
    assert found["mounts"] and found["build scratch"], found
    lamina_ok(root, "image", "prune", "-f")
    assert_clean(root)
    lamina_ok(root, "build", "-q", "-t", "built:1", str(context))
    assert lamina_ok(root, "run", "--rm", "built:1", "wc", "-c", "/big").split()[0] == str(BIG)
    assert_clean(root)


@needs_root
def test_killed_while_a_build_commits_its_layer(
    big_rootfs: Path, tmp_path: Path, root: Path
) -> None:
    import_busybox(root, tmp_path, "base:1")
    context = _build_context(tmp_path, big_rootfs, "FROM base:1\nCOPY big /big\n")
    kill_when(start(root, "build", "-t", "built:1", str(context)), lambda: ingests(root))
    lamina_ok(root, "image", "prune", "-f")
    assert_clean(root)
    lamina_ok(root, "build", "-q", "-t", "built:1", str(context))
    assert_clean(root)


@needs_root
def test_killed_while_a_run_step_runs(tmp_path: Path, root: Path) -> None:
    from lamina.engine import open_engine

    import_busybox(root, tmp_path, "base:1")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM base:1\n"
        "RUN --mount=type=cache,id=kill,target=/c sh -c 'touch /c/started; exec sleep 600'\n"
    )
    mounts = root / "build-cache" / "mounts"

    def running() -> bool:
        return mounts.is_dir() and any((d / "started").exists() for d in mounts.iterdir())

    kill_when(start(root, "build", str(context)), running)
    engine = open_engine(root)
    (step,) = engine.store.list()  # the raw records: no reconcile
    engine.close()
    # The step container is disposable work of the killed build: its owner is dead.
    assert step.config.owner.startswith("build-")
    assert not _leases.alive(root, step.config.owner)
    # The next container command removes it (its owner lease is dead), says so in
    # one line, and then image prune frees what the build left.
    code, out, err = finish(start(root, "ps", "-a", "-q"))
    assert code == 0 and out == "", (out, err)
    assert f"container {step.id[:12]}" in err and "owner" in err, err
    lamina_ok(root, "image", "prune", "-f")
    assert_clean(root)
