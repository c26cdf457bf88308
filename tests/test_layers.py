"""Layer archives: apply (unpack) and write (create), including hostile archives.

Every archive is built by hand with tarfile so each test states exactly what the layer says.
Hostile-archive tests check a sentinel directory outside the target is left exactly as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from lamina.errors import InvalidLayer, NotFound
from lamina.image._layers import (
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_LAYER_ZSTD,
    Compression,
    apply_layer,
    compression_for_media_type,
    detect_compression,
    open_decompressed,
    write_layer,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (chown, mknod, trusted xattrs)")
MTIME = 1_600_000_000


# --------------------------------------------------------------------------- helpers


class Tar:
    """Builds a layer tarball entry by entry, exactly as written (names are not cleaned)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(  # noqa: SIM115 (closed by bytes())
            fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT
        )

    def _add(self, ti: tarfile.TarInfo, data: bytes | None = None, **kw: Any) -> Tar:
        ti.mtime = kw.get("mtime", MTIME)
        ti.uid = kw.get("uid", 0)
        ti.gid = kw.get("gid", 0)
        if "mode" in kw:
            ti.mode = kw["mode"]
        if kw.get("xattrs"):
            ti.pax_headers = {
                "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                for k, v in kw["xattrs"].items()
            }
        if data is not None:
            ti.size = len(data)
            self.tf.addfile(ti, io.BytesIO(data))
        else:
            self.tf.addfile(ti)
        return self

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw: Any) -> Tar:
        return self._add(tarfile.TarInfo(name), data, mode=mode, **kw)

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> Tar:
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.DIRTYPE
        return self._add(ti, mode=mode, **kw)

    def symlink(self, name: str, target: str, **kw: Any) -> Tar:
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.SYMTYPE
        ti.linkname = target
        return self._add(ti, mode=0o777, **kw)

    def hardlink(self, name: str, target: str, **kw: Any) -> Tar:
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.LNKTYPE
        ti.linkname = target
        return self._add(ti, mode=0o644, **kw)

    def device(self, name: str, kind: bytes, major: int = 0, minor: int = 0, **kw: Any) -> Tar:
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.devmajor, ti.devminor = major, minor
        return self._add(ti, mode=kw.pop("mode", 0o666), **kw)

    def bytes(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def apply(data: bytes, target: Path, *, overlay: bool = False) -> Any:
    return apply_layer(io.BytesIO(data), target, overlay=overlay)


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a user can observe about a tree, keyed by relative path."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            content: Any = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for a in os.listxattr(p, follow_symlinks=False):
                    xattrs[a] = os.getxattr(p, a, follow_symlinks=False)
            out[str(p.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_nlink,
                st.st_mtime_ns,
                content,
                tuple(sorted(xattrs.items())),
            )
    return out


@dataclass
class Sentinel:
    """A directory outside the target that no layer may touch."""

    path: Path
    base: Path
    before: dict[str, tuple[Any, ...]]
    own_stat: tuple[int, int, int]

    @property
    def secret(self) -> Path:
        return self.path / "secret"

    def check(self) -> None:
        assert tree(self.path) == self.before
        st = self.path.stat()
        assert (st.st_mode, st.st_uid, st.st_mtime_ns) == self.own_stat
        assert sorted(p.name for p in self.base.iterdir()) == ["root", "sentinel"]


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Sentinel]:
    d = tmp_path / "sentinel"
    d.mkdir()
    (d / "secret").write_bytes(b"do not touch")
    os.chmod(d / "secret", 0o600)
    os.utime(d / "secret", (MTIME, MTIME))
    (d / "sub").mkdir()
    os.utime(d, (MTIME, MTIME))
    st = d.stat()
    s = Sentinel(d, tmp_path, tree(d), (st.st_mode, st.st_uid, st.st_mtime_ns))
    yield s
    s.check()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def inside(root: Path, host_path: Path) -> Path:
    """Where an absolute host path lands when resolved with `root` as "/"."""
    return root / str(host_path).lstrip("/")


# --------------------------------------------------------------------------- compression


def test_detect_compression_by_magic() -> None:
    assert detect_compression(gzip.compress(b"x")[:4]) is Compression.GZIP
    assert detect_compression(zstandard.ZstdCompressor().compress(b"x")[:4]) is Compression.ZSTD
    assert detect_compression(b"usr/") is Compression.NONE
    assert detect_compression(b"") is Compression.NONE


def test_compression_for_media_type() -> None:
    assert compression_for_media_type(MEDIA_TYPE_OCI_LAYER_GZIP) is Compression.GZIP
    assert compression_for_media_type(MEDIA_TYPE_DOCKER_LAYER_GZIP) is Compression.GZIP
    assert compression_for_media_type(MEDIA_TYPE_OCI_LAYER_ZSTD) is Compression.ZSTD
    assert compression_for_media_type(MEDIA_TYPE_OCI_LAYER) is Compression.NONE
    assert compression_for_media_type("application/vnd.oci.image.config.v1+json") is None


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("kind", ["gzip", "gzip-multi", "zstd", "zstd-multi", "none"])
def test_open_decompressed_roundtrips(kind: str, explicit: bool) -> None:
    data = os.urandom(300_000) + b"text " * 200_000
    half = len(data) // 2
    blob, comp = {
        "gzip": (gzip.compress(data), Compression.GZIP),
        "gzip-multi": (
            gzip.compress(data[:half]) + gzip.compress(data[half:]),
            Compression.GZIP,
        ),
        "zstd": (zstandard.ZstdCompressor().compress(data), Compression.ZSTD),
        "zstd-multi": (
            zstandard.ZstdCompressor().compress(data[:half])
            + zstandard.ZstdCompressor().compress(data[half:]),
            Compression.ZSTD,
        ),
        "none": (data, Compression.NONE),
    }[kind]
    src = io.BytesIO(blob)
    with open_decompressed(src, comp if explicit else None) as stream:
        out = b"".join(iter(lambda: stream.read(65536), b""))
    assert out == data
    assert not src.closed  # the caller owns the source


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_corrupt_compressed_layer_is_invalid(kind: str, root: Path) -> None:
    layer = Tar().file("a", os.urandom(200_000)).bytes()
    if kind == "gzip":
        blob = bytearray(gzip.compress(layer))
    else:
        blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(layer))
    blob[len(blob) // 2] ^= 0xFF
    with (
        pytest.raises(InvalidLayer, match=f"{kind} layer data is corrupt"),
        open_decompressed(io.BytesIO(bytes(blob))) as stream,
    ):
        apply_layer(stream, root)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
@pytest.mark.parametrize("cut", [2, 100, 5000])
def test_truncated_compressed_stream_is_invalid(kind: str, cut: int) -> None:
    data = os.urandom(100_000) + b"a" * 500_000
    if kind == "gzip":
        blob = gzip.compress(data)
    else:
        cctx = zstandard.ZstdCompressor(write_checksum=cut == 2)
        blob = cctx.compress(data[:1000]) + cctx.compress(data[1000:])
    with (
        pytest.raises(InvalidLayer, match=f"{kind} layer data is"),
        open_decompressed(io.BytesIO(blob[:-cut])) as stream,
    ):
        while stream.read(65536):
            pass


def test_zstd_skippable_frames_and_all_block_kinds() -> None:
    data = b"\0" * 300_000 + os.urandom(200_000) + b"text " * 50_000  # RLE, raw, compressed
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"12345"
    for checksum in (False, True):
        cctx = zstandard.ZstdCompressor(write_checksum=checksum)
        blob = cctx.compress(data) + skippable + cctx.compress(b"more") + skippable
        with open_decompressed(io.BytesIO(blob)) as stream:
            assert b"".join(iter(lambda: stream.read(70_000), b"")) == data + b"more"


# --------------------------------------------------------------------------- apply: basics


def test_diff_id_covers_every_uncompressed_byte(root: Path) -> None:
    data = Tar().file("a", b"hello").dir("d").bytes() + b"\0" * 4096 + b"trailing junk"
    res = apply(data, root)
    assert res.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert res.size == len(data)
    assert res.entries == 2
    # and through decompression: the diff_id is that of the uncompressed stream
    with open_decompressed(io.BytesIO(gzip.compress(data))) as stream:
        assert apply_layer(stream, root.parent / "other").diff_id == res.diff_id


@pytest.mark.parametrize("data", [b"", b"\0" * 1024, b"\0" * 10240])
def test_empty_layers(data: bytes, root: Path) -> None:
    res = apply(data, root)
    assert res.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (res.size, res.entries) == (len(data), 0)
    assert list(root.iterdir()) == []


def test_malformed_archives_are_invalid(root: Path) -> None:
    with pytest.raises(InvalidLayer, match="malformed"):
        apply(b"this is not a tar archive at all" * 40, root)
    full = Tar().file("big", os.urandom(50_000)).bytes()
    with pytest.raises(InvalidLayer):
        apply(full[:20_000], root)


@needs_root
def test_apply_file_types_and_metadata(root: Path) -> None:
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    data = (
        Tar()
        .dir("usr", mode=0o755, mtime=MTIME - 100)
        .dir("usr/bin", mode=0o755, mtime=MTIME - 50)
        .file("usr/bin/su", b"#!su", mode=0o4755, uid=0, gid=0)
        .file("usr/bin/ping", b"ping", mode=0o755, xattrs={"security.capability": cap})
        .dir("tmp", mode=0o1777)
        .dir("home/alice", mode=0o700, uid=1000, gid=1000, mtime=MTIME - 7)
        .file("home/alice/notes", b"hi", mode=0o640, uid=1000, gid=1001, xattrs={"user.k": b"v"})
        .hardlink("usr/bin/sudo-early", "usr/bin/sudo")  # target appears later
        .file("usr/bin/sudo", b"sudo!", mode=0o4711)
        .hardlink("usr/bin/su2", "/usr/bin/su")  # absolute link names are root-relative
        .symlink("usr/bin/sh", "/bin/busybox", uid=5, gid=6, mtime=MTIME - 3)
        .device("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666)
        .device("dev/loop0", tarfile.BLKTYPE, 7, 0, mode=0o660, gid=6)
        .device("run/fifo", tarfile.FIFOTYPE, mode=0o620)
        .bytes()
    )
    apply(data, root)

    def st(p: str) -> os.stat_result:
        return os.lstat(root / p)

    assert (root / "usr/bin/su").read_bytes() == b"#!su"
    assert stat.S_IMODE(st("usr/bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(st("usr/bin/sudo").st_mode) == 0o4711
    assert stat.S_IMODE(st("tmp").st_mode) == 0o1777
    assert os.getxattr(root / "usr/bin/ping", "security.capability") == cap
    assert os.getxattr(root / "home/alice/notes", "user.k") == b"v"
    notes = st("home/alice/notes")
    assert (notes.st_uid, notes.st_gid, stat.S_IMODE(notes.st_mode)) == (1000, 1001, 0o640)
    assert notes.st_mtime_ns == MTIME * 10**9
    alice = st("home/alice")
    assert (alice.st_uid, stat.S_IMODE(alice.st_mode)) == (1000, 0o700)
    # directory mtimes are set after their contents are written
    assert alice.st_mtime_ns == (MTIME - 7) * 10**9
    assert st("usr/bin").st_mtime_ns == (MTIME - 50) * 10**9
    assert st("usr").st_mtime_ns == (MTIME - 100) * 10**9
    # implicit parents (home, dev, run) are created 0755
    assert stat.S_IMODE(st("home").st_mode) == 0o755
    assert st("usr/bin/sudo-early").st_ino == st("usr/bin/sudo").st_ino
    assert st("usr/bin/su2").st_ino == st("usr/bin/su").st_ino
    sh = st("usr/bin/sh")
    assert os.readlink(root / "usr/bin/sh") == "/bin/busybox"
    assert (sh.st_uid, sh.st_gid, sh.st_mtime_ns) == (5, 6, (MTIME - 3) * 10**9)
    null = st("dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
    assert os.minor(null.st_rdev) == 3 and stat.S_IMODE(null.st_mode) == 0o666
    loop = st("dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), loop.st_gid) == (7, 6)
    fifo = st("run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620


def test_missing_hardlink_target_is_invalid(root: Path) -> None:
    with pytest.raises(InvalidLayer, match="hardlink target 'nope' is not in the layer"):
        apply(Tar().hardlink("h", "nope").bytes(), root)


def test_hardlink_to_directory_is_invalid(root: Path) -> None:
    with pytest.raises(InvalidLayer, match="is a directory"):
        apply(Tar().dir("d").hardlink("h", "d").bytes(), root)


def test_unsupported_entry_type_is_invalid(root: Path) -> None:
    ti = tarfile.TarInfo("vol")
    ti.type = b"V"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(ti)
    with pytest.raises(InvalidLayer, match="unsupported entry type"):
        apply(buf.getvalue(), root)


@needs_root
def test_overlay_xattrs_in_a_layer_are_dropped(root: Path) -> None:
    xattrs = {"trusted.overlay.redirect": b"/etc", "trusted.overlay.opaque": b"y", "user.a": b"1"}
    apply(Tar().dir("d", xattrs=xattrs).bytes(), root, overlay=True)
    assert os.listxattr(root / "d") == ["user.a"]


# --------------------------------------------------------------------------- apply: replacing


def test_entries_replace_entries_of_another_type(root: Path, sentinel: Sentinel) -> None:
    (root / "a").mkdir()
    (root / "a/inner").write_text("lower")
    (root / "b").write_text("lower file")
    (root / "c").symlink_to(sentinel.path)  # a dir entry must replace the link, not follow it
    (root / "d").mkdir()
    (root / "d/keep").write_text("lower")
    (root / "e").write_text("lower")
    os.link(root / "e", root / "e2")
    data = (
        Tar()
        .file("a", b"now a file")
        .symlink("b", "a")
        .dir("c", mode=0o777)
        .dir("d", mode=0o700)
        .file("d/new", b"upper")
        .file("e", b"rewritten")
        .bytes()
    )
    apply(data, root)
    assert (root / "a").read_bytes() == b"now a file"
    assert os.readlink(root / "b") == "a"
    assert (root / "c").is_dir() and not (root / "c").is_symlink()
    assert stat.S_IMODE((root / "c").stat().st_mode) == 0o777
    assert sorted(os.listdir(root / "d")) == ["keep", "new"]  # dir over dir merges
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o700
    # a replaced file is a new inode: its other hardlinks keep the old content
    assert (root / "e").read_bytes() == b"rewritten"
    assert (root / "e2").read_text() == "lower"


# --------------------------------------------------------------------------- apply: whiteouts


def lower_tree(root: Path) -> None:
    (root / "f").write_text("lower")
    (root / "gone/deep").mkdir(parents=True)
    (root / "gone/deep/x").write_text("lower")
    (root / "opq/sub").mkdir(parents=True)
    (root / "opq/lower1").write_text("lower")
    (root / "opq/sub/lower2").write_text("lower")
    (root / "opq/lowerdir").mkdir()


def test_merged_whiteouts_delete_lower_entries(root: Path) -> None:
    lower_tree(root)
    data = (
        Tar()
        .file(".wh.f")
        .file(".wh.gone")
        .file(".wh.never-existed")
        .dir("opq")
        .dir("opq/sub")  # this layer's own dir: kept, but emptied of lower content
        .file("opq/before", b"upper")
        .file("opq/.wh..wh..opq")
        .file("opq/after", b"upper")
        .file("opq/sub/mine", b"upper")
        .bytes()
    )
    apply(data, root)
    assert sorted(os.listdir(root)) == ["opq"]
    assert sorted(os.listdir(root / "opq")) == ["after", "before", "sub"]
    assert os.listdir(root / "opq/sub") == ["mine"]


def test_merged_whiteout_spares_same_layer_entries(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d/lower").write_text("lower")
    data = Tar().file("mine", b"x").file(".wh.mine").file("d/new", b"x").file(".wh.d").bytes()
    apply(data, root)
    assert (root / "mine").read_bytes() == b"x"
    # whiteout of a dir this layer writes into hides only the lower content
    assert os.listdir(root / "d") == ["new"]


@needs_root
def test_overlay_whiteouts_become_devices_and_xattrs(root: Path) -> None:
    data = (
        Tar()
        .dir("etc")
        .file("etc/.wh.passwd")
        .dir("opq")
        .file("opq/.wh..wh..opq")
        .file("opq/new", b"upper")
        .file(".wh.redone")
        .dir("redone")  # whiteout then directory: the directory must be opaque
        .dir("own")
        .file(".wh.own")  # whiteout after this layer's own directory: opaque too
        .file(".wh..wh.plnk")  # AUFS metadata is ignored
        .bytes()
    )
    apply(data, root, overlay=True)
    wh = os.lstat(root / "etc/passwd")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(root / "opq", "trusted.overlay.opaque") == b"y"
    assert os.listdir(root / "opq") == ["new"]
    assert os.getxattr(root / "redone", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(root / "own", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(root)) == ["etc", "opq", "own", "redone"]


@pytest.mark.parametrize("name", [".wh..", ".wh...", "d/.wh..", "d/.wh..."])
def test_whiteout_of_dot_entries_is_invalid(name: str, root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(InvalidLayer, match="invalid whiteout name"):
        apply(Tar().file(name).bytes(), root)
    assert (root / "d").is_dir()


# --------------------------------------------------------------------------- apply: hostile


@pytest.mark.parametrize(
    "name", ["../evil", "a/../../evil", "./../evil", "a/b/../../../evil", "../sentinel/secret"]
)
def test_names_climbing_above_the_root_are_rejected(
    name: str, root: Path, sentinel: Sentinel
) -> None:
    with pytest.raises(InvalidLayer) as exc:
        apply(Tar().file(name, b"pwned").bytes(), root)
    assert str(exc.value) == f"layer entry {name!r}: path escapes the layer root"


def test_dotdot_within_the_root_is_allowed(root: Path) -> None:
    apply(Tar().file("a/../b", b"ok").bytes(), root)
    assert (root / "b").read_bytes() == b"ok"


def test_absolute_names_are_root_relative(root: Path, sentinel: Sentinel) -> None:
    data = Tar().file("/evil", b"x").file(str(sentinel.secret), b"pwned", mode=0o777).bytes()
    apply(data, root)
    assert (root / "evil").read_bytes() == b"x"
    assert inside(root, sentinel.secret).read_bytes() == b"pwned"


@pytest.mark.parametrize("pre_existing", [False, True])
def test_absolute_symlink_in_parent_is_clamped(
    pre_existing: bool, root: Path, sentinel: Sentinel
) -> None:
    t = Tar()
    if pre_existing:  # the link comes from a lower layer
        (root / "link").symlink_to(sentinel.path)
    else:
        t.symlink("link", str(sentinel.path))
    t.file("link/pwned", b"x").file("link/secret", b"pwned", mode=0o777).dir("link/sub", mode=0)
    apply(t.bytes(), root)
    assert inside(root, sentinel.path / "pwned").read_bytes() == b"x"
    assert inside(root, sentinel.secret).read_bytes() == b"pwned"


def test_relative_symlink_climbing_out_is_clamped(root: Path, sentinel: Sentinel) -> None:
    data = (
        Tar()
        .symlink("link", "../../../../../../..")
        .file("link/pwned", b"x")
        .dir("a")
        .symlink("a/b", "../../sentinel")
        .file("a/b/secret", b"pwned")
        .symlink("c", "a/b/../../..")  # through another link, then further up
        .file("c/also", b"y")
        .bytes()
    )
    apply(data, root)
    assert (root / "pwned").read_bytes() == b"x"
    assert (root / "sentinel/secret").read_bytes() == b"pwned"
    assert (root / "also").read_bytes() == b"y"


def test_symlink_replacing_a_directory_mid_layer(root: Path, sentinel: Sentinel) -> None:
    data = (
        Tar()
        .dir("d", mode=0o755)
        .file("d/x", b"1")
        .symlink("d", str(sentinel.path))
        .file("d/secret", b"pwned", mode=0o4777)
        .dir("d/sub", mode=0o777)
        .bytes()
    )
    apply(data, root)
    assert os.readlink(root / "d") == str(sentinel.path)
    assert inside(root, sentinel.secret).read_bytes() == b"pwned"


def test_final_symlink_is_replaced_not_followed(root: Path, sentinel: Sentinel) -> None:
    (root / "lower-link").symlink_to(sentinel.secret)
    data = (
        Tar()
        .symlink("s", str(sentinel.secret))
        .file("s", b"pwned", mode=0o777)
        .symlink("d", str(sentinel.path))
        .dir("d", mode=0o777)
        .file("lower-link", b"pwned", mode=0o777)
        .symlink("f", str(sentinel.secret))
        .device("f", tarfile.FIFOTYPE, mode=0o777)
        .bytes()
    )
    apply(data, root)
    assert (root / "s").read_bytes() == b"pwned" and not (root / "s").is_symlink()
    assert (root / "d").is_dir() and not (root / "d").is_symlink()
    assert (root / "lower-link").read_bytes() == b"pwned"
    assert stat.S_ISFIFO(os.lstat(root / "f").st_mode)


@needs_root
def test_device_nodes_through_symlinks_stay_inside(root: Path, sentinel: Sentinel) -> None:
    data = (
        Tar()
        .symlink("l", str(sentinel.path))
        .device("l/null", tarfile.CHRTYPE, 1, 3)
        .symlink("s", str(sentinel.secret))
        .device("s", tarfile.BLKTYPE, 7, 0)
        .bytes()
    )
    apply(data, root)
    assert stat.S_ISCHR(os.lstat(inside(root, sentinel.path / "null")).st_mode)
    assert stat.S_ISBLK(os.lstat(root / "s").st_mode)


def test_hardlink_to_outside_is_rejected(root: Path, sentinel: Sentinel) -> None:
    with pytest.raises(InvalidLayer, match="path escapes the layer root"):
        apply(Tar().hardlink("h", "../sentinel/secret").bytes(), root)
    # an absolute target is root-relative: the host file is never linked
    with pytest.raises(InvalidLayer, match="is not in the layer"):
        apply(Tar().hardlink("h", str(sentinel.secret)).bytes(), root)
    assert sentinel.secret.stat().st_nlink == 1


@pytest.mark.parametrize("target", ["abs", "rel"])
def test_hardlink_through_escaping_symlink_is_rejected(
    target: str, root: Path, sentinel: Sentinel
) -> None:
    link = str(sentinel.path) if target == "abs" else "../sentinel"
    data = Tar().symlink("l", link).hardlink("h", "l/secret").bytes()
    with pytest.raises(InvalidLayer, match="hardlink target 'l/secret' is not in the layer"):
        apply(data, root)
    assert sentinel.secret.stat().st_nlink == 1


def test_hardlink_to_a_symlink_links_the_symlink_itself(root: Path, sentinel: Sentinel) -> None:
    apply(Tar().symlink("s", str(sentinel.secret)).hardlink("h", "s").bytes(), root)
    assert (root / "h").is_symlink()
    assert os.lstat(root / "h").st_ino == os.lstat(root / "s").st_ino
    assert sentinel.secret.stat().st_nlink == 1


@pytest.mark.parametrize("overlay", [False, True])
def test_whiteouts_through_symlinks_stay_inside(
    overlay: bool, root: Path, sentinel: Sentinel
) -> None:
    if overlay and not ROOT:
        pytest.skip("overlay whiteouts need root")
    (root / "lower").symlink_to(sentinel.path)
    data = (
        Tar()
        .symlink("l", str(sentinel.path))
        .file("l/.wh.secret")
        .file("l/.wh..wh..opq")
        .file("lower/.wh.sub")
        .file(".wh.lower")  # removes the link itself, not its target
        .bytes()
    )
    apply(data, root, overlay=overlay)
    assert not (root / "lower").exists() or not (root / "lower").is_symlink()


def test_symlink_loops_are_rejected(root: Path, sentinel: Sentinel) -> None:
    data = Tar().symlink("a", "b").symlink("b", "a").file("a/x", b"x").bytes()
    with pytest.raises(InvalidLayer, match="too many levels of symbolic links"):
        apply(data, root)


def test_file_below_a_file_of_the_same_layer_is_rejected(root: Path) -> None:
    with pytest.raises(InvalidLayer, match="'f' is not a directory"):
        apply(Tar().file("f", b"x").file("f/g", b"y").bytes(), root)


def test_nul_in_names_is_rejected(root: Path) -> None:
    ti = tarfile.TarInfo("x")
    ti.pax_headers = {"path": "a\x00b"}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(ti)
    with pytest.raises(InvalidLayer, match="NUL"):
        apply(buf.getvalue(), root)


# --------------------------------------------------------------------------- write


def make_src(src: Path) -> None:
    (src / "etc").mkdir(parents=True)
    (src / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (src / "bin").mkdir()
    (src / "bin/tool").write_bytes(os.urandom(3 << 20))
    os.chmod(src / "bin/tool", 0o4755)
    os.link(src / "bin/tool", src / "bin/tool-again")
    (src / "bin/sh").symlink_to("/bin/busybox")
    (src / "tmp").mkdir()
    os.chmod(src / "tmp", 0o1777)
    (src / "héllo wörld").write_text("unicode")
    (src / ("x" * 150)).write_text("long name")
    os.setxattr(src / "etc/hosts", "user.note", b"\xffbinary\x00")
    os.mkfifo(src / "fifo")
    if ROOT:
        os.chown(src / "etc/hosts", 1234, 5678)
        os.lchown(src / "bin/sh", 7, 8)
        os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    # layers keep whole seconds: give the source whole-second mtimes so trees compare equal
    for p in [*src.rglob("*"), src]:
        os.utime(p, ns=(MTIME * 10**9, MTIME * 10**9), follow_symlinks=False)


def names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tf:
        return tf.getnames()


@pytest.mark.parametrize("compression", list(Compression))
def test_write_then_apply_roundtrips(compression: Compression, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_src(src)
    out = io.BytesIO()
    w = write_layer(src, out, compression=compression)
    blob = out.getvalue()
    assert w.digest == "sha256:" + hashlib.sha256(blob).hexdigest() and w.size == len(blob)
    with open_decompressed(io.BytesIO(blob)) as stream:
        res = apply_layer(stream, tmp_path / "dst")
    assert (res.diff_id, res.size) == (w.diff_id, w.uncompressed_size)
    assert (
        w.media_type
        == {
            Compression.GZIP: MEDIA_TYPE_OCI_LAYER_GZIP,
            Compression.ZSTD: MEDIA_TYPE_OCI_LAYER_ZSTD,
            Compression.NONE: MEDIA_TYPE_OCI_LAYER,
        }[compression]
    )
    assert tree(tmp_path / "dst") == tree(src)
    dst = tmp_path / "dst"
    assert os.lstat(dst / "bin/tool").st_ino == os.lstat(dst / "bin/tool-again").st_ino


def test_written_gzip_is_readable_by_standard_tools(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_src(src)
    blob = tmp_path / "layer.tar.gz"
    with open(blob, "wb") as f:
        write_layer(src, f)
    subprocess.run(["gzip", "-t", str(blob)], check=True)
    (tmp_path / "x").mkdir()
    subprocess.run(["tar", "-C", str(tmp_path / "x"), "-xzf", str(blob)], check=True)
    assert (tmp_path / "x/etc/hosts").read_text() == "127.0.0.1 localhost\n"


def test_write_is_deterministic_and_sorted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_src(src)
    first = write_layer(src, io.BytesIO(), source_date_epoch=MTIME)
    for p in src.rglob("*"):  # newer mtimes are clamped to SOURCE_DATE_EPOCH
        os.utime(p, (MTIME + 500, MTIME + 500), follow_symlinks=False)
    out = io.BytesIO()
    again = write_layer(src, out, source_date_epoch=MTIME)
    assert again == first
    listed = names(out.getvalue())
    assert listed[:4] == ["bin", "bin/sh", "bin/tool", "bin/tool-again"]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as tf:
        members = tf.getmembers()
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert all(m.mtime <= MTIME for m in members)
    link = next(m for m in members if m.name == "bin/tool-again")
    assert link.islnk() and link.linkname == "bin/tool"
    hosts = next(m for m in members if m.name == "etc/hosts")
    assert (
        hosts.pax_headers["SCHILY.xattr.user.note"].encode("utf-8", "surrogateescape")
        == b"\xffbinary\x00"
    )


@needs_root
def test_write_overlay_upper_emits_whiteouts(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc/passwd", stat.S_IFCHR, 0)
    (upper / "opq").mkdir()
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    (upper / "opq/new").write_text("upper")
    os.setxattr(upper / "etc", "trusted.overlay.impure", b"y")
    out = io.BytesIO()
    write_layer(upper, out, overlay_upper=True)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert list(members) == ["etc", "etc/.wh.passwd", "opq", "opq/.wh..wh..opq", "opq/new"]
    assert members["etc/.wh.passwd"].isreg() and members["etc/.wh.passwd"].size == 0
    assert not any("overlay" in k for m in members.values() for k in m.pax_headers)
    # applied onto the lower layers, the layer deletes and hides what it should
    lower = tmp_path / "lower"
    lower.mkdir()
    lower_tree(lower)
    (lower / "etc").mkdir()
    (lower / "etc/passwd").write_text("root:x:0:0")
    (lower / "etc/group").write_text("root:x:0:")
    with open_decompressed(io.BytesIO(out.getvalue())) as stream:
        apply_layer(stream, lower)
    assert os.listdir(lower / "etc") == ["group"]
    assert os.listdir(lower / "opq") == ["new"]


def test_write_selected_paths(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_src(src)
    (src / "etc/sub/deeper").mkdir(parents=True)
    (src / "etc/sub/deeper/file").write_text("x")
    out = io.BytesIO()
    write_layer(src, out, paths=["etc/sub", "/bin/sh"])
    assert names(out.getvalue()) == ["bin", "bin/sh", "etc", "etc/sub", "etc/sub/deeper",
                                     "etc/sub/deeper/file"]  # fmt: skip
    with pytest.raises(NotFound, match="no such file"):
        write_layer(src, io.BytesIO(), paths=["nope"])
