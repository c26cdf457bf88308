"""Garbage collection of the image plane, and the leases that keep work in flight out of it.

Lifecycle in one comment (containerd's model: content is invisible until committed and
verified, and garbage is whatever no root reaches):

Roots. An image record (or a hold) reaches its target blob, the child manifests of an
index, each manifest's config and layers, and the snapshots of each platform manifest's
layer stack (the chain IDs of its config's diff_ids). Work in flight is a root too: every
pull, build, import, load, commit and save takes a ``StoreLease`` (``LocalImages.lease``),
which is a ``lamina._leases`` lease (an flock its owner holds until it ends, however it
ends) plus rows in ``images.db`` (``lease_refs``) naming the blobs, snapshots and images
the work relies on. Rows of a lease whose owner is gone count for nothing and are dropped.

The race, and why there is none. The collector marks, then sweeps; an operation checks
that something exists and then relies on it (a layer shared with an image being removed),
or creates something no record names yet (a layer it just downloaded). Either loses to a
sweep whose mark ran before the operation's check or create. So:

1. ``collect`` holds ``<root>/locks/gc.lock`` *exclusively* over mark and sweep, and reads
   the records and the lease rows in one SQLite read transaction (a record written and
   its lease's rows dropped just after cannot both be missed).
2. ``StoreLease.protect`` holds the same lock *shared* while it inserts its rows and
   checks which of the things exist. It never overlaps a mark-and-sweep: either the sweep
   came first (what it deleted is reported missing, and the operation fetches or makes it
   again) or it comes after and finds the rows (and keeps what they name).
3. Something new is protected *before* it is created (a row naming what does not exist
   yet costs nothing), so no sweep ever sees it unprotected; the operation writes its
   record before it drops its rows (``release``).

Holds pin records (containers, the build cache): ``delete_records`` refuses a held record
and ``hold`` refuses a record that is gone, each in one transaction, so a create racing
an rmi either holds a record that stays or fails cleanly.

Leftovers are owned the same way. An ingest is flocked by its writer; an abandoned one
is removed by ``clean_ingests`` (a pull's after ``RESUMABLE_SECONDS``, for a retry to
resume it; any other at once), which every lease taken and every collection runs.
Unpacks in progress and a build's scratch directories and overlay mounts live in the
lease's own directories (``StoreLease.scratch_dir``: ``snapshots/.tmp-<lease>``,
``build-tmp/<lease>``) and ``save``'s temp file is registered on its lease, each before
it is made, so ``LocalImages.reap`` (``lamina._leases.reap``, run whenever a lease is
taken) unmounts and removes them as soon as their owner is dead. ``prune`` removes
everything no live lease owns, whoever made it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lamina import _leases
from lamina.errors import LaminaError
from lamina.image._manifest import Index, Manifest, parse_manifest
from lamina.image._snapshots import chain_ids
from lamina.image._store import BLOB, IMAGE, SNAPSHOT, ImageStore

if TYPE_CHECKING:
    from lamina.image._local import LocalImages

_LOCK_NAME = "gc.lock"
# Where builds keep their scratch directories (the builder's, swept here by prune).
BUILD_SCRATCH = "build-tmp"


@contextlib.contextmanager
def gc_lock(root: Path, *, shared: bool) -> Iterator[None]:
    """``<root>/locks/gc.lock``: exclusive for a collection, shared to protect refs."""
    lock_dir = Path(root) / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Present:
    """Which of the refs just protected exist (and will stay while the lease lives)."""

    blobs: frozenset[str] = frozenset()
    snapshots: frozenset[str] = frozenset()
    images: frozenset[str] = frozenset()


class StoreLease:
    """An operation in flight on the image plane: a ``lamina._leases`` lease and the
    refs it protects from the collector. Thread-safe (a build's stages share one).
    Use as a context manager, or call ``release()``."""

    def __init__(self, local: LocalImages, kind: str) -> None:
        self._local = local
        self._lock = threading.Lock()
        self._lease = _leases.take(local.root, kind)
        try:
            # Its own connection: the owner's may be in a transaction on another thread.
            self._db = ImageStore(local.root / "images.db", local.content)
        except BaseException:
            self._lease.release()
            raise
        self.id = self._lease.id
        self._released = False
        self._scratch: dict[Path, Path] = {}

    # -- protection from the collector
    def protect(
        self,
        *,
        blobs: Iterable[str] = (),
        snapshots: Iterable[str] = (),
        images: Iterable[str] = (),
    ) -> Present:
        """Protect blobs, snapshots (chain IDs) and images (target digests: the record's
        whole closure, even once the record is gone) for as long as this lease lives;
        returns which of them exist now: those will not go away."""
        blob_list, snap_list, image_list = list(blobs), list(snapshots), list(images)
        refs = (
            [(BLOB, d) for d in blob_list]
            + [(SNAPSHOT, c) for c in snap_list]
            + [(IMAGE, d) for d in image_list]
        )
        if not refs:
            return Present()
        content, snaps = self._local.content, self._local.snapshots
        with self._lock, gc_lock(self._local.root, shared=True):
            self._db.add_lease_refs(self.id, refs)
            return Present(
                blobs=frozenset(d for d in blob_list if content.exists(d)),
                snapshots=frozenset(c for c in snap_list if snaps.exists(c)),
                images=frozenset(d for d in image_list if self._db.exists(d)),
            )

    def unprotect(self, *, blobs: Iterable[str] = (), snapshots: Iterable[str] = ()) -> None:
        """Stop protecting these (work that failed: the collector may take them)."""
        refs = [(BLOB, d) for d in blobs] + [(SNAPSHOT, c) for c in snapshots]
        if refs:
            with self._lock:
                self._db.drop_lease_refs([self.id], refs)

    def add_blob(self, data: bytes) -> str:
        """Store a small blob (a config, a manifest) under this lease's protection."""
        from lamina.image._digest import sha256_digest

        digest = sha256_digest(data)
        if digest not in self.protect(blobs=[digest]).blobs:
            self._local.content.add(data, digest)
        return digest

    # -- what the owner's death must undo (lamina._leases)
    def scratch_dir(self, parent: Path, prefix: str = "") -> Path:
        """This lease's own directory under ``parent`` (``<prefix><lease id>``), made and
        registered on first use: scratch made inside it, mounts included, goes with it if
        the owner dies, with no bookkeeping per item. Removed by ``release``."""
        with self._lock:
            path = self._scratch.get(parent)
            if path is None:
                path = Path(parent) / f"{prefix}{self.id}"
                self._lease.add_path(path)
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._scratch[parent] = path
            return path

    def add_path(self, path: str | os.PathLike[str]) -> None:
        with self._lock:
            self._lease.add_path(path)

    def discard(self, path: str | os.PathLike[str]) -> None:
        with self._lock:
            self._lease.discard(path)

    def release(self) -> None:
        """The work is over: its records are written (or it failed). Drops the refs,
        then the lease."""
        with self._lock:
            if self._released:
                return
            self._released = True
            try:
                self._db.drop_lease_refs([self.id])
            finally:
                self._db.close()
                for path in self._scratch.values():
                    _remove_tree(str(path))  # empty by now, unless work failed midway
                self._lease.release()

    def __enter__(self) -> StoreLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------ mark and sweep


@dataclass
class Collected:
    """What a collection removed: blob digests and snapshot chain IDs, and their bytes
    (blob sizes, uncompressed layer sizes, abandoned ingests)."""

    removed: list[str] = field(default_factory=list)
    reclaimed: int = 0
    ingests: int = 0


def collect(
    local: LocalImages,
    *,
    blobs: Iterable[str] | None = None,
    snapshots: Iterable[str] | None = None,
) -> Collected:
    """Mark from the roots, sweep the rest: every blob and snapshot, or only the
    candidates given (what a failed operation made). A full collection also removes
    abandoned ingests (``clean_ingests``)."""
    full = blobs is None and snapshots is None
    out = Collected()
    trash: list[Path] = []
    db = ImageStore(local.root / "images.db", local.content)
    try:
        with gc_lock(local.root, shared=False):
            keep_blobs, keep_chains = _mark(local, db)
            blob_candidates = (
                [b.digest for b in local.content.list()] if blobs is None else list(blobs)
            )
            for digest in blob_candidates:
                if digest in keep_blobs:
                    continue
                try:
                    size = local.content.info(digest).size
                except LaminaError:
                    continue  # already gone
                local.content.delete(digest)
                out.removed.append(digest)
                out.reclaimed += size
            chain_candidates = local.snapshots.list() if snapshots is None else list(snapshots)
            for chain in chain_candidates:
                if chain in keep_chains:
                    continue
                size = _snapshot_size(local, chain)
                detached = local.snapshots.detach(chain)
                if detached is not None:
                    trash.append(detached)
                    out.removed.append(chain)
                    out.reclaimed += size
    finally:
        db.close()
        # Outside the lock: deleting trees takes long, and they are invisible already.
        for path in trash:
            shutil.rmtree(path, ignore_errors=True)
    if full:
        out.ingests = local.content.clean_ingests()
    return out


def _snapshot_size(local: LocalImages, chain: str) -> int:
    try:
        return int(local.snapshots.info(chain).size)
    except (LaminaError, OSError, ValueError, KeyError):
        return 0


def _mark(local: LocalImages, db: ImageStore) -> tuple[set[str], set[str]]:
    """Every blob and chain ID reachable from the records and the live leases' refs.
    Refs of dead leases are dropped on the way."""
    roots = db.gc_roots()
    leases = {lease for lease, _, _ in roots.leased}
    live = {lease for lease in leases if _leases.alive(local.root, lease)}
    if leases - live:
        db.drop_lease_refs(sorted(leases - live))
    blobs: set[str] = set()
    chains: set[str] = set()
    targets = list(roots.images)
    for lease, kind, ref in roots.leased:
        if lease not in live:
            continue
        if kind == BLOB:
            blobs.add(ref)
        elif kind == SNAPSHOT:
            chains.add(ref)
        elif kind == IMAGE:
            targets.append(ref)
    _walk(local, targets, blobs, chains)
    return blobs, chains


def _walk(local: LocalImages, targets: list[str], blobs: set[str], chains: set[str]) -> None:
    """Add the closure of each target (index or manifest) to ``blobs`` and ``chains``."""
    content = local.content
    stack = list(targets)
    seen: set[str] = set()
    while stack:
        digest = stack.pop()
        if digest in seen:
            continue
        seen.add(digest)
        blobs.add(digest)
        if not content.exists(digest):
            continue
        try:
            parsed = parse_manifest(content.read(digest))
        except (LaminaError, OSError):
            continue
        if isinstance(parsed, Index):
            stack.extend(d.digest for d in parsed.manifests)
        elif isinstance(parsed, Manifest):
            blobs.add(parsed.config.digest)
            blobs.update(layer.digest for layer in parsed.layers)
            chains.update(_chains_of(local, parsed.config.digest))


def _chains_of(local: LocalImages, config_digest: str) -> list[str]:
    try:
        cfg = json.loads(local.content.read(config_digest))
        ids = cfg.get("rootfs", {}).get("diff_ids", [])
        return chain_ids([str(i) for i in ids]) if isinstance(ids, list) else []
    except (LaminaError, OSError, ValueError, AttributeError):
        return []


# ------------------------------------------------------------------ scratch left behind


def sweep_scratch(root: Path, scratch: Iterable[Path]) -> int:
    """Remove the scratch paths that no live lease owns (an older lamina's, or ones
    whose lease record was lost); mounts below them are detached first. Returns how
    many went. The candidates are listed before the leases are read: a live owner
    registers a path before it makes it, so nothing it made can be missed."""
    candidates = [str(p) for p in scratch]
    if not candidates:
        return 0
    owned: list[str] = []
    for info in _leases.live(root):
        owned.extend(info.paths)
        owned.extend(info.mounts)
    removed = 0
    for path in candidates:
        if any(_related(path, p) for p in owned):
            continue
        if _remove_tree(path):
            removed += 1
    return removed


def build_scratch(root: Path) -> list[Path]:
    """The builders' scratch directories under ``root``."""
    try:
        return [Path(e.path) for e in os.scandir(Path(root) / BUILD_SCRATCH)]
    except FileNotFoundError:
        return []


def _related(a: str, b: str) -> bool:
    """One path is the other or lies below it."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _remove_tree(path: str) -> bool:
    from lamina._mount import mounts_under, unmount_under

    unmount_under(path)
    if mounts_under(path):
        return False  # never delete through a mount that stayed
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
