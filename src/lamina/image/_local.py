"""The image plane on one lamina root: content store + image store + snapshots.

``LocalImages.open(root)`` is how every caller (registry pull/push, load/save,
import, later the runtime and builder) gets at local images. It owns the steps
that are the same whichever way an image arrived:

- ``record(target_digest, platform)``: once the target blob (manifest or index),
  the chosen platform manifest and its config are committed to the content store,
  build the ``ImageRecord`` for it;
- ``unpack(record)``: make sure every layer is unpacked as a snapshot (the shared,
  read-only lower dirs containers start from);
- ``lease(kind)``: what every operation that writes takes first (``_gc.StoreLease``):
  it protects what the operation relies on from the garbage collector and answers for
  its scratch files if it dies; ``reap`` cleans up after owners that died;
- ``remove`` / ``prune`` with Docker's ``rmi`` semantics, then garbage collection of
  blobs and snapshots nothing references any more (``_gc``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina import _leases
from lamina.errors import InUse, InvalidManifest, InvalidReference, NotFound
from lamina.image import _gc
from lamina.image._content import ContentStore
from lamina.image._manifest import Index, Manifest, Platform, parse_manifest
from lamina.image._platform import host_platform, platform_str, select_manifest
from lamina.image._reference import parse_reference
from lamina.image._snapshots import Snapshotter, chain_ids
from lamina.image._store import ImageRecord, ImageStore


@dataclass
class RemoveResult:
    """``rmi``/``prune``: names removed, then image IDs, blobs and snapshots deleted, and
    the bytes that freed (blobs, unpacked layers)."""

    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    reclaimed: int = 0


@dataclass
class LocalImages:
    root: Path
    content: ContentStore
    images: ImageStore
    snapshots: Snapshotter

    @classmethod
    def open(cls, root: Path) -> LocalImages:
        root = Path(root)
        content = ContentStore(root / "content")
        return cls(
            root=root,
            content=content,
            images=ImageStore(root / "images.db", content),
            snapshots=Snapshotter(root / "snapshots"),
        )

    def close(self) -> None:
        self.images.close()

    # -- work in flight
    def lease(self, kind: str) -> _gc.StoreLease:
        """A lease for an operation that writes to this store (``pull``, ``build``,
        ``load``...); reaps what dead owners left first. Use as a context manager."""
        self.reap()
        return _gc.StoreLease(self, kind)

    def reap(self) -> None:
        """Clean up after operations whose process died: their scratch directories,
        temp files and mounts (``lamina._leases.reap``), and abandoned ingests nobody
        will resume (``clean_ingests``). Cheap: a glob and an flock try per lease and
        per ingest."""
        _leases.reap(self.root)
        self.content.clean_ingests()

    # -- reading content
    def manifest_for(self, target_digest: str, platform: Platform | None = None) -> Manifest:
        """The platform manifest behind a target (itself when it is a manifest)."""
        parsed = parse_manifest(self.content.read(target_digest))
        if isinstance(parsed, Index):
            desc = select_manifest(parsed, platform or host_platform())
            child = parse_manifest(self.content.read(desc.digest))
            if not isinstance(child, Manifest):
                raise InvalidManifest(f"index {target_digest} nests an index; not supported")
            return child
        return parsed

    def config(self, record: ImageRecord) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.content.read(record.config_digest))
        return data

    def record(
        self, target_digest: str, platform: Platform | None = None, *, media_type: str = ""
    ) -> ImageRecord:
        """Build the record for a committed target (nothing is stored yet)."""
        raw = self.content.read(target_digest)
        parsed = parse_manifest(raw)
        manifest_digest = target_digest
        if isinstance(parsed, Index):
            desc = select_manifest(parsed, platform or host_platform())
            manifest_digest = desc.digest
        manifest = self.manifest_for(target_digest, platform)
        cfg = json.loads(self.content.read(manifest.config.digest))
        plat = Platform.of_config(cfg)
        return ImageRecord(
            digest=target_digest,
            media_type=media_type or parsed.media_type,
            size=len(raw),
            manifest_digest=manifest_digest,
            config_digest=manifest.config.digest,
            platform=platform_str(plat),
            image_size=manifest.config.size + sum(layer.size for layer in manifest.layers),
            created=cfg.get("created"),
            added=time.time(),
        )

    # -- snapshots
    def diff_ids(self, record: ImageRecord) -> list[str]:
        ids = self.config(record).get("rootfs", {}).get("diff_ids", [])
        return [str(i) for i in ids]

    def unpack(
        self,
        record: ImageRecord,
        lease: _gc.StoreLease | None = None,
        *,
        made: list[str] | None = None,
    ) -> list[str]:
        """Unpack every layer not yet unpacked; returns the chain IDs, bottom first. New
        snapshots are made under ``lease`` (else a lease of its own); ``made`` gets each
        snapshot this call created, for a caller that collects them again when what it
        is doing fails (load, import)."""
        manifest = self.manifest_for(record.manifest_digest)
        ids = self.diff_ids(record)
        if len(ids) != len(manifest.layers):
            raise InvalidManifest(
                f"image {record.id}: config lists {len(ids)} diff_ids for "
                f"{len(manifest.layers)} layers"
            )
        chains = chain_ids(ids)
        missing = [
            (layer, diff_id, chain)
            for layer, diff_id, chain in zip(manifest.layers, ids, chains, strict=True)
            if not self.snapshots.exists(chain)
        ]
        if not missing:
            return chains
        with contextlib.ExitStack() as stack:
            if lease is None:
                lease = stack.enter_context(self.lease("unpack"))
            present = lease.protect(
                blobs=[layer.digest for layer, _, _ in missing],
                snapshots=[chain for _, _, chain in missing],
            )
            for layer, diff_id, chain in missing:
                if chain in present.snapshots:
                    continue
                with self.content.open(layer.digest) as blob:
                    self.snapshots.unpack(
                        chain,
                        blob,
                        expected_diff_id=diff_id,
                        media_type=layer.media_type,
                        registrar=lease,
                    )
                if made is not None:
                    made.append(chain)
        return chains

    def is_unpacked(self, record: ImageRecord) -> bool:
        return all(self.snapshots.exists(c) for c in chain_ids(self.diff_ids(record)))

    # -- removal
    def remove(self, name_or_id: str, *, force: bool = False) -> RemoveResult:
        """Docker's ``rmi``. By name (tag or ``repo@digest``): remove that name; when a
        repository's last tag goes, its digest names go too; an image left without
        names is deleted (unless something holds it). Refused, unless ``force``, when
        that name is the image's only reference and a container uses it. By ID: delete
        the image (every record of it) with all its names; refused without ``force``
        when it is tagged more than once or in several repositories. An image a
        container uses is never deleted (Docker deletes one only stopped containers
        use, with ``force``; lamina's holds do not tell running from stopped)."""
        image = self.images.resolve(name_or_id)
        name = self._name_named(name_or_id, image)
        records = len(self.images.with_id(image.id))
        if name is not None:
            result = self._remove_name(name_or_id, name, image, force)
        else:
            result = self._remove_id(image, force)
        if len(self.images.with_id(image.id)) < records:
            collected = self.collect_garbage()
            result.deleted.extend(d for d in collected.removed if d != image.id)
            result.reclaimed = collected.reclaimed
        return result

    def _remove_name(self, typed: str, name: str, image: ImageRecord, force: bool) -> RemoveResult:
        refs = self._refs(image.id)
        if not force and _single_reference(refs):
            holder = self._holder(image.id)
            if holder is not None:
                raise InUse(
                    f'conflict: unable to remove repository reference "{typed}" (must force) - '
                    f"{_who(holder)} is using its referenced image {_short(image.id)}"
                )
        self.images.untag(name)
        result = RemoveResult(untagged=[name])
        ref = parse_reference(name)
        if ref.digest is None:
            # A repository's digest names go with its last tag (as Docker does).
            remaining = self._refs(image.id)
            if not any("@" not in n and parse_reference(n).name == ref.name for n in remaining):
                for n in remaining:
                    if "@" in n and parse_reference(n).name == ref.name:
                        with contextlib.suppress(NotFound):
                            self.images.untag(n)
                            result.untagged.append(n)
        # Records left without a name go, quietly kept while something holds them.
        for record in self.images.with_id(image.id):
            if not record.names:
                self.images.delete_if_unused(record.digest)
        if not self.images.with_id(image.id):
            result.deleted.append(image.id)
        return result

    def _remove_id(self, image: ImageRecord, force: bool) -> RemoveResult:
        records = self.images.with_id(image.id)
        refs = self._refs(image.id)
        holder = self._holder(image.id)
        if holder is not None:
            raise InUse(
                f"conflict: unable to delete {_short(image.id)} (cannot be forced) - "
                f"image is being used by {_who(holder)}"
            )
        if refs and not force and not _single_reference(refs):
            raise InUse(
                f"conflict: unable to delete {_short(image.id)} (must be forced) - "
                "image is referenced in multiple repositories"
            )
        # One transaction: a container holding it meanwhile makes this fail whole.
        names = self.images.delete_records([r.digest for r in records])
        return RemoveResult(untagged=names, deleted=[image.id])

    def _refs(self, image_id: str) -> list[str]:
        """Every name of every record of the image ``image_id``."""
        return sorted({n for r in self.images.with_id(image_id) for n in r.names})

    def _holder(self, image_id: str) -> str | None:
        for record in self.images.with_id(image_id):
            holders = self.images.holders(record.digest)
            if holders:
                return holders[0]
        return None

    @staticmethod
    def _name_named(name: str, image: ImageRecord) -> str | None:
        """The canonical name ``name`` spells, when it is one of ``image``'s names."""
        try:
            ref = parse_reference(name)
        except InvalidReference:
            return None
        return str(ref) if str(ref) in image.names else None

    def prune(
        self,
        *,
        all_unused: bool = False,
        select: Callable[[ImageRecord], bool] | None = None,
    ) -> RemoveResult:
        """``image prune``: dangling images (every unused one with ``all_unused``; only
        those ``select`` picks, for prune filters) and then everything of the image
        plane that nothing owns: unreferenced blobs and snapshots, abandoned ingests,
        scratch left by dead operations."""
        self.reap()
        result = RemoveResult()
        candidates = self.images.list() if all_unused else self.images.dangling()
        for image in candidates:
            if self.images.holders(image.digest):
                continue
            if select is not None and not select(image):
                continue
            try:
                names = self.images.delete_records([image.digest])
            except InUse:
                continue  # held meanwhile
            result.untagged.extend(names)
            if image.id not in result.deleted:
                result.deleted.append(image.id)
        collected = self.collect_garbage()
        result.deleted.extend(collected.removed)
        result.reclaimed = collected.reclaimed
        self.content.clean_ingests(resumable_for=0)
        _gc.sweep_scratch(self.root, [*self.snapshots.scratch(), *_gc.build_scratch(self.root)])
        return result

    def collect_garbage(
        self, *, blobs: list[str] | None = None, snapshots: list[str] | None = None
    ) -> _gc.Collected:
        """Sweep blobs and snapshots nothing references (all, or only these candidates:
        what a failed operation made); see ``_gc``."""
        return _gc.collect(self, blobs=blobs, snapshots=snapshots)

    def require(self, name_or_id: str) -> ImageRecord:
        try:
            return self.images.resolve(name_or_id)
        except NotFound:
            raise NotFound(f"image not known locally: {name_or_id}") from None


def _single_reference(names: list[str]) -> bool:
    """Docker's test of an image with one reference: at most one tag, and all names in
    one repository (False for none)."""
    if len(names) <= 1:
        return len(names) == 1
    tags = [n for n in names if "@" not in n]
    if len(tags) > 1:
        return False
    digest_repos = {parse_reference(n).name for n in names if "@" in n}
    single = parse_reference(tags[0] if tags else names[0]).name
    return digest_repos == {single}


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _who(holder: str) -> str:
    """``container:<id>`` as Docker names it: ``container <short id>``."""
    kind, sep, ident = holder.partition(":")
    return f"{kind} {ident[:12]}" if sep else holder
