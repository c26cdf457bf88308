"""Turning a directory of changes into a layer, a snapshot and an image record.

A build step that changed the filesystem leaves an overlay *upper* directory (a
RUN container's, or the scratch overlay a COPY wrote through). ``commit_layer``
archives it into the content store (``write_layer``, deterministic, whiteouts for
deletions) and then *adopts* the directory as the snapshot of the new layer stack,
so the next step mounts it at once instead of unpacking the blob it was just
compressed into (``Snapshotter.adopt``); when that cannot be done (another
filesystem) the directory is dropped and the runtime unpacks the blob when it
needs the snapshot.

Everything the build stores is protected by its store lease (``_gc.StoreLease``)
before it is created or relied on, so a concurrent ``rmi``/``prune`` cannot sweep
a layer between the step that made it and the record that names it.

``stack_image`` gives a layer stack an image record the runtime can start a
container from: a config with nothing but the platform and the diff_ids, so the
same stack always is the same record. These records are held by ``build-cache``:
``image prune`` keeps them, ``lamina builder prune`` drops them.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.errors import NotFound
from lamina.image import _media as media
from lamina.image._gc import StoreLease
from lamina.image._local import LocalImages
from lamina.image._manifest import Descriptor, Manifest, Platform, dump_json
from lamina.image._snapshots import chain_ids

if TYPE_CHECKING:
    from lamina.image._layers import LayerWritten

HOLDER = "build-cache"
# Docker layer types become their OCI equivalents in the manifests lamina writes.
_OCI_LAYER_TYPE = {
    media.DOCKER_LAYER_GZIP: media.OCI_LAYER_GZIP,
    media.DOCKER_LAYER_TAR: media.OCI_LAYER_TAR,
}


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int
    diff_id: str

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class Store:
    """The local image plane, shared by the stage threads of one build: SQLite
    writes go through one lock (one connection, one transaction at a time); what is
    stored is protected by the build's ``lease``."""

    def __init__(self, local: LocalImages, lease: StoreLease) -> None:
        self.local = local
        self.lease = lease
        self.lock = threading.Lock()

    def add_blob(self, data: bytes) -> str:
        return self.lease.add_blob(data)

    def write_layer(
        self, src: Path, *, compression: str, epoch: int | None, overlay_upper: bool
    ) -> LayerWritten:
        """Archive ``src`` straight into the content store."""
        # Imported here: a fully cached build never compresses anything.
        from lamina.image._import import ingest_layer
        from lamina.image._layers import Compression

        return ingest_layer(
            self.local.content,
            src,
            ref="build",
            lease=self.lease,
            compression=Compression(compression),
            overlay_upper=overlay_upper,
            source_date_epoch=epoch,
        )

    def adopt(self, chain_id: str, fs: Path, diff_id: str, size: int) -> bool:
        """Make ``fs`` the snapshot ``chain_id`` (moved, not copied); False when it
        could not be (the directory is then removed)."""
        if chain_id in self.lease.protect(snapshots=[chain_id]).snapshots:
            shutil.rmtree(fs, ignore_errors=True)
            return True
        return self.local.snapshots.adopt(
            chain_id, fs, diff_id=diff_id, size=size, registrar=self.lease
        )

    def commit_dir(
        self,
        src: Path,
        base_diff_ids: list[str],
        *,
        compression: str,
        epoch: int | None,
        overlay_upper: bool,
    ) -> Layer:
        """``src`` as the next layer on ``base_diff_ids``: blob, then snapshot."""
        written = self.write_layer(
            src, compression=compression, epoch=epoch, overlay_upper=overlay_upper
        )
        chain = chain_ids([*base_diff_ids, written.diff_id])[-1]
        self.adopt(chain, src, written.diff_id, written.uncompressed_size)
        return Layer(written.media_type, written.digest, written.size, written.diff_id)

    def add_image(self, config: dict[str, Any], layers: list[dict[str, Any]]) -> tuple[str, str]:
        """Store ``config`` and an OCI manifest over it and ``layers``; returns
        (config digest, manifest digest)."""
        config_bytes = dump_json(config)
        config_digest = self.add_blob(config_bytes)
        manifest = Manifest(
            media.OCI_MANIFEST,
            Descriptor(media.OCI_CONFIG, config_digest, len(config_bytes)),
            [descriptor(d) for d in layers],
        )
        return config_digest, self.add_blob(dump_json(manifest))

    def stack_image(
        self, platform: Platform, layers: list[dict[str, Any]], diff_ids: list[str]
    ) -> str:
        """The image ID of a record holding exactly this layer stack (made and held
        by ``build-cache`` when new)."""
        cfg: dict[str, Any] = {"architecture": platform.architecture, "os": platform.os}
        if platform.variant:
            cfg["variant"] = platform.variant
        cfg["config"] = {}
        cfg["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
        config_digest, target = self.add_image(cfg, layers)
        with self.lock:
            images = self.local.images
            try:
                images.hold(HOLDER, target)
            except NotFound:
                # New (or pruned meanwhile): written and held at once, so no prune of
                # dangling images comes in between.
                images.put(self.local.record(target, platform), holder=HOLDER)
        return config_digest

    def put_image(
        self, config: dict[str, Any], layers: list[dict[str, Any]], names: list[str]
    ) -> Any:
        """Store a final image (config + OCI manifest) and name it."""
        _, target = self.add_image(config, layers)
        plat = Platform.of_config(config)
        with self.lock:
            record = self.local.record(target, plat)
            return self.local.images.put(record, names)


def descriptor(d: dict[str, Any]) -> Descriptor:
    mt = str(d["mediaType"])
    return Descriptor(
        _OCI_LAYER_TYPE.get(mt, mt),
        str(d["digest"]),
        int(d["size"]),
        urls=tuple(d.get("urls") or ()),
    )
