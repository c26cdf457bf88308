"""Hostile layers are refused when an image arrives (load, import, pull), not at its
first ``create``: one line naming the layer and the entry, and nothing stored (no
record, blob, snapshot, ingest or temp file). A clean archive loads unpacked, ready
to run, as Docker's ``load`` leaves it."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from registry_server import RegistryServer, TestImage, build_image, busybox_layer, layer_tar
from runtime_fixtures import error_line, lamina_cli, lamina_ok, store_leftovers

from lamina.image import LocalImages
from lamina.image._archive import save
from lamina.registry import push

# One tar entry: (name, type, linkname, data).
Entry = tuple[str, bytes, str, bytes]


def hostile_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, linkname, data in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = linkname
            info.mode = 0o644
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


REG, SYM, LNK = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE

# What apply_layer refuses, with the entry the error must name.
HOSTILE: dict[str, tuple[list[Entry], str]] = {
    "dotdot": ([("../../evil", REG, "", b"pwned\n")], "'../../evil'"),
    "absolute-dotdot": ([("/../../evil", REG, "", b"pwned\n")], "'/../../evil'"),
    "hardlink-absolute": ([("evil", LNK, "/etc/shadow", b"")], "'/etc/shadow'"),
    "hardlink-dotdot": ([("evil", LNK, "../../../etc/shadow", b"")], "'evil'"),
    "symlink-loop": (
        [("a", SYM, "b", b""), ("b", SYM, "a", b""), ("a/evil", REG, "", b"x")],
        "'a/evil'",
    ),
    "file-as-directory": ([("f", REG, "", b"x"), ("f/evil", REG, "", b"x")], "'f/evil'"),
}


def hostile_image(case: str) -> tuple[TestImage, str]:
    """A two-layer image whose second layer is HOSTILE[case]; (image, its diff_id)."""
    evil = hostile_tar(HOSTILE[case][0])
    image = build_image([busybox_layer(), evil])
    return image, "sha256:" + hashlib.sha256(evil).hexdigest()


def assert_nothing_stored(root: Path) -> None:
    assert lamina_ok(root, "images", "-a", "-q") == ""
    assert store_leftovers(root) == []


def assert_one_error_line(stderr: str, *parts: str) -> None:
    line = error_line(stderr)
    for part in parts:
        assert part in line, (part, line)


def archive_of(image: TestImage, tmp_path: Path, fmt: str) -> Path:
    """``image`` saved by lamina as ``fmt`` from a scratch root (store does not unpack)."""
    publisher = LocalImages.open(tmp_path / "publisher")
    try:
        image.store(publisher, "example.com/hostile/img:1")
        out = tmp_path / f"img-{fmt}.tar"
        save(publisher, ["example.com/hostile/img:1"], out, format=fmt)  # type: ignore[arg-type]
        return out
    finally:
        publisher.close()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_load_refuses_a_hostile_layer_and_stores_nothing(case: str, tmp_path: Path) -> None:
    image, diff_id = hostile_image(case)
    archive = archive_of(image, tmp_path, "oci-archive")
    root = tmp_path / "root"
    r = lamina_cli(root, "load", "-i", str(archive))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Loaded image" not in r.stdout
    assert_one_error_line(r.stderr, str(archive), f"layer {diff_id}", HOSTILE[case][1])
    assert_nothing_stored(root)
    assert not list(tmp_path.rglob("evil")), "an entry escaped"


def test_load_docker_archive_with_a_hostile_layer(tmp_path: Path) -> None:
    image, diff_id = hostile_image("hardlink-dotdot")
    archive = archive_of(image, tmp_path, "docker-archive")
    root = tmp_path / "root"
    r = lamina_cli(root, "load", "-i", str(archive))
    assert r.returncode == 1
    assert_one_error_line(r.stderr, f"layer {diff_id}", "'evil'", "escapes the layer root")
    assert_nothing_stored(root)


def test_hostile_layer_shared_with_a_present_image_keeps_that_image(tmp_path: Path) -> None:
    """Rolling back removes only what the failed load made: the snapshot of a base
    layer an image already had stays."""
    root = tmp_path / "root"
    good = build_image([busybox_layer()])
    lamina_ok(root, "load", "-i", str(archive_of(good, tmp_path / "good", "oci-archive")))
    before = sorted(p.name for p in (root / "snapshots").iterdir())
    assert len(before) == 1
    image, _ = hostile_image("dotdot")
    r = lamina_cli(root, "load", "-i", str(archive_of(image, tmp_path, "oci-archive")))
    assert r.returncode == 1
    assert sorted(p.name for p in (root / "snapshots").iterdir()) == before
    assert len(lamina_ok(root, "images", "-q").split()) == 1


def test_clean_multi_layer_archive_loads_unpacked(tmp_path: Path) -> None:
    image = build_image(
        [
            busybox_layer(),
            layer_tar({"etc/motd": b"hello\n"}),
            layer_tar({"etc/.wh.motd": b"", "srv/data": b"x" * 4096}),
        ]
    )
    archive = archive_of(image, tmp_path, "oci-archive")
    root = tmp_path / "root"
    out = lamina_ok(root, "load", "-i", str(archive))
    assert "Loaded image: example.com/hostile/img:1" in out
    (inspected,) = json.loads(lamina_ok(root, "image", "inspect", "example.com/hostile/img:1"))
    assert inspected["Unpacked"] is True
    assert len([p for p in (root / "snapshots").iterdir() if not p.name.startswith(".")]) == 3


# ---------------------------------------------------------------------------- import


@pytest.mark.parametrize("case", ["hardlink-absolute", "file-as-directory", "symlink-loop"])
def test_import_refuses_a_hostile_tarball_and_stores_nothing(case: str, tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(hostile_tar([("etc/hostname", REG, "", b"x\n"), *HOSTILE[case][0]]))
    root = tmp_path / "root"
    r = lamina_cli(root, "import", str(tarball), "example.com/hostile/imported:1")
    assert r.returncode == 1, (r.stdout, r.stderr)
    entry = HOSTILE[case][1].replace("'/etc/shadow'", "'etc/shadow'")  # import relativises
    assert_one_error_line(r.stderr, f"cannot import {tarball}", "layer sha256:", entry)
    assert_nothing_stored(root)


# ---------------------------------------------------------------------------- pull


def test_pull_of_a_hostile_layer_stores_nothing(registry: RegistryServer, tmp_path: Path) -> None:
    image, diff_id = hostile_image("dotdot")
    publisher = LocalImages.open(tmp_path / "publisher")
    ref = f"{registry.host}/hostile/pulled:1"
    try:
        image.store(publisher, ref)
        push(publisher, ref)
    finally:
        publisher.close()
    root = tmp_path / "root"
    r = lamina_cli(root, "pull", ref)
    assert r.returncode == 1
    assert_one_error_line(r.stderr, f"layer {diff_id}", "'../../evil'", "escapes the layer root")
    assert_nothing_stored(root)
