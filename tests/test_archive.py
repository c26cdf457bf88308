"""save/load of image archives, checked against skopeo and umoci (the real tools)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina.errors import AlreadyExists, DigestMismatch, InvalidManifest, LaminaError, NotFound
from lamina.image import (
    Descriptor,
    Index,
    LocalImages,
    Platform,
    dump_json,
    host_platform,
    media,
    parse_manifest,
)
from lamina.image._archive import load, save
from lamina.image._import import import_rootfs
from lamina.image._store import ImageRecord
from lamina.testing import make_busybox_rootfs

EPOCH = 1_700_000_000
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed")


def run(*args: str | Path) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def skopeo_inspect(ref: str, *flags: str) -> Any:
    return json.loads(run("skopeo", "inspect", *flags, ref))


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("rootfs"))


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalImages]:
    images = LocalImages.open(tmp_path / "root")
    yield images
    images.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[LocalImages]:
    images = LocalImages.open(tmp_path / "fresh")
    yield images
    images.close()


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory, rootfs: Path) -> Path:
    """A two-layer busybox image made by umoci, as an OCI layout directory."""
    if shutil.which("umoci") is None:
        pytest.skip("umoci not installed")
    work = tmp_path_factory.mktemp("umoci")
    layout = work / "layout"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:latest")
    bundle = work / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:latest", bundle)
    shutil.copytree(rootfs, bundle / "rootfs", symlinks=True, dirs_exist_ok=True)
    run("umoci", "repack", "--image", f"{layout}:latest", bundle)
    shutil.rmtree(bundle)
    run("umoci", "unpack", "--image", f"{layout}:latest", bundle)
    (bundle / "rootfs" / "etc" / "motd").write_text("second layer\n")
    run("umoci", "repack", "--image", f"{layout}:latest", bundle)
    run("umoci", "config", "--image", f"{layout}:latest", "--config.cmd", "/bin/sh")
    return layout


def busybox(local: LocalImages, rootfs: Path, ref: str | None, *changes: str) -> ImageRecord:
    return import_rootfs(
        local, rootfs, reference=ref, changes=list(changes), source_date_epoch=EPOCH
    )


def state(local: LocalImages) -> tuple[set[str], list[str], list[str]]:
    """Everything a failed load must leave as it was."""
    blobs = {b.digest for b in local.content.list()}
    ingest = sorted(p.name for p in (local.root / "content" / "ingest").iterdir())
    return blobs, [r.digest for r in local.images.list()], ingest


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {
            m.name: tf.extractfile(m).read()  # type: ignore[union-attr]
            for m in tf.getmembers()
            if m.isfile()
        }


def layer_digests(local: LocalImages, record: ImageRecord) -> list[str]:
    manifest = local.manifest_for(record.manifest_digest)
    return [layer.digest for layer in manifest.layers]


# -- oci-archive


@needs_skopeo
def test_oci_archive_is_read_by_skopeo(local: LocalImages, rootfs: Path, tmp_path: Path) -> None:
    record = busybox(local, rootfs, "example.com/tools/busybox:1.36", "CMD /bin/sh")
    archive = tmp_path / "busybox.tar"
    save(local, ["example.com/tools/busybox:1.36"], archive, format="oci-archive")

    members = tar_members(archive)
    index = json.loads(members["index.json"])
    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert index["manifests"][0]["digest"] == record.digest
    assert index["manifests"][0]["annotations"] == {
        "io.containerd.image.name": "example.com/tools/busybox:1.36",
        "org.opencontainers.image.ref.name": "1.36",
    }
    for name, data in members.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]

    info = skopeo_inspect(f"oci-archive:{archive}")
    assert info["Digest"] == record.digest
    assert info["Layers"] == layer_digests(local, record)
    raw = json.loads(run("skopeo", "inspect", "--raw", f"oci-archive:{archive}"))
    assert raw["config"]["digest"] == record.id

    layout = tmp_path / "copied"
    run("skopeo", "copy", "-q", f"oci-archive:{archive}", f"oci:{layout}:copy")
    copied = json.loads((layout / "index.json").read_text())
    assert copied["manifests"][0]["digest"] == record.digest


def test_save_is_deterministic_and_atomic(local: LocalImages, rootfs: Path, tmp_path: Path) -> None:
    busybox(local, rootfs, "busybox")
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    save(local, ["busybox"], a)
    save(local, ["busybox"], b)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    # A missing blob makes save fail: no archive, no temp file left behind.
    record = local.require("busybox")
    local.content.delete(layer_digests(local, record)[0])
    out = tmp_path / "out"
    out.mkdir()
    for fmt in ("oci-archive", "docker-archive", "oci-dir"):
        with pytest.raises(NotFound):
            save(local, ["busybox"], out / "x.tar", format=fmt)
    assert list(out.iterdir()) == []
    with pytest.raises(NotFound):
        save(local, ["no-such-image"], out / "y.tar")
    assert list(out.iterdir()) == []


def test_oci_round_trip_several_images(
    local: LocalImages, fresh: LocalImages, rootfs: Path, umoci_layout: Path, tmp_path: Path
) -> None:
    a = busybox(local, rootfs, "example.com/a:1")
    local.images.tag("example.com/a:1", "example.com/a:2")
    [b] = load(local, umoci_layout)
    local.images.tag(b.id, "localhost:5000/b:latest")
    dangling = busybox(local, rootfs, None, "ENV DANGLING=1")

    archive = tmp_path / "many.tar"
    # "example.com/a" (no tag) means every tag of the repository, as docker save does.
    save(local, ["example.com/a", "localhost:5000/b", dangling.id[7:19]], archive)
    loaded = load(fresh, archive)
    assert [r.digest for r in loaded] == [a.digest, b.digest, dangling.digest]
    assert [r.id for r in loaded] == [a.id, b.id, dangling.id]
    assert loaded[0].names == ["example.com/a:1", "example.com/a:2"]
    assert loaded[1].names == ["localhost:5000/b:latest"]
    assert loaded[2].names == []
    assert fresh.images.dangling()[0].id == dangling.id
    for record in loaded:
        assert record.image_size == local.images.get_by_digest(record.digest).image_size
    fresh.unpack(loaded[1])


def test_oci_dir_round_trip(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path
) -> None:
    record = busybox(local, rootfs, "busybox:dir")
    out = tmp_path / "layout"
    out.mkdir()  # an empty directory may be written into
    save(local, ["busybox:dir"], out, format="oci-dir")
    assert (out / "oci-layout").is_file()
    assert (out / "blobs" / "sha256" / record.digest[7:]).is_file()
    [loaded] = load(fresh, out)
    assert (loaded.digest, loaded.id) == (record.digest, record.id)
    assert loaded.names == ["docker.io/library/busybox:dir"]
    with pytest.raises(AlreadyExists):
        save(local, ["busybox:dir"], out, format="oci-dir")
    if shutil.which("skopeo"):
        info = skopeo_inspect(f"oci:{out}:dir")
        assert info["Digest"] == record.digest


# -- docker-archive


@needs_skopeo
def test_docker_archive_layout_and_skopeo(
    local: LocalImages, rootfs: Path, umoci_layout: Path, tmp_path: Path
) -> None:
    [record] = load(local, umoci_layout)
    local.images.tag(record.id, "example.com/two-layers:v1")
    archive = tmp_path / "docker.tar"
    save(local, ["example.com/two-layers:v1"], archive, format="docker-archive")

    members = tar_members(archive)
    [entry] = json.loads(members["manifest.json"])
    assert entry["RepoTags"] == ["example.com/two-layers:v1"]
    assert entry["Config"] == f"blobs/sha256/{record.id[7:]}"
    config = json.loads(members[entry["Config"]])
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == 2
    # Docker's loader wants plain tars: each layer is the uncompressed tar of its diff_id.
    for path, diff_id in zip(entry["Layers"], diff_ids, strict=True):
        assert path == f"blobs/sha256/{diff_id[7:]}"
        assert "sha256:" + hashlib.sha256(members[path]).hexdigest() == diff_id
        with tarfile.open(fileobj=io.BytesIO(members[path])) as layer:
            assert layer.getmembers()
    assert json.loads(members["repositories"]) == {
        "example.com/two-layers": {"v1": diff_ids[-1][7:]}
    }
    index = json.loads(members["index.json"])
    oci_manifest = json.loads(members[f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"])
    assert [lyr["digest"] for lyr in oci_manifest["layers"]] == diff_ids

    raw = json.loads(run("skopeo", "inspect", "--raw", f"docker-archive:{archive}"))
    assert raw["config"]["digest"] == record.id  # the image ID survives
    layout = tmp_path / "from-docker"
    run("skopeo", "copy", "-q", f"docker-archive:{archive}", f"oci:{layout}:x")
    # skopeo re-marshals the config when it converts to OCI, so compare its content.
    copied = skopeo_inspect(f"oci:{layout}:x", "--config")
    assert copied["rootfs"]["diff_ids"] == diff_ids


def test_docker_archive_round_trip(
    local: LocalImages, fresh: LocalImages, rootfs: Path, umoci_layout: Path, tmp_path: Path
) -> None:
    a = busybox(local, rootfs, "busybox:1")
    [b] = load(local, umoci_layout)
    archive = tmp_path / "d.tar"
    save(local, ["busybox:1", b.id], archive, format="docker-archive")
    entries = json.loads(tar_members(archive)["manifest.json"])
    assert [e["RepoTags"] for e in entries] == [["busybox:1"], None]
    if shutil.which("skopeo"):  # skopeo picks one image of several by its name
        raw = json.loads(run("skopeo", "inspect", "--raw", f"docker-archive:{archive}:busybox:1"))
        assert raw["config"]["digest"] == a.id
    loaded = load(fresh, archive)
    assert [r.id for r in loaded] == [a.id, b.id]
    assert [r.names for r in loaded] == [["docker.io/library/busybox:1"], []]
    fresh.unpack(loaded[0])
    # Saved again from the new root: the very same archive.
    again = tmp_path / "d2.tar"
    save(fresh, ["busybox:1", b.id], again, format="docker-archive")
    assert again.read_bytes() == archive.read_bytes()


@needs_skopeo
def test_load_docker_archive_written_by_skopeo(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path
) -> None:
    record = busybox(local, rootfs, "busybox", 'CMD ["/bin/sh"]')
    layout = tmp_path / "layout"
    save(local, ["busybox"], layout, format="oci-dir")
    archive = tmp_path / "skopeo-docker.tar"
    run("skopeo", "copy", "-q", f"oci:{layout}:latest", f"docker-archive:{archive}:app:2.0")
    [loaded] = load(fresh, archive)
    assert loaded.id == record.id
    assert loaded.names == ["docker.io/library/app:2.0"]
    manifest = parse_manifest(fresh.content.read(loaded.digest))
    assert manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert [x.media_type for x in manifest.layers] == [  # type: ignore[union-attr]
        "application/vnd.oci.image.layer.v1.tar"
    ]
    assert fresh.diff_ids(loaded) == layer_digests(fresh, loaded)
    fresh.unpack(loaded)

    # Compressed archives are detected by their magic, and streams work (docker load <).
    gz = tmp_path / "skopeo-docker.tar.gz"
    gz.write_bytes(gzip.compress(archive.read_bytes(), compresslevel=1))
    other = LocalImages.open(tmp_path / "other")
    try:
        with open(gz, "rb") as f:
            [streamed] = load(other, f)
        assert streamed.id == record.id
    finally:
        other.close()


@needs_skopeo
def test_load_oci_archive_written_by_skopeo(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path
) -> None:
    record = busybox(local, rootfs, "busybox")
    layout = tmp_path / "layout"
    save(local, ["busybox"], layout, format="oci-dir")
    archive = tmp_path / "skopeo-oci.tar"
    run(
        "skopeo",
        "copy",
        "-q",
        f"oci:{layout}:latest",
        f"oci-archive:{archive}:example.com/named:3",
    )
    [loaded] = load(fresh, archive)
    assert (loaded.digest, loaded.id) == (record.digest, record.id)
    assert loaded.names == ["example.com/named:3"]  # a full name in ref.name is used


@needs_umoci
def test_load_umoci_layout(fresh: LocalImages, umoci_layout: Path) -> None:
    index = json.loads((umoci_layout / "index.json").read_text())
    [desc] = index["manifests"]
    [record] = load(fresh, umoci_layout)
    assert record.digest == desc["digest"]
    assert record.names == []  # a bare tag ("latest") names no repository
    assert len(fresh.diff_ids(record)) == 2
    assert fresh.config(record)["config"]["Cmd"] == ["/bin/sh"]
    chains = fresh.unpack(record)
    assert len(chains) == 2
    # Only what the image references was copied in.
    manifest = fresh.manifest_for(record.digest)
    wanted = {record.digest, manifest.config.digest, *(x.digest for x in manifest.layers)}
    assert {b.digest for b in fresh.content.list()} == wanted


def test_load_handcrafted_multi_image_docker_archive(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path
) -> None:
    """Old-style `docker save` layout: <id>/layer.tar, <config>.json, a symlinked shared
    layer, and two images in one manifest.json (skopeo cannot write this)."""
    a = busybox(local, rootfs, "first:1", "CMD /bin/sh")
    b = busybox(local, rootfs, "second:1", "CMD /bin/ls")
    assert local.diff_ids(a) == local.diff_ids(b)
    layer_digest = layer_digests(local, a)[0]
    with local.content.open(layer_digest) as f:
        layer_tar = gzip.decompress(f.read())

    archive = tmp_path / "old-style.tar"
    entries = []
    with tarfile.open(archive, "w") as tf:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for i, record in enumerate((a, b)):
            v1 = f"{i:064x}"
            add(f"{v1}/VERSION", b"1.0")
            add(f"{v1}/json", b"{}")
            if i == 0:
                add(f"{v1}/layer.tar", layer_tar)
            else:
                link = tarfile.TarInfo(f"{v1}/layer.tar")
                link.type = tarfile.SYMTYPE
                link.linkname = f"../{0:064x}/layer.tar"
                tf.addfile(link)
            add(f"{record.id[7:]}.json", local.content.read(record.id))
            tags = ["first:1"] if i == 0 else None
            entries.append(
                {"Config": f"{record.id[7:]}.json", "RepoTags": tags, "Layers": [f"{v1}/layer.tar"]}
            )
        add("manifest.json", json.dumps(entries).encode())
        add("repositories", b'{"first":{"1":"' + f"{0:064x}".encode() + b'"}}')

    loaded = load(fresh, archive)
    assert [r.id for r in loaded] == [a.id, b.id]
    assert [r.names for r in loaded] == [["docker.io/library/first:1"], []]
    # One uncompressed layer blob serves both images; v1 metadata was not kept.
    assert layer_digests(fresh, loaded[0]) == layer_digests(fresh, loaded[1]) == local.diff_ids(a)
    assert len(list(fresh.content.list())) == 1 + 2 + 2  # layer, configs, manifests


# -- hostile and broken archives


def rewrite(src: Path, dest: Path, edit: Any) -> None:
    """Copy a tar, passing each (name, data) through ``edit``."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if data is not None:
                data = edit(m.name, data)
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)


def test_blob_not_matching_its_digest_is_refused(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path
) -> None:
    record = busybox(local, rootfs, "busybox")
    good = tmp_path / "good.tar"
    save(local, ["busybox"], good)
    layer = layer_digests(local, record)[0]
    bad = tmp_path / "bad.tar"

    def corrupt(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if name.endswith(layer[7:]) else data

    rewrite(good, bad, corrupt)
    before = state(fresh)
    with pytest.raises(DigestMismatch, match=r"bad\.tar"):
        load(fresh, bad)
    assert state(fresh) == before


def test_path_escaping_archive_is_refused(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path
) -> None:
    busybox(local, rootfs, "busybox")
    good = tmp_path / "good.tar"
    save(local, ["busybox"], good, format="docker-archive")
    bad = tmp_path / "escape.tar"

    def escape(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        doc = json.loads(data)
        doc[0]["Layers"][0] = "../../" + doc[0]["Layers"][0]
        return json.dumps(doc).encode()

    rewrite(good, bad, escape)
    before = state(fresh)
    with pytest.raises(InvalidManifest, match="escapes the archive"):
        load(fresh, bad)
    assert state(fresh) == before


def test_plain_layer_not_matching_diff_id_is_refused(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path
) -> None:
    busybox(local, rootfs, "busybox")
    good = tmp_path / "good.tar"
    save(local, ["busybox"], good, format="docker-archive")
    bad = tmp_path / "swapped.tar"

    def drop_index(name: str, data: bytes) -> bytes:
        if name == "manifest.json":  # point the layer at the config: a plain, wrong blob
            doc = json.loads(data)
            doc[0]["Layers"] = [doc[0]["Config"]]
            return json.dumps(doc).encode()
        if name == "index.json":
            return b'{"schemaVersion":2,"manifests":"broken"}'
        return data

    rewrite(good, bad, drop_index)
    before = state(fresh)
    with pytest.raises(DigestMismatch, match="diff_id"):
        load(fresh, bad)
    assert state(fresh) == before


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_archive_is_refused(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path, compress: bool
) -> None:
    busybox(local, rootfs, "busybox")
    good = tmp_path / "good.tar"
    save(local, ["busybox"], good, format="docker-archive")
    data = good.read_bytes()
    if compress:
        data = gzip.compress(data, compresslevel=1)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    before = state(fresh)
    with pytest.raises(LaminaError, match="truncated"):
        load(fresh, cut)
    assert state(fresh) == before


def test_not_an_archive(fresh: LocalImages, tmp_path: Path) -> None:
    empty_tar = tmp_path / "empty.tar"
    with tarfile.open(empty_tar, "w") as tf:
        info = tarfile.TarInfo("hello.txt")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(InvalidManifest, match="not an image archive"):
        load(fresh, empty_tar)
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(InvalidManifest, match="cannot read image archive"):
        load(fresh, junk)
    with pytest.raises(NotFound):
        load(fresh, tmp_path / "missing.tar")
    assert list(fresh.content.list()) == []


def test_load_multi_platform_index(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path
) -> None:
    """An index whose other platforms are absent: the host's image is loaded, and saving
    it again writes the one manifest that is complete."""
    record = busybox(local, rootfs, "busybox")
    layout = tmp_path / "layout"
    save(local, ["busybox"], layout, format="oci-dir")
    size = len(local.content.read(record.digest))
    absent = Descriptor(
        media.OCI_MANIFEST, "sha256:" + "0" * 64, 123, platform=Platform("linux", "s390x")
    )
    host = Descriptor(media.OCI_MANIFEST, record.digest, size, platform=host_platform())
    index = dump_json(Index(media.OCI_INDEX, [absent, host]))
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    (layout / "blobs" / "sha256" / index_digest[7:]).write_bytes(index)
    top = Descriptor(
        media.OCI_INDEX,
        index_digest,
        len(index),
        annotations={"org.opencontainers.image.ref.name": "example.com/multi:1"},
    )
    (layout / "index.json").write_bytes(dump_json(Index(media.OCI_INDEX, [top])))

    [loaded] = load(fresh, layout)
    assert (loaded.digest, loaded.manifest_digest) == (index_digest, record.digest)
    assert loaded.id == record.id
    assert loaded.names == ["example.com/multi:1"]

    again = tmp_path / "again"
    save(fresh, ["example.com/multi:1"], again, format="oci-dir")
    saved = json.loads((again / "index.json").read_text())
    assert [m["digest"] for m in saved["manifests"]] == [record.digest]


def test_load_extracted_docker_archive_directory(
    local: LocalImages, fresh: LocalImages, rootfs: Path, tmp_path: Path
) -> None:
    record = busybox(local, rootfs, "busybox:x")
    archive = tmp_path / "d.tar"
    save(local, ["busybox:x"], archive, format="docker-archive")
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    with tarfile.open(archive) as tf:
        tf.extractall(extracted)
    (extracted / "index.json").unlink()  # docker-archive read through manifest.json alone
    (extracted / "oci-layout").unlink()
    [loaded] = load(fresh, extracted)
    assert loaded.id == record.id and loaded.names == ["docker.io/library/busybox:x"]
