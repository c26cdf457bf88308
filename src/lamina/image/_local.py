"""The image plane on one lamina root: content store + image store + snapshots.

``LocalImages.open(root)`` is how every caller (registry pull/push, load/save,
import, later the runtime and builder) gets at local images. It owns the steps
that are the same whichever way an image arrived:

- ``record(target_digest, platform)``: once the target blob (manifest or index),
  the chosen platform manifest and its config are committed to the content store,
  build the ``ImageRecord`` for it;
- ``unpack(record)``: make sure every layer is unpacked as a snapshot (the shared,
  read-only lower dirs containers start from);
- ``remove`` / ``prune`` with Docker's ``rmi`` semantics, then garbage collection of
  blobs and snapshots no image references any more.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.errors import InUse, InvalidManifest, InvalidReference, NotFound
from lamina.image._content import ContentStore
from lamina.image._manifest import Index, Manifest, Platform, parse_manifest
from lamina.image._platform import host_platform, platform_str, select_manifest
from lamina.image._reference import parse_reference
from lamina.image._snapshots import Snapshotter, chain_ids
from lamina.image._store import ImageRecord, ImageStore


@dataclass
class RemoveResult:
    untagged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


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

    def unpack(self, record: ImageRecord, *, made: list[str] | None = None) -> list[str]:
        """Unpack every layer not yet unpacked; returns the chain IDs, bottom first.
        ``made`` gets each snapshot this call created, for a caller that must remove
        them again when what it is doing fails (load, import)."""
        manifest = self.manifest_for(record.manifest_digest)
        ids = self.diff_ids(record)
        if len(ids) != len(manifest.layers):
            raise InvalidManifest(
                f"image {record.id}: config lists {len(ids)} diff_ids for "
                f"{len(manifest.layers)} layers"
            )
        chains = chain_ids(ids)
        for layer, diff_id, chain in zip(manifest.layers, ids, chains, strict=True):
            if self.snapshots.exists(chain):
                continue
            with self.content.open(layer.digest) as blob:
                self.snapshots.unpack(
                    chain, blob, expected_diff_id=diff_id, media_type=layer.media_type
                )
            if made is not None:
                made.append(chain)
        return chains

    def is_unpacked(self, record: ImageRecord) -> bool:
        return all(self.snapshots.exists(c) for c in chain_ids(self.diff_ids(record)))

    # -- removal
    def remove(self, name_or_id: str, *, force: bool = False) -> RemoveResult:
        """Docker's ``rmi``. By name (tag or ``repo@digest``): remove that name, and
        the image with it when it was the last one. By ID: delete every record of
        that image, refused when it has several tags unless ``force``. Always refused
        while something holds it (a container)."""
        image = self.images.resolve(name_or_id)
        name = self._name_named(name_or_id, image)
        result = RemoveResult()
        if name is not None and len(image.names) > 1:
            self.images.untag(name)
            result.untagged.append(name)
            return result
        # The same image (one ID) can arrive as several records, e.g. loaded from an
        # oci-archive and a docker-archive: removal by ID removes them all.
        records = [image] if name is not None else self.images.with_id(image.id)
        tags = {t for r in records for t in r.tags}
        if name is None and len(tags) > 1 and not force:
            raise InUse(
                f"unable to delete {image.id[7:19]} (must be forced): image is referenced "
                f"in multiple repositories"
            )
        for record in records:
            holders = self.images.holders(record.digest)
            if holders:
                raise InUse(f"unable to remove image {name_or_id}: in use by {holders[0]}")
        for record in records:
            result.untagged.extend(record.names)
            self.images.delete(record.digest)
        result.deleted.append(image.id)
        result.deleted.extend(d for d in self.collect_garbage() if d != image.id)
        return result

    @staticmethod
    def _name_named(name: str, image: ImageRecord) -> str | None:
        """The canonical name ``name`` spells, when it is one of ``image``'s names."""
        try:
            ref = parse_reference(name)
        except InvalidReference:
            return None
        return str(ref) if str(ref) in image.names else None

    def prune(self, *, all_unused: bool = False) -> RemoveResult:
        result = RemoveResult()
        candidates = self.images.list() if all_unused else self.images.dangling()
        for image in candidates:
            if self.images.holders(image.digest):
                continue
            result.untagged.extend(image.names)
            self.images.delete(image.digest)
            result.deleted.append(image.id)
        result.deleted.extend(self.collect_garbage())
        return result

    def collect_garbage(self) -> list[str]:
        """Sweep blobs and snapshots nothing references; returns what went."""
        removed = self.images.collect_garbage()
        _, diff_lists = self.images.referenced_blobs()
        keep = {c for ids in diff_lists for c in chain_ids(ids)}
        for chain in self.snapshots.list():
            if chain not in keep:
                self.snapshots.remove(chain)
                removed.append(chain)
        return removed

    def require(self, name_or_id: str) -> ImageRecord:
        try:
            return self.images.resolve(name_or_id)
        except NotFound:
            raise NotFound(f"image not known locally: {name_or_id}") from None
