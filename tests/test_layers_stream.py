"""apply_layer reads the tar stream forward only, file data straight from the stream:
sizes around block and chunk boundaries, long names, GNU sparse members and archives cut
at every kind of place must unpack exactly or fail with InvalidLayer."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from lamina.errors import InvalidLayer
from lamina.image._layers import apply_layer, open_decompressed

SIZES = [0, 1, 511, 512, 513, 65_535, 65_536, 65_537, (1 << 20) - 1, 1 << 20, (1 << 20) + 7]


def _archive(files: dict[str, bytes], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_files_of_every_boundary_size_and_long_names(tmp_path: Path, fmt: int) -> None:
    files = {f"d{'x' * 120}/f{size}": os.urandom(size) for size in SIZES}
    data = _archive(files, fmt)
    with open_decompressed(io.BytesIO(gzip.compress(data, compresslevel=1))) as stream:
        result = apply_layer(stream, tmp_path / "root")
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.entries == len(files)
    for name, content in files.items():
        assert (tmp_path / "root" / name).read_bytes() == content


def test_gnu_sparse_member(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"middle")
        f.seek(7 << 20)
        f.write(b"tail")
    archive = tmp_path / "layer.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-C", str(src), "-cf", str(archive), "sparse"],
        check=True,
    )
    with tarfile.open(archive) as tf:
        assert tf.getmember("sparse").issparse()
    with open(archive, "rb") as stream:
        apply_layer(stream, tmp_path / "root")
    assert (tmp_path / "root" / "sparse").read_bytes() == (src / "sparse").read_bytes()


@pytest.mark.parametrize("cut", [100, 512, 700, 1024 + 512, 1024 + 512 + 50])
def test_archive_cut_in_a_header_or_data_is_invalid(tmp_path: Path, cut: int) -> None:
    # header 0..512, data 512..1024 (300 bytes + padding), header 1024..1536, data. (A cut
    # inside a later header reads as the end of the archive, as tarfile has it; in a pull
    # the diff_id check rejects such a layer.)
    data = _archive({"a": b"x" * 300, "b": b"y" * 2000}, tarfile.PAX_FORMAT)
    with pytest.raises(InvalidLayer):
        apply_layer(io.BytesIO(data[:cut]), tmp_path / "root")
