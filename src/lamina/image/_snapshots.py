"""The snapshot store: every layer unpacked once, shared by every container of every image.

Modelled on containerd's overlay snapshotter, minus its metadata database. Each layer is
unpacked in overlay form (whiteouts as 0:0 char devices, opaque dirs by xattr) into its own
directory, named after its chain ID, so the directories stack directly as overlayfs lowerdirs:

    <root>/<hex of chain id>/fs          the unpacked layer
    <root>/<hex of chain id>/meta.json   {"chain_id", "diff_id", "size"}
    <root>/.tmp-<lease>/<random>/        an unpack in progress
    <root>/.del-<random>/                a snapshot being removed

A snapshot directory only ever appears by renaming a fully unpacked, diff_id-verified scratch
directory into place, so a visible snapshot is complete. Two processes unpacking the same layer
both do the work; the first rename wins and the loser discards its copy. Scratch directories
are made inside their maker's lease directory (a ``Registrar``, `.tmp-<lease id>/`), so the
next command that reaps leases removes them as soon as their maker is dead; `.del-` directories
are removed by whoever finds them (removal is idempotent). The store knows nothing of who uses a
snapshot: which ones may go is the garbage collector's business (``_gc``).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from lamina._fsutil import naming
from lamina.errors import DigestMismatch, InvalidDigest, InvalidLayer, NotFound

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]{64}")


class Registrar(Protocol):
    """Who answers for scratch directories if their maker dies (a lease): it gives a
    directory of its own, removed with it."""

    def scratch_dir(self, parent: Path, prefix: str = "") -> Path: ...


def _check(digest: str, what: str) -> str:
    if not _SHA256.fullmatch(digest):
        raise InvalidDigest(f"invalid {what} {digest!r}: expected sha256:<64 hex digits>")
    return digest


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain IDs for a layer stack, bottom layer first.

    chain(L1) = diff_id(L1); chain(Ln) = sha256 of "<chain(Ln-1)> <diff_id(Ln)>".
    """
    out: list[str] = []
    for diff_id in diff_ids:
        _check(diff_id, "diff_id")
        if out:
            text = f"{out[-1]} {diff_id}".encode()
            out.append("sha256:" + hashlib.sha256(text).hexdigest())
        else:
            out.append(diff_id)
    return out


@dataclass(frozen=True)
class SnapshotInfo:
    chain_id: str
    diff_id: str
    size: int  # uncompressed layer size in bytes


class Snapshotter:
    """Unpacked layers under `root` (e.g. <lamina root>/snapshots), keyed by chain ID."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # Snapshots hold setuid binaries and device nodes from images: keep others out.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sweep()

    def _sweep(self) -> None:
        with os.scandir(self.root) as it:
            for e in it:
                if e.name.startswith(".del-"):
                    shutil.rmtree(e.path, ignore_errors=True)

    def scratch(self) -> builtins.list[Path]:
        """Unpacks in progress (or abandoned) and removals in progress."""
        with os.scandir(self.root) as it:
            return [Path(e.path) for e in it if e.name.startswith((".tmp-", ".del-"))]

    def _scratch_dir(self, registrar: Registrar | None) -> Path:
        """A new scratch directory: in the registrar's own ``.tmp-`` directory (gone
        with it if its maker dies), else a ``.tmp-`` of its own."""
        token = secrets.token_hex(8)
        if registrar is None:
            tmp = self.root / f".tmp-{token}"
        else:
            tmp = registrar.scratch_dir(self.root, ".tmp-") / token
        os.mkdir(tmp, 0o755)
        return tmp

    def _dir(self, chain_id: str) -> Path:
        return self.root / _check(chain_id, "chain ID")[len("sha256:") :]

    def exists(self, chain_id: str) -> bool:
        return (self._dir(chain_id) / "fs").is_dir()

    def path(self, chain_id: str) -> Path:
        """The unpacked filesystem of a snapshot."""
        fs = self._dir(chain_id) / "fs"
        if not fs.is_dir():
            raise NotFound(f"snapshot {chain_id} not found")
        return fs

    def info(self, chain_id: str) -> SnapshotInfo:
        fs = self.path(chain_id)
        meta = json.loads((fs.parent / "meta.json").read_text())
        return SnapshotInfo(chain_id=chain_id, diff_id=meta["diff_id"], size=meta["size"])

    def list(self) -> builtins.list[str]:
        """Chain IDs of every snapshot, sorted."""
        out = []
        with os.scandir(self.root) as it:
            for e in it:
                if _HEX.fullmatch(e.name) and os.path.isdir(os.path.join(e.path, "fs")):
                    out.append("sha256:" + e.name)
        return sorted(out)

    def remove(self, chain_id: str) -> None:
        trash = self.detach(chain_id)
        if trash is None:
            raise NotFound(f"snapshot {chain_id} not found")
        shutil.rmtree(trash, ignore_errors=True)

    def detach(self, chain_id: str) -> Path | None:
        """Make the snapshot disappear at once (a rename); returns the ``.del-``
        directory now holding it, for the caller to delete at leisure (a crash leaves
        it to the next sweep), or None when there was no such snapshot."""
        d = self._dir(chain_id)
        trash = Path(tempfile.mkdtemp(prefix=".del-", dir=self.root))
        try:
            os.rename(d, trash / "snapshot")
        except FileNotFoundError:
            shutil.rmtree(trash, ignore_errors=True)
            return None
        return trash

    def usage(self, chain_id: str) -> int:
        """Bytes of disk the snapshot occupies (allocated blocks, hardlinks counted once)."""
        top = self.path(chain_id)
        total = top.lstat().st_blocks * 512
        seen: set[tuple[int, int]] = set()
        stack = [str(top)]
        while stack:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    if st.st_nlink > 1 and not e.is_dir(follow_symlinks=False):
                        key = (st.st_dev, st.st_ino)
                        if key in seen:
                            continue
                        seen.add(key)
                    total += st.st_blocks * 512
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        return total

    def unpack(
        self,
        chain_id: str,
        compressed: BinaryIO,
        *,
        expected_diff_id: str,
        media_type: str | None = None,
        registrar: Registrar | None = None,
    ) -> Path:
        """Unpack a layer blob as snapshot `chain_id` unless it exists; returns its fs dir.

        The compression is sniffed from the content (registries mislabel it), the media type
        only has to be a known layer type. Raises DigestMismatch, leaving nothing behind, when
        the uncompressed content does not hash to `expected_diff_id`. The scratch directory
        is made in ``registrar``'s own (see ``Registrar``).
        """
        final = self._dir(chain_id)
        _check(expected_diff_id, "diff_id")
        if (final / "fs").is_dir():
            return final / "fs"
        # Imported here: isal and zstandard are not needed to list or look up snapshots.
        from lamina.image._layers import apply_layer, compression_for_media_type, open_decompressed

        if media_type is not None and compression_for_media_type(media_type) is None:
            raise InvalidLayer(f"layer {expected_diff_id}: unsupported media type {media_type!r}")
        tmp = self._scratch_dir(registrar)
        try:
            os.chmod(tmp, 0o755)
            fs = tmp / "fs"
            fs.mkdir()
            os.chmod(fs, 0o755)
            try:
                with naming(final), open_decompressed(compressed) as stream:
                    result = apply_layer(stream, fs, overlay=True)
            except InvalidLayer as e:
                raise InvalidLayer(f"layer {expected_diff_id}: {e}") from None
            if result.diff_id != expected_diff_id:
                raise DigestMismatch(
                    f"layer {expected_diff_id}: uncompressed content hashes to {result.diff_id}"
                )
            self._publish(tmp, chain_id, result.diff_id, result.size)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final / "fs"

    def adopt(
        self,
        chain_id: str,
        fs: Path,
        *,
        diff_id: str,
        size: int,
        registrar: Registrar | None = None,
    ) -> bool:
        """Make the directory ``fs`` (a layer in overlay form, e.g. a build step's upper
        dir, on this filesystem) the snapshot ``chain_id``: moved, not copied. False when
        it could not be (another filesystem); ``fs`` is gone either way."""
        if self.exists(chain_id):
            shutil.rmtree(fs, ignore_errors=True)
            return True
        tmp = self._scratch_dir(registrar)
        try:
            os.rename(fs, tmp / "fs")
            os.chmod(tmp / "fs", 0o755)
            self._publish(tmp, chain_id, diff_id, size)
            return True
        except OSError as e:
            shutil.rmtree(fs, ignore_errors=True)
            if e.errno == errno.EXDEV:
                return False
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: Path, chain_id: str, diff_id: str, size: int) -> None:
        """Rename the complete scratch dir ``tmp`` into place as ``chain_id``."""
        meta = {"chain_id": chain_id, "diff_id": diff_id, "size": size}
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
        try:
            os.rename(tmp, self._dir(chain_id))
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race

    def lowerdirs(self, chain_ids: builtins.list[str]) -> builtins.list[Path]:
        """Snapshot dirs for a layer stack given bottom first, in overlayfs lowerdir order
        (top layer first)."""
        return [self.path(c) for c in reversed(chain_ids)]
