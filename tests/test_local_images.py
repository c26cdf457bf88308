"""``rmi`` semantics of LocalImages: names versus IDs, and one image held in
several records."""

from __future__ import annotations

from pathlib import Path

from lamina.image import LocalImages, import_rootfs, load, save
from lamina.testing import make_busybox_rootfs


def _image(tmp_path: Path) -> tuple[LocalImages, str]:
    local = LocalImages.open(tmp_path / "root")
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    rec = import_rootfs(local, rootfs, reference="a:1")
    return local, rec.id


def test_rmi_by_digest_name_removes_only_that_name(tmp_path: Path) -> None:
    local, image_id = _image(tmp_path)
    rec = local.images.resolve("a:1")
    digest_name = f"docker.io/library/a@{rec.digest}"
    local.images.put(rec, [digest_name])
    result = local.remove(f"a@{rec.digest}")
    assert result.untagged == [digest_name]
    assert result.deleted == []
    assert local.images.resolve("a:1").id == image_id


def test_rmi_by_id_removes_every_record_of_the_image(tmp_path: Path) -> None:
    local, image_id = _image(tmp_path)
    oci = tmp_path / "a.oci.tar"
    docker = tmp_path / "a.docker.tar"
    save(local, ["a:1"], oci, format="oci-archive")
    save(local, ["a:1"], docker, format="docker-archive")
    other = LocalImages.open(tmp_path / "other")
    load(other, oci)
    load(other, docker)
    records = other.images.with_id(image_id)
    assert len(records) == 2  # same config, different manifests
    result = other.remove(image_id.removeprefix("sha256:")[:12])
    assert result.deleted[0] == image_id
    assert other.images.list() == []
    assert list(other.content.list()) == []


def test_load_keeps_every_platform_of_an_index_and_push_sends_it_whole(
    tmp_path: Path, registry: object
) -> None:
    from registry_server import build_index, layer_tar

    from lamina.registry import pull, push

    image = build_index(
        {
            "linux/amd64": [layer_tar({"amd": "1"})],
            "linux/arm64/v8": [layer_tar({"arm": "1"})],
        }
    )
    layout = image.write_oci_layout(tmp_path / "layout", tag="multi")
    local = LocalImages.open(tmp_path / "root")
    (rec,) = load(local, layout)
    for digest in image.blobs:
        assert local.content.exists(digest), digest
    host = registry.host  # type: ignore[attr-defined]
    local.images.tag(rec.id, f"{host}/multi:1")
    pushed = push(local, f"{host}/multi:1")
    assert pushed == rec.digest
    fresh = LocalImages.open(tmp_path / "fresh")
    arm = pull(
        fresh,
        f"{host}/multi:1",
        platform=__import__("lamina.image").image.parse_platform("linux/arm64"),
    )
    assert arm.platform.startswith("linux/arm64")
