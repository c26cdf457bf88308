"""The snapshot store: layers unpacked once into overlayfs-ready directories keyed by chain ID."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina.errors import DigestMismatch, InvalidDigest, InvalidLayer, NotFound
from lamina.image._layers import MEDIA_TYPE_OCI_LAYER_GZIP, LayerResult, apply_layer
from lamina.image._snapshots import Snapshotter, chain_ids

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlay whiteouts, mount)")


def layer(*entries: tuple[str, bytes | None]) -> tuple[bytes, str]:
    """A gzip layer from (name, data) pairs (data None: directory); returns (blob, diff_id)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw), "sha256:" + hashlib.sha256(raw).hexdigest()


LOWER = layer(
    ("etc", None),
    ("etc/passwd", b"root:x:0:0"),
    ("etc/group", b"root:x:0:"),
    ("cache", None),
    ("cache/a", b"lower a"),
    ("cache/sub", None),
    ("cache/sub/b", b"lower b"),
)
UPPER = layer(
    ("etc", None),
    ("etc/.wh.passwd", b""),
    ("etc/hostname", b"box"),
    ("cache", None),
    ("cache/.wh..wh..opq", b""),
    ("cache/fresh", b"upper"),
)


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> Snapshotter:
    return Snapshotter(tmp_path / "snapshots")


def unpack(store: Snapshotter, chain: str, blob_and_diff: tuple[bytes, str]) -> Path:
    blob, diff_id = blob_and_diff
    return store.unpack(
        chain, io.BytesIO(blob), expected_diff_id=diff_id, media_type=MEDIA_TYPE_OCI_LAYER_GZIP
    )


def test_chain_ids_follow_the_oci_definition() -> None:
    d1, d2, d3 = sha("one"), sha("two"), sha("three")
    c2 = "sha256:" + hashlib.sha256(f"{d1} {d2}".encode()).hexdigest()
    c3 = "sha256:" + hashlib.sha256(f"{c2} {d3}".encode()).hexdigest()
    assert chain_ids([d1, d2, d3]) == [d1, c2, c3]
    assert chain_ids([]) == []
    with pytest.raises(InvalidDigest):
        chain_ids([d1, "sha256:../../etc"])


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[list[Path]]:
    mounts: list[Path] = []
    yield mounts
    for m in mounts:
        subprocess.run(["umount", str(m)], check=False)


@needs_root
def test_two_layers_stack_as_overlay_lowerdirs(
    store: Snapshotter, tmp_path: Path, mounted: list[Path]
) -> None:
    chains = chain_ids([LOWER[1], UPPER[1]])
    unpack(store, chains[0], LOWER)
    unpack(store, chains[1], UPPER)
    assert store.list() == sorted(chains)
    lowers = store.lowerdirs(chains)
    assert lowers == [store.path(chains[1]), store.path(chains[0])]

    merged, upper, work = tmp_path / "merged", tmp_path / "upper", tmp_path / "work"
    for d in (merged, upper, work):
        d.mkdir()
    opts = f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    mounted.append(merged)

    assert sorted(os.listdir(merged / "etc")) == ["group", "hostname"]
    assert not (merged / "etc/passwd").exists()
    assert (merged / "etc/group").read_bytes() == b"root:x:0:"
    assert os.listdir(merged / "cache") == ["fresh"]  # the opaque dir hides lower content
    # writes go to the container's upper dir, never into the shared snapshots
    (merged / "etc/new").write_text("x")
    assert (upper / "etc/new").exists()
    assert not (store.path(chains[1]) / "etc/new").exists()


def test_unpack_records_metadata_and_usage(store: Snapshotter) -> None:
    chain = chain_ids([LOWER[1]])[0]
    fs = unpack(store, chain, LOWER)
    assert fs == store.path(chain) and (fs / "etc/passwd").read_bytes() == b"root:x:0:0"
    info = store.info(chain)
    assert info.diff_id == LOWER[1] and info.size == len(gzip.decompress(LOWER[0]))
    assert store.usage(chain) >= 4 * 4096  # at least its directories' blocks
    assert oct(fs.stat().st_mode & 0o777) == oct(0o755)


def test_diff_id_mismatch_leaves_nothing_behind(store: Snapshotter) -> None:
    chain = sha("claimed")
    with pytest.raises(DigestMismatch, match="uncompressed content hashes to"):
        store.unpack(chain, io.BytesIO(LOWER[0]), expected_diff_id=sha("claimed"))
    assert not store.exists(chain)
    assert store.list() == []
    assert os.listdir(store.root) == []


def test_failed_unpack_leaves_nothing_behind(store: Snapshotter) -> None:
    blob = gzip.compress(b"definitely not a tar archive" * 100)
    with pytest.raises(InvalidLayer):
        store.unpack(sha("x"), io.BytesIO(blob), expected_diff_id=sha("x"))
    assert os.listdir(store.root) == []


def test_existing_snapshot_is_not_unpacked_again(store: Snapshotter) -> None:
    chain = chain_ids([LOWER[1]])[0]
    unpack(store, chain, LOWER)

    class Unreadable(io.RawIOBase):
        def read(self, size: int = -1, /) -> bytes:
            raise AssertionError("the blob must not be read")

    assert store.unpack(chain, Unreadable(), expected_diff_id=LOWER[1]) == store.path(chain)  # type: ignore[arg-type]


def test_losing_an_unpack_race_keeps_the_winner(
    store: Snapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = chain_ids([LOWER[1]])[0]

    def racing(stream: Any, target: Path, *, overlay: bool = False) -> LayerResult:
        result = apply_layer(stream, target, overlay=overlay)
        winner = store.root / chain.removeprefix("sha256:")
        (winner / "fs").mkdir(parents=True)
        (winner / "fs/winner").write_text("first")
        return result

    monkeypatch.setattr("lamina.image._layers.apply_layer", racing)
    fs = unpack(store, chain, LOWER)
    assert os.listdir(fs) == ["winner"]
    assert sorted(os.listdir(store.root)) == [chain.removeprefix("sha256:")]


def test_remove_and_missing_snapshots(store: Snapshotter) -> None:
    chain = chain_ids([LOWER[1]])[0]
    unpack(store, chain, LOWER)
    store.remove(chain)
    assert not store.exists(chain) and store.list() == []
    assert os.listdir(store.root) == []
    with pytest.raises(NotFound, match=f"snapshot {chain} not found"):
        store.remove(chain)
    with pytest.raises(NotFound):
        store.path(chain)
    with pytest.raises(NotFound):
        store.lowerdirs([chain])
    with pytest.raises(InvalidDigest):
        store.exists("sha256:../../../etc")


def test_unsupported_media_type_is_rejected(store: Snapshotter) -> None:
    with pytest.raises(InvalidLayer, match="unsupported media type"):
        store.unpack(
            LOWER[1],
            io.BytesIO(LOWER[0]),
            expected_diff_id=LOWER[1],
            media_type="application/vnd.oci.image.layer.v1.tar+bzip2",
        )


def test_removals_in_progress_are_swept_unpacks_are_left_to_their_leases(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    root.mkdir()
    for name in (".tmp-old", ".tmp-fresh", ".del-any"):
        (root / name / "fs").mkdir(parents=True)
    old = time.time() - 7200
    os.utime(root / ".tmp-old", (old, old))
    Snapshotter(root)
    # Whether an unpack's scratch dir is abandoned is its lease's to say, not its age.
    assert sorted(os.listdir(root)) == [".tmp-fresh", ".tmp-old"]
