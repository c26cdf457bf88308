"""``rmi`` as Docker does it (daemon/images/image_delete.go): by name, a repository's
digest names go with its last tag and the image with its last name; by ID, an image
tagged more than once needs ``-f``; an image a container uses is refused. Checked
through the CLI on images pulled from a real registry (pulls add ``repo@digest``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from registry_server import RegistryServer
from runtime_fixtures import IMAGE_REF, cli_image_root, lamina_cli, lamina_ok

from lamina.image import LocalImages, import_rootfs
from lamina.testing import make_busybox_rootfs


@pytest.fixture(scope="module")
def pushed(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox image in the registry: ``<registry>/rmi/bb:1``."""
    base = tmp_path_factory.mktemp("rmi-src")
    ref = f"{registry.host}/rmi/bb:1"
    local = LocalImages.open(base / "root")
    import_rootfs(local, make_busybox_rootfs(base / "rootfs"), reference=ref)
    local.close()
    lamina_ok(base / "root", "push", "-q", ref)
    return ref


def _pulled(tmp_path: Path, ref: str) -> tuple[Path, dict[str, object]]:
    root = tmp_path / "root"
    lamina_ok(root, "pull", "-q", ref)
    return root, _inspect(root, ref)


def _inspect(root: Path, name: str) -> dict[str, object]:
    data: list[dict[str, object]] = json.loads(lamina_ok(root, "image", "inspect", name))
    return data[0]


def _blobs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "content" / "blobs" / "sha256").iterdir())


def _error(root: Path, *args: str) -> str:
    r = lamina_cli(root, *args)
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    (line,) = r.stderr.splitlines()
    assert line.startswith("lamina: error: ")
    return line.removeprefix("lamina: error: ")


def test_last_tag_takes_the_digest_name_and_the_image(tmp_path: Path, pushed: str) -> None:
    root, info = _pulled(tmp_path, pushed)
    (digest_name,) = info["RepoDigests"]  # type: ignore[misc]
    out = lamina_ok(root, "rmi", pushed)
    assert out.splitlines()[:3] == [
        f"Untagged: {pushed}",
        f"Untagged: {digest_name}",
        f"Deleted: {info['Id']}",
    ]
    assert lamina_ok(root, "images", "-q") == ""
    assert _blobs(root) == []
    assert list((root / "snapshots").iterdir()) == []


def test_another_tag_of_the_repository_keeps_its_digest_name(tmp_path: Path, pushed: str) -> None:
    root, info = _pulled(tmp_path, pushed)
    (digest_name,) = info["RepoDigests"]  # type: ignore[misc]
    other = pushed.rsplit(":", 1)[0] + ":2"
    lamina_ok(root, "tag", pushed, other)
    assert lamina_ok(root, "rmi", pushed) == f"Untagged: {pushed}\n"
    assert _inspect(root, other)["RepoDigests"] == [digest_name]
    out = lamina_ok(root, "rmi", other)
    assert out.splitlines()[:3] == [
        f"Untagged: {other}",
        f"Untagged: {digest_name}",
        f"Deleted: {info['Id']}",
    ]


def test_a_tag_in_another_repository_keeps_the_image(tmp_path: Path, pushed: str) -> None:
    root, info = _pulled(tmp_path, pushed)
    (digest_name,) = info["RepoDigests"]  # type: ignore[misc]
    lamina_ok(root, "tag", pushed, "elsewhere:1")
    out = lamina_ok(root, "rmi", pushed)
    assert out == f"Untagged: {pushed}\nUntagged: {digest_name}\n"
    left = _inspect(root, "elsewhere:1")
    assert left["Id"] == info["Id"]
    assert left["RepoTags"] == ["elsewhere:1"] and left["RepoDigests"] == []


def test_by_id_a_tag_and_its_digest_name_are_one_reference(tmp_path: Path, pushed: str) -> None:
    root, info = _pulled(tmp_path, pushed)
    (digest_name,) = info["RepoDigests"]  # type: ignore[misc]
    image_id = str(info["Id"])
    out = lamina_ok(root, "rmi", image_id.removeprefix("sha256:")[:12])
    assert set(out.splitlines()[:3]) == {
        f"Untagged: {pushed}",
        f"Untagged: {digest_name}",
        f"Deleted: {image_id}",
    }
    assert _blobs(root) == []


def test_by_id_several_repositories_must_be_forced(tmp_path: Path, pushed: str) -> None:
    root, info = _pulled(tmp_path, pushed)
    image_id = str(info["Id"])
    lamina_ok(root, "tag", pushed, "elsewhere:1")
    short = image_id.removeprefix("sha256:")[:12]
    assert _error(root, "rmi", short) == (
        f"conflict: unable to delete {short} (must be forced) - "
        "image is referenced in multiple repositories"
    )
    assert _inspect(root, image_id)["RepoTags"] == [pushed, "elsewhere:1"]
    out = lamina_ok(root, "rmi", "-f", short)
    assert f"Deleted: {image_id}" in out.splitlines()
    assert {f"Untagged: {pushed}", "Untagged: elsewhere:1"} <= set(out.splitlines())
    assert lamina_ok(root, "images", "-q") == ""


def test_an_image_with_only_a_digest_name(tmp_path: Path, pushed: str) -> None:
    root = tmp_path / "root"
    digest = _inspect(_pulled(tmp_path / "first", pushed)[0], pushed)["Digest"]
    by_digest = f"{pushed.rsplit(':', 1)[0]}@{digest}"
    lamina_ok(root, "pull", "-q", by_digest)
    info = _inspect(root, by_digest)
    assert info["RepoTags"] == [] and info["RepoDigests"] == [by_digest]
    out = lamina_ok(root, "rmi", by_digest)
    assert out.splitlines()[:2] == [f"Untagged: {by_digest}", f"Deleted: {info['Id']}"]
    assert _blobs(root) == []


def test_a_dangling_image_goes_by_id(tmp_path: Path) -> None:
    root = tmp_path / "root"
    local = LocalImages.open(root)
    record = import_rootfs(local, make_busybox_rootfs(tmp_path / "rootfs"))
    local.close()
    assert lamina_ok(root, "rmi", record.id).splitlines()[0] == f"Deleted: {record.id}"
    assert _blobs(root) == []


def test_an_image_a_container_uses(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = cli_image_root(tmp_path_factory, "rmi-held")
    image_id = _inspect(root, IMAGE_REF)["Id"]
    short = str(image_id).removeprefix("sha256:")[:12]
    cid = lamina_ok(root, "create", IMAGE_REF, "true").strip()
    try:
        assert _error(root, "rmi", IMAGE_REF) == (
            f'conflict: unable to remove repository reference "{IMAGE_REF}" (must force) - '
            f"container {cid[:12]} is using its referenced image {short}"
        )
        assert _error(root, "rmi", "-f", short) == (
            f"conflict: unable to delete {short} (cannot be forced) - "
            f"image is being used by container {cid[:12]}"
        )
        # Forced by name: the name goes, the image stays for its container (dangling).
        assert lamina_ok(root, "rmi", "-f", IMAGE_REF) == f"Untagged: {IMAGE_REF}\n"
        assert lamina_ok(root, "images", "-q", "-f", "dangling=true").split() == [short]
        lamina_ok(root, "start", "-a", cid)
    finally:
        lamina_cli(root, "rm", "-f", cid)
    assert lamina_ok(root, "rmi", short).splitlines()[0] == f"Deleted: {image_id}"
