"""Volumes: create/get/list/remove/prune on a real directory, and Docker's copy-up."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from lamina.errors import InUse, LaminaError, NotFound
from lamina.runtime import _volumes as volumes
from lamina.runtime._volumes import VolumeStore, disk_usage


@pytest.fixture
def store(tmp_path: Path) -> VolumeStore:
    return VolumeStore(tmp_path / "volumes")


def test_create_named_volume(store: VolumeStore) -> None:
    vol = store.create("data", labels={"app": "web"})
    assert vol.name == "data"
    assert vol.driver == "local"
    assert not vol.anonymous
    assert vol.labels == {"app": "web"}
    assert vol.mountpoint == store.root / "data" / "_data"
    assert vol.mountpoint.is_dir()
    assert stat.S_IMODE(vol.mountpoint.stat().st_mode) == 0o755
    assert vol.created > 0
    assert store.get("data") == vol
    assert store.path("data") == vol.mountpoint
    info = vol.to_dict()
    assert info["Name"] == "data" and info["Driver"] == "local" and info["Scope"] == "local"
    assert info["Labels"] == {"app": "web"}
    assert info["Mountpoint"] == str(vol.mountpoint)
    assert str(info["CreatedAt"]).endswith("Z")


def test_create_is_idempotent(store: VolumeStore) -> None:
    first = store.create("data")
    (first.mountpoint / "file").write_text("kept")
    again = store.create("data")
    assert again == first
    assert (again.mountpoint / "file").read_text() == "kept"


def test_concurrent_creates_of_one_name_agree(store: VolumeStore) -> None:
    results: list[float] = []

    def make() -> None:
        results.append(store.create("shared").created)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert [v.name for v in store.list()] == ["shared"]
    assert [e for e in os.listdir(store.root) if e.startswith(".")] == []


def test_anonymous_volume(store: VolumeStore) -> None:
    vol = store.create()
    assert vol.anonymous
    assert len(vol.name) == 64 and all(c in "0123456789abcdef" for c in vol.name)
    assert vol.to_dict()["Labels"] == {"com.docker.volume.anonymous": ""}
    assert store.create().name != vol.name


@pytest.mark.parametrize("name", ["a", "-x", ".x", "_x", "a/b", "../etc", "a b", "é1", ""])
def test_invalid_names_are_refused(store: VolumeStore, name: str) -> None:
    with pytest.raises(LaminaError, match="invalid characters for a local volume name"):
        store.create(name)
    assert os.listdir(store.root) == []


def test_valid_names(store: VolumeStore) -> None:
    for name in ("ab", "A9", "my_vol.1-x", "0x"):
        assert store.create(name).name == name


def test_get_missing(store: VolumeStore) -> None:
    with pytest.raises(NotFound, match=r"^volume nope not found$"):
        store.get("nope")
    with pytest.raises(NotFound, match=r"^volume nope not found$"):
        store.path("nope")
    assert not store.exists("nope")


def test_list_sorted_and_skips_temporaries(store: VolumeStore) -> None:
    store.create("zeta")
    store.create("alpha")
    (store.root / ".tmp-beta-1234").mkdir()  # an interrupted create
    (store.root / ".rm-gamma-1234" / "_data").mkdir(parents=True)  # an interrupted remove
    assert [v.name for v in store.list()] == ["alpha", "zeta"]
    store.clean_temporaries()
    assert sorted(os.listdir(store.root)) == ["alpha", "zeta"]


def test_remove(store: VolumeStore) -> None:
    vol = store.create("data")
    (vol.mountpoint / "sub").mkdir()
    (vol.mountpoint / "sub" / "f").write_text("x")
    store.remove("data", users=lambda name: [])
    assert not store.exists("data")
    assert os.listdir(store.root) == []
    with pytest.raises(NotFound, match=r"^volume data not found$"):
        store.remove("data")
    store.remove("data", force=True)  # missing is fine when forced


def test_remove_in_use_is_refused_even_forced(store: VolumeStore) -> None:
    store.create("data")

    def users(name: str) -> list[str]:
        return ["c0ffee"] if name == "data" else []

    for force in (False, True):
        with pytest.raises(InUse, match=r"^volume data is in use by container c0ffee$"):
            store.remove("data", force=force, users=users)
    assert store.exists("data")


def test_prune_takes_unused_anonymous_volumes_only(store: VolumeStore) -> None:
    named = store.create("named")
    used = store.create()
    unused = store.create()
    (unused.mountpoint / "big").write_bytes(b"x" * 100_000)

    def users(name: str) -> list[str]:
        return ["ctr1"] if name == used.name else []

    result = store.prune(users)
    assert result.removed == [unused.name]
    assert result.reclaimed >= 100_000
    assert {v.name for v in store.list()} == {named.name, used.name}
    result = store.prune(users, all=True)
    assert result.removed == [named.name]
    assert [v.name for v in store.list()] == [used.name]


def _image_tree(root: Path) -> Path:
    """A directory as an image would have it at a mount target."""
    src = root / "image" / "var" / "lib" / "app"
    (src / "conf").mkdir(parents=True)
    (src / "conf" / "app.conf").write_text("setting=1\n")
    os.chmod(src / "conf" / "app.conf", 0o640)
    os.chown(src / "conf" / "app.conf", 1000, 1001)
    (src / "bin").mkdir()
    (src / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    os.chown(src / "bin" / "tool", 0, 0)
    os.chmod(src / "bin" / "tool", 0o4755)
    os.link(src / "conf" / "app.conf", src / "hardlink")
    os.symlink("/etc/passwd", src / "abs-link")  # copied as a link, never followed
    os.lchown(src / "abs-link", 7, 8)
    os.mkfifo(src / "fifo", 0o600)
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.setxattr(src / "conf" / "app.conf", "user.origin", b"image")
    os.utime(src / "conf" / "app.conf", ns=(1_000_000_000, 2_000_000_000))
    os.chown(src / "conf", 33, 33)
    os.chmod(src / "conf", 0o750)
    os.utime(src / "conf", ns=(3_000_000_000, 4_000_000_000))
    os.chown(src, 999, 998)
    os.chmod(src, 0o770)
    return src


def test_populate_copies_up_into_a_new_volume(store: VolumeStore, tmp_path: Path) -> None:
    src = _image_tree(tmp_path)
    vol = store.create()
    assert store.populate(vol, src)
    data = vol.mountpoint
    conf = data / "conf" / "app.conf"
    assert conf.read_text() == "setting=1\n"
    st = os.lstat(conf)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o640)
    assert st.st_mtime_ns == 2_000_000_000
    assert os.getxattr(conf, "user.origin") == b"image"
    tool = os.lstat(data / "bin" / "tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755  # setuid survives the chown
    assert os.lstat(data / "hardlink").st_ino == st.st_ino
    assert os.readlink(data / "abs-link") == "/etc/passwd"
    assert os.lstat(data / "abs-link").st_uid == 7
    assert stat.S_ISFIFO(os.lstat(data / "fifo").st_mode)
    null = os.lstat(data / "null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    d = os.lstat(data / "conf")
    assert (d.st_uid, stat.S_IMODE(d.st_mode), d.st_mtime_ns) == (33, 0o750, 4_000_000_000)
    root = os.lstat(data)
    assert (root.st_uid, root.st_gid, stat.S_IMODE(root.st_mode)) == (999, 998, 0o770)
    assert sorted(os.listdir(data.parent)) == ["_data", "volume.json"]


def test_populate_only_once(store: VolumeStore, tmp_path: Path) -> None:
    src = _image_tree(tmp_path)
    vol = store.create("data")
    (vol.mountpoint / "mine").write_text("user data")
    assert not store.populate("data", src)
    assert os.listdir(vol.mountpoint) == ["mine"]


def test_populate_without_image_content(store: VolumeStore, tmp_path: Path) -> None:
    vol = store.create("data")
    assert not store.populate(vol, tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    assert not store.populate(vol, tmp_path / "file")
    assert os.listdir(vol.mountpoint) == []


def test_failed_populate_leaves_the_volume_empty(
    store: VolumeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    (src / "broken").write_text("b")
    vol = store.create("data")
    real_copy_meta = volumes._copy_meta

    def failing(s: str, d: str, st: os.stat_result) -> None:
        if s.endswith("broken"):
            raise OSError(errno.EIO, "Input/output error", s)
        real_copy_meta(s, d, st)

    monkeypatch.setattr(volumes, "_copy_meta", failing)
    with pytest.raises(OSError, match="Input/output error"):
        store.populate(vol, src)
    assert os.listdir(vol.mountpoint) == []
    assert sorted(os.listdir(vol.mountpoint.parent)) == ["_data", "volume.json"]
    monkeypatch.undo()
    assert store.populate(vol, src)  # a later try still copies up
    assert (vol.mountpoint / "a").read_text() == "a"


def test_disk_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 50_000)
    os.link(tmp_path / "f", tmp_path / "g")
    assert 50_000 <= disk_usage(tmp_path) < 100_000
