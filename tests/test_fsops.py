"""diff / cp / commit on a real overlayfs mount, as a container's rootfs is."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets
import stat
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina.errors import InvalidLayer, LaminaError, NotFound
from lamina.runtime._fsops import (
    commit_layer,
    copy_in,
    copy_out,
    diff,
    secure_join,
)
from lamina.runtime._types import ChangeEntry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="overlay mounts need root")


@dataclass
class Rootfs:
    lowers: list[Path]  # topmost first, as in lowerdir=
    upper: Path
    merged: Path


def _write(path: Path, data: str = "", mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    os.chmod(path, mode)


def _whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, 0)


@pytest.fixture
def rootfs(tmp_path: Path) -> Iterator[Rootfs]:
    bottom, top = tmp_path / "l1", tmp_path / "l2"
    _write(bottom / "etc" / "hosts", "127.0.0.1 localhost\n")
    _write(bottom / "etc" / "shadow", "root:rootfs-shadow\n", 0o600)
    _write(bottom / "etc" / "dir" / "a", "a")
    _write(bottom / "etc" / "dir" / "b", "b")
    _write(bottom / "usr" / "bin" / "tool", "#!/bin/sh\n", 0o755)
    _write(bottom / "usr" / "bin" / "old", "old")
    _write(bottom / "gone" / "x", "x")
    _write(bottom / "opaque" / "p", "p")
    _write(bottom / "opaque" / "q", "q")
    _write(bottom / "deep" / "a" / "b" / "c", "c")
    (bottom / "tmp").mkdir()
    _write(top / "etc" / "motd", "hi")
    _whiteout(top / "usr" / "bin" / "old")  # the image itself deleted it
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={top}:{bottom},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        yield Rootfs([top, bottom], upper, merged)
    finally:
        if os.path.ismount(merged):
            subprocess.run(["umount", str(merged)], check=True)


def _changes(rootfs: Rootfs) -> list[tuple[str, str]]:
    return [(c.kind, c.path) for c in diff(rootfs.upper, rootfs.lowers)]


def _untar(chunks: Iterable[bytes]) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    data = b"".join(chunks)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for ti in tf:
            f = tf.extractfile(ti) if ti.isreg() else None
            out[ti.name] = (ti, f.read() if f else b"")
    return out


def _tar(entries: list[tuple[str, str | bytes | None]], **kw: object) -> bytes:
    """Build a tar: value bytes/str = file, None = directory, 'link:T' = symlink to T."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, value in entries:
            ti = tarfile.TarInfo(name)
            ti.uid = int(kw.get("uid", 0))  # type: ignore[call-overload]
            ti.gid = int(kw.get("gid", 0))  # type: ignore[call-overload]
            if value is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif isinstance(value, str) and value.startswith("link:"):
                ti.type, ti.linkname = tarfile.SYMTYPE, value[5:]
                tf.addfile(ti)
            else:
                raw = value.encode() if isinstance(value, str) else value
                ti.size, ti.mode = len(raw), 0o640
                tf.addfile(ti, io.BytesIO(raw))
    return buf.getvalue()


# -- secure_join ------------------------------------------------------------


def test_secure_join_clamps_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/", root / "evil")
    os.symlink("../../../../../../../etc", root / "up")
    os.symlink("/etc/hosts", root / "hostslink")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    r = str(root.resolve())
    assert str(secure_join(root, "evil/etc/shadow")) == f"{r}/etc/shadow"
    assert str(secure_join(root, "/up/shadow")) == f"{r}/etc/shadow"
    assert str(secure_join(root, "../../../etc")) == f"{r}/etc"
    assert str(secure_join(root, "/")) == r
    assert str(secure_join(root, "/hostslink")) == f"{r}/etc/hosts"
    assert str(secure_join(root, "/hostslink", follow_final=False)) == f"{r}/hostslink"
    assert str(secure_join(root, "/evil/", follow_final=False)) == r  # "/" means follow
    assert str(secure_join(root, "/missing/../etc")) == f"{r}/etc"
    with pytest.raises(LaminaError, match="too many levels of symbolic links"):
        secure_join(root, "/loop1/x")


# -- diff -------------------------------------------------------------------------


def test_diff_reports_docker_changes(rootfs: Rootfs) -> None:
    m = rootfs.merged
    assert _changes(rootfs) == []
    with open(m / "etc" / "hosts", "a") as f:
        f.write("10.0.0.1 db\n")
    (m / "tmp" / "new").write_text("new")
    (m / "gone" / "x").unlink()
    subprocess.run(["rm", "-rf", str(m / "opaque")], check=True)
    (m / "opaque").mkdir()
    (m / "opaque" / "p").write_text("new p")
    (m / "newdir" / "sub").mkdir(parents=True)
    (m / "newdir" / "sub" / "f").write_text("f")
    (m / "usr" / "bin" / "tool").unlink()
    (m / "usr" / "bin" / "old").write_text("back")  # the image had deleted it: added
    os.chmod(m / "deep" / "a" / "b" / "c", 0o600)  # metadata only: copied up
    expected = [
        ("C", "/deep"),
        ("C", "/deep/a"),
        ("C", "/deep/a/b"),
        ("C", "/deep/a/b/c"),
        ("C", "/etc"),
        ("C", "/etc/hosts"),
        ("C", "/gone"),
        ("D", "/gone/x"),
        ("A", "/newdir"),
        ("A", "/newdir/sub"),
        ("A", "/newdir/sub/f"),
        ("C", "/opaque"),
        ("C", "/opaque/p"),
        ("D", "/opaque/q"),
        ("C", "/tmp"),
        ("A", "/tmp/new"),
        ("C", "/usr"),
        ("C", "/usr/bin"),
        ("A", "/usr/bin/old"),
        ("D", "/usr/bin/tool"),
    ]
    assert _changes(rootfs) == expected
    subprocess.run(["umount", str(m)], check=True)
    assert _changes(rootfs) == expected  # upper + lowers are enough


def test_diff_of_deleted_directory(rootfs: Rootfs) -> None:
    subprocess.run(["rm", "-rf", str(rootfs.merged / "etc" / "dir")], check=True)
    assert _changes(rootfs) == [("C", "/etc"), ("D", "/etc/dir")]


def test_diff_returns_change_entries(rootfs: Rootfs) -> None:
    (rootfs.merged / "added").write_text("x")
    assert diff(rootfs.upper, rootfs.lowers) == [ChangeEntry("A", "/added")]


# -- copy_out ---------------------------------------------------------------------


def test_copy_out_file_is_named_by_its_basename(rootfs: Rootfs) -> None:
    entries = _untar(copy_out(rootfs.merged, "/etc/hosts"))
    assert list(entries) == ["hosts"]
    ti, data = entries["hosts"]
    assert data == b"127.0.0.1 localhost\n"
    assert ti.mode == 0o644 and ti.uid == 0 and ti.uname == ""


def test_copy_out_directory(rootfs: Rootfs) -> None:
    os.chown(rootfs.merged / "etc" / "dir" / "b", 1234, 5678)
    os.link(rootfs.merged / "etc" / "dir" / "a", rootfs.merged / "etc" / "dir" / "hard")
    os.setxattr(rootfs.merged / "etc" / "dir" / "a", "user.note", b"hello")
    entries = _untar(copy_out(rootfs.merged, "/etc/dir"))
    assert sorted(entries) == ["dir", "dir/a", "dir/b", "dir/hard"]
    assert entries["dir"][0].isdir()
    assert entries["dir/a"][1] == b"a"
    assert entries["dir/a"][0].pax_headers.get("SCHILY.xattr.user.note") == "hello"
    assert (entries["dir/b"][0].uid, entries["dir/b"][0].gid) == (1234, 5678)
    assert entries["dir/hard"][0].islnk() and entries["dir/hard"][0].linkname == "dir/a"
    contents = _untar(copy_out(rootfs.merged, "/etc/dir/."))
    assert sorted(contents) == [".", "a", "b", "hard"]


def test_copy_out_large_file_streams(rootfs: Rootfs) -> None:
    blob = secrets.token_bytes(3 << 20) + b"tail"
    (rootfs.merged / "big").write_bytes(blob)
    chunks = list(copy_out(rootfs.merged, "/big"))
    assert len(chunks) > 2  # streamed, not built in memory at once
    assert _untar(chunks)["big"][1] == blob


def test_copy_out_missing(rootfs: Rootfs) -> None:
    with pytest.raises(NotFound, match=r"^Could not find the file /nope in container$"):
        copy_out(rootfs.merged, "/nope")
    with pytest.raises(LaminaError, match="not a directory"):
        copy_out(rootfs.merged, "/etc/hosts/")


def test_copy_out_never_reads_host_files_through_symlinks(rootfs: Rootfs) -> None:
    m = rootfs.merged
    os.symlink("/", m / "evil")
    os.symlink("../../../../../../../../etc", m / "tmp" / "up")
    for path in ("evil/etc/shadow", "/tmp/up/shadow", "/../../etc/shadow"):
        entries = _untar(copy_out(m, path))
        assert entries["shadow"][1] == b"root:rootfs-shadow\n", path
    # The link itself, unless asked to follow it.
    entries = _untar(copy_out(m, "/evil"))
    assert entries["evil"][0].issym() and entries["evil"][0].linkname == "/"
    os.symlink("/etc/hosts", m / "hostslink")
    entries = _untar(copy_out(m, "/hostslink", follow_link=True))
    assert entries["hostslink"][1] == b"127.0.0.1 localhost\n"


# -- copy_in ----------------------------------------------------------------------


def test_copy_in_extracts_into_a_directory(rootfs: Rootfs) -> None:
    data = _tar([("a.txt", "hello"), ("d", None), ("d/b.txt", "b")], uid=1000, gid=1000)
    copy_in(rootfs.merged, "/tmp", io.BytesIO(data))
    assert (rootfs.merged / "tmp" / "a.txt").read_text() == "hello"
    st = os.lstat(rootfs.merged / "tmp" / "d" / "b.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o640)
    assert ("A", "/tmp/a.txt") in _changes(rootfs)


def test_copy_in_accepts_gzip(rootfs: Rootfs) -> None:
    copy_in(rootfs.merged, "/", io.BytesIO(gzip.compress(_tar([("z", "zz")]))))
    assert (rootfs.merged / "z").read_text() == "zz"


def test_copy_in_round_trip(rootfs: Rootfs) -> None:
    stream = b"".join(copy_out(rootfs.merged, "/etc"))
    (rootfs.merged / "restore").mkdir()
    copy_in(rootfs.merged, "/restore", io.BytesIO(stream))
    for name in ("hosts", "shadow", "motd", "dir/a"):
        a, b = rootfs.merged / "etc" / name, rootfs.merged / "restore" / "etc" / name
        assert a.read_bytes() == b.read_bytes()
        assert os.lstat(a).st_mode == os.lstat(b).st_mode


def test_copy_in_destination_errors(rootfs: Rootfs) -> None:
    with pytest.raises(NotFound, match=r"^Could not find the file /x in container$"):
        copy_in(rootfs.merged, "/x", io.BytesIO(_tar([("a", "a")])))
    with pytest.raises(LaminaError, match="not a directory"):
        copy_in(rootfs.merged, "/etc/hosts", io.BytesIO(_tar([("a", "a")])))


def test_copy_in_stays_inside_the_rootfs(rootfs: Rootfs) -> None:
    m = rootfs.merged
    os.symlink("/", m / "evil")
    name = f"lamina-cp-test-{secrets.token_hex(4)}"
    copy_in(m, "evil/", io.BytesIO(_tar([(name, "inside")])))
    assert (m / name).read_text() == "inside"
    assert not os.path.lexists(f"/{name}")
    # An archive with its own escape attempts.
    hostile = _tar([("hop", "link:/"), (f"hop/{name}-2", "x")])
    copy_in(m, "/tmp", io.BytesIO(hostile))
    assert not os.path.lexists(f"/{name}-2")
    assert (m / "tmp" / f"{name}-2").read_text() == "x"  # clamped to the destination
    with pytest.raises(InvalidLayer, match="escapes"):
        copy_in(m, "/tmp", io.BytesIO(_tar([(f"../../{name}-3", "x")])))
    assert not os.path.lexists(f"/{name}-3")


# -- commit -----------------------------------------------------------------------


def _layer_names(path: Path) -> list[str]:
    with tarfile.open(path, "r:gz") as tf:
        return tf.getnames()


def test_commit_layer_writes_whiteouts(rootfs: Rootfs, tmp_path: Path) -> None:
    m = rootfs.merged
    (m / "gone" / "x").unlink()
    subprocess.run(["rm", "-rf", str(m / "opaque")], check=True)
    (m / "opaque").mkdir()
    (m / "added").write_text("a")
    out = tmp_path / "out"
    committed = commit_layer(rootfs.upper, out)
    blob = committed.path.read_bytes()
    assert committed.layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert committed.path.name == committed.layer.digest[7:] + ".tar.gz"
    raw = gzip.decompress(blob)
    assert committed.layer.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    names = _layer_names(committed.path)
    assert "gone/.wh.x" in names
    assert "opaque/.wh..wh..opq" in names
    assert "added" in names
    assert os.listdir(out) == [committed.path.name]


def test_commit_image(rootfs: Rootfs, tmp_path: Path) -> None:
    from lamina.image import LocalImages, import_rootfs
    from lamina.runtime._fsops import commit_image

    local = LocalImages.open(tmp_path / "lamina")
    try:
        base_tree = tmp_path / "base"
        _write(base_tree / "etc" / "hosts", "base\n")
        _write(base_tree / "gone", "x")
        base = import_rootfs(
            local, base_tree, reference="base:1", changes=["CMD /bin/sh", "ENV A=1"]
        )
        m = rootfs.merged
        (m / "gone" / "x").unlink()
        (m / "new").write_text("new")
        image = commit_image(
            local,
            base_image_id=base.id,
            upper=rootfs.upper,
            reference="committed",
            changes=["ENV B=$A-2", "WORKDIR /w"],
            message="my change",
            author="someone <s@example.com>",
            container_config={"Cmd": ["run", "me"], "Env": ["A=1", "C=3"]},
        )
        assert image.tags == ["docker.io/library/committed:latest"]
        assert local.images.resolve("committed").id == image.id
        cfg = json.loads(local.content.read(image.config_digest))
        base_cfg = json.loads(local.content.read(base.config_digest))
        assert len(cfg["rootfs"]["diff_ids"]) == 2
        assert cfg["rootfs"]["diff_ids"][0] == base_cfg["rootfs"]["diff_ids"][0]
        assert cfg["config"]["Cmd"] == ["run", "me"]
        assert cfg["config"]["WorkingDir"] == "/w"
        assert cfg["config"]["Env"] == ["A=1", "C=3", "B=1-2"]
        assert cfg["author"] == "someone <s@example.com>"
        assert cfg["history"][-1]["comment"] == "my change"
        assert len(cfg["history"]) == len(base_cfg["history"]) + 1
        assert cfg["architecture"] == base_cfg["architecture"]
        manifest = json.loads(local.content.read(image.manifest_digest))
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert len(manifest["layers"]) == 2
        new_layer = manifest["layers"][1]
        assert new_layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert "gone/.wh.x" in _layer_names(local.content.path(new_layer["digest"]))
        assert not [p for p in (tmp_path / "lamina" / "content" / "ingest").iterdir()]
        # The committed image's layers, applied in order, give what the container saw.
        flat = tmp_path / "flat"
        for layer in manifest["layers"]:
            with local.content.open(layer["digest"]) as f:
                apply_layer_gz(f, flat)
        assert (flat / "new").read_text() == "new"
        assert not (flat / "gone" / "x").exists()
    finally:
        local.close()


def apply_layer_gz(f: io.BufferedReader | object, target: Path) -> None:
    from lamina.image import apply_layer, open_decompressed

    with open_decompressed(f) as plain:  # type: ignore[arg-type]
        apply_layer(plain, target)


def test_commit_image_refuses_bad_changes_before_writing(rootfs: Rootfs, tmp_path: Path) -> None:
    from lamina.image import LocalImages, import_rootfs
    from lamina.runtime._fsops import commit_image

    local = LocalImages.open(tmp_path / "lamina")
    try:
        base_tree = tmp_path / "base"
        _write(base_tree / "f", "x")
        base = import_rootfs(local, base_tree)
        before = {b.digest for b in local.content.list()}
        with pytest.raises(LaminaError, match="unknown --change instruction"):
            commit_image(local, base_image_id=base.id, upper=rootfs.upper, changes=["RUN rm -rf /"])
        assert {b.digest for b in local.content.list()} == before
        with pytest.raises(NotFound):
            commit_image(local, base_image_id="sha256:" + "0" * 64, upper=rootfs.upper)
    finally:
        local.close()
