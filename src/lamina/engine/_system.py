"""Housekeeping over every plane of one root: what ``container prune``, ``system
prune`` and ``system df`` do.

Each plane frees its own things: the engine its containers and what interrupted
commands left of them (``Engine.sweep``), ``lamina._leases`` the work of dead
owners, the image plane images, blobs, snapshots and its own leftovers
(``LocalImages.prune``), the builder its cache, the volume store volumes. This
module runs them in order and adds up what they hold and free.

Sizes are bytes on disk: images count their blobs (compressed layers, configs,
manifests) and unpacked snapshots, each shared one once; containers their
writable layer, logs and configuration; volumes their data.
"""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lamina.errors import LaminaError, NotFound

if TYPE_CHECKING:
    from lamina import _leases
    from lamina.engine._engine import Engine
    from lamina.image import ImageRecord, LocalImages
    from lamina.runtime import Container

_STOPPED = ("created", "exited", "failed")
_ACTIVE = ("running", "paused")


@dataclass
class Selector:
    """Docker's prune filters: ``until`` (created before), ``label``/``label!``."""

    until: float | None = None
    labels: builtins.list[str] = field(default_factory=list)  # KEY or KEY=VALUE
    not_labels: builtins.list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.until is not None or bool(self.labels or self.not_labels)

    def __call__(self, created: float, labels: Mapping[str, str]) -> bool:
        if self.until is not None and not created < self.until:
            return False
        if not all(_has_label(labels, spec) for spec in self.labels):
            return False
        return not any(_has_label(labels, spec) for spec in self.not_labels)


def _has_label(labels: Mapping[str, str], spec: str) -> bool:
    key, sep, value = spec.partition("=")
    return key in labels and (not sep or labels[key] == value)


@dataclass
class ContainerPrune:
    deleted: builtins.list[str] = field(default_factory=list)
    reclaimed: int = 0
    errors: builtins.list[str] = field(default_factory=list)


def prune_containers(engine: Engine, select: Selector | None = None) -> ContainerPrune:
    """``container prune``: free what interrupted commands left (``engine.sweep``), then
    remove every stopped container ``select`` picks."""
    engine.sweep()
    result = ContainerPrune()
    for c in engine.list(all=True):
        if str(c.state.status) not in _STOPPED:
            continue
        if select and not select(c.created, c.config.labels):
            continue
        try:
            size = engine.disk_usage(c.id)
            engine.remove(c.id, volumes=False)
        except NotFound:
            continue
        except LaminaError as e:
            result.errors.append(str(e))
            continue
        result.deleted.append(c.id)
        result.reclaimed += size
    return result


@dataclass
class SystemPrune:
    containers: ContainerPrune
    volumes: builtins.list[str] = field(default_factory=list)
    untagged: builtins.list[str] = field(default_factory=list)
    deleted: builtins.list[str] = field(default_factory=list)  # images, blobs, snapshots
    build_cache: builtins.list[str] = field(default_factory=list)
    leftovers: builtins.list[str] = field(default_factory=list)  # reaped leases' work
    reclaimed: int = 0


def prune_system(
    engine: Engine,
    *,
    all_images: bool = False,
    volumes: bool = False,
    select: Selector | None = None,
) -> SystemPrune:
    """``system prune``: the work of dead owners (leases), then stopped containers,
    anonymous unused volumes (``volumes``; Docker's ``system prune`` never removes
    named ones, even with -a), the build cache, and dangling images (unused ones
    with ``all_images``) with the image plane's own leftovers. With ``select``
    the build cache is kept (its entries carry no labels) and images are picked
    one by one."""
    from lamina import _leases

    root = engine.root
    leftovers = [
        f"{info.kind} (process {info.pid}): {_leftover_things(info)}"
        for info in _leases.reap(root)
        if info.paths or info.mounts
    ]
    report = SystemPrune(prune_containers(engine, select), leftovers=leftovers)
    report.reclaimed = report.containers.reclaimed
    if volumes:
        removed, size = _prune_volumes(engine, select)
        report.volumes, report.reclaimed = removed, report.reclaimed + size
    local = engine.images
    before = _plane_bytes(local)
    if not select:
        from lamina.builder import prune as prune_build_cache

        mounts = root / "build-cache" / "mounts"
        mounts_size = _du(mounts)
        _steps, report.build_cache = prune_build_cache(root)
        report.reclaimed += mounts_size
        result = engine.prune_images(all_unused=all_images)
        report.untagged, report.deleted = result.untagged, result.deleted
    else:
        _prune_images_selected(engine, all_images, select, report)
    report.reclaimed += max(0, before - _plane_bytes(local))
    return report


def _leftover_things(info: _leases.LeaseInfo) -> str:
    n = len(info.paths) + len(info.mounts)
    return f"{n} leftover{'s' if n != 1 else ''} removed"


def _prune_volumes(engine: Engine, select: Selector | None) -> tuple[list[str], int]:
    """Anonymous volumes no container uses (only those ``select`` picks)."""
    if select:
        skip = {v.name for v in engine.list_volumes() if not select(v.created, v.labels)}
        result = engine.prune_volumes(filters=None, skip=skip)
    else:
        result = engine.prune_volumes()
    return result.removed, result.reclaimed


def _prune_images_selected(
    engine: Engine, all_images: bool, select: Selector, report: SystemPrune
) -> None:
    """Image prune limited to what ``select`` picks (by the image's creation time and
    config labels)."""
    from lamina.runtime._logs import parse_timestamp

    def picked(image: ImageRecord) -> bool:
        try:
            created = parse_timestamp((image.created or "").encode())
        except ValueError:
            created = 0.0
        labels = (engine.images.config(image).get("config") or {}).get("Labels") or {}
        return select(created, labels)

    result = engine.prune_images(all_unused=all_images, select=picked)
    report.untagged.extend(result.untagged)
    report.deleted.extend(result.deleted)


def _plane_bytes(local: LocalImages) -> int:
    """Bytes the image plane keeps: committed blobs and unpacked snapshots."""
    total = sum(info.size for info in local.content.list())
    for chain in local.snapshots.list():
        with contextlib.suppress(NotFound, OSError, ValueError, KeyError):
            total += local.snapshots.info(chain).size
    return total


def _du(path: Path) -> int:
    from lamina.runtime._volumes import disk_usage

    return disk_usage(path)


# -- system df ---------------------------------------------------------------------------


@dataclass
class UsageRow:
    """One line of ``system df``."""

    type: str
    total: int
    active: int
    size: int
    reclaimable: int


@dataclass
class ImageUsage:
    record: ImageRecord
    size: int
    shared: int  # of ``size``, what other images use too
    containers: int


@dataclass
class ContainerUsage:
    container: Container
    size: int
    volumes: int


@dataclass
class VolumeUsage:
    name: str
    links: int  # containers using it
    size: int


@dataclass
class CacheUsage:
    id: str
    kind: str  # "regular" (a step's layers) or "exec.cachemount"
    size: int


@dataclass
class DiskUsage:
    rows: builtins.list[UsageRow]
    images: builtins.list[ImageUsage]
    containers: builtins.list[ContainerUsage]
    volumes: builtins.list[VolumeUsage]
    build_cache: builtins.list[CacheUsage]


def disk_usage(engine: Engine) -> DiskUsage:
    """What ``system df`` shows: per type, how many there are, how many are in use,
    their size on disk and how much of it pruning would free."""
    from lamina.image import LocalImages

    root = engine.root
    containers = [
        ContainerUsage(c, _size_of(engine, c.id), sum(m.type == "volume" for m in c.config.mounts))
        for c in engine.list(all=True)
    ]
    local = LocalImages.open(root)
    try:
        images, cache_images, image_row, cache_bytes = _image_usage(local)
    finally:
        local.close()
    volumes = _volume_usage(root, engine)
    cache = _cache_usage(root, cache_images)
    live_builds = _live_builds(root)
    rows = [
        image_row,
        UsageRow(
            "Containers",
            len(containers),
            sum(str(u.container.state.status) in _ACTIVE for u in containers),
            sum(u.size for u in containers),
            sum(u.size for u in containers if str(u.container.state.status) not in _ACTIVE),
        ),
        UsageRow(
            "Local Volumes",
            len(volumes),
            sum(v.links > 0 for v in volumes),
            sum(v.size for v in volumes),
            sum(v.size for v in volumes if not v.links),
        ),
        UsageRow(
            "Build Cache",
            len(cache),
            live_builds,
            cache_bytes + sum(c.size for c in cache if c.kind != "regular"),
            0 if live_builds else cache_bytes + sum(c.size for c in cache if c.kind != "regular"),
        ),
    ]
    return DiskUsage(rows, images, containers, volumes, cache)


def _size_of(engine: Engine, cid: str) -> int:
    try:
        return engine.disk_usage(cid)
    except LaminaError:
        return 0


def _image_usage(
    local: LocalImages,
) -> tuple[builtins.list[ImageUsage], builtins.list[tuple[ImageRecord, int]], UsageRow, int]:
    """Images as ``lamina images`` lists them (build-cache intermediates apart):
    their usage, the intermediates with their sizes, the Images row, and the bytes
    only the intermediates use."""
    from lamina.builder._commit import HOLDER as BUILD_CACHE

    items: dict[str, dict[str, int]] = {}  # image digest -> {blob or snapshot: bytes}
    users: dict[str, int] = {}  # blob or snapshot -> containers using images holding it
    listed, intermediates = [], []
    for record in local.images.list():
        holders = local.images.holders(record.digest)
        containers = sum(h.startswith("container:") for h in holders)
        items[record.digest] = _image_items(local, record)
        if record.names or containers or BUILD_CACHE not in holders:
            listed.append((record, containers))
        else:
            intermediates.append(record)
    count: dict[str, int] = {}
    for record, _ in listed:
        for key in items[record.digest]:
            count[key] = count.get(key, 0) + 1
    for record, containers in listed:
        for key in items[record.digest]:
            users[key] = users.get(key, 0) + containers
    sizes: dict[str, int] = {}
    for per in items.values():
        sizes.update(per)
    images = [
        ImageUsage(
            record,
            sum(items[record.digest].values()),
            sum(v for k, v in items[record.digest].items() if count[k] > 1),
            containers,
        )
        for record, containers in listed
    ]
    used_keys = set(count)
    total = sum(sizes[k] for k in used_keys)
    reclaimable = sum(sizes[k] for k in used_keys if not users.get(k))
    row = UsageRow("Images", len(listed), sum(c > 0 for _, c in listed), total, reclaimable)
    cache_only = {k for r in intermediates for k in items[r.digest]} - used_keys
    cache_images = [
        (r, sum(v for k, v in items[r.digest].items() if k in cache_only)) for r in intermediates
    ]
    return images, cache_images, row, sum(sizes[k] for k in cache_only)


def _image_items(local: LocalImages, record: ImageRecord) -> dict[str, int]:
    """The blobs and snapshots an image occupies, with their sizes."""
    from lamina.image import chain_ids

    out = {record.digest: record.size}
    with contextlib.suppress(LaminaError, OSError, ValueError):
        if record.manifest_digest != record.digest:
            out[record.manifest_digest] = local.content.info(record.manifest_digest).size
        manifest = local.manifest_for(record.manifest_digest)
        out[manifest.config.digest] = manifest.config.size
        for layer in manifest.layers:
            out[layer.digest] = layer.size
        for chain in chain_ids(local.diff_ids(record)):
            with contextlib.suppress(NotFound, OSError, ValueError, KeyError):
                out["snapshot:" + chain] = local.snapshots.info(chain).size
    return out


def _volume_usage(root: Path, engine: Engine) -> builtins.list[VolumeUsage]:
    from lamina.runtime._volumes import VolumeStore, disk_usage

    store = VolumeStore(root / "volumes")
    users = engine.volume_users
    return [VolumeUsage(v.name, len(users(v.name)), disk_usage(v.mountpoint)) for v in store.list()]


def _cache_usage(
    root: Path, cache_images: Iterable[tuple[ImageRecord, int]]
) -> builtins.list[CacheUsage]:
    """Build cache entries: the intermediate images of cached steps, and cache mounts."""
    out = [CacheUsage(r.id, "regular", size) for r, size in cache_images]
    mounts = root / "build-cache" / "mounts"
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(mounts)):
            out.append(CacheUsage(entry, "exec.cachemount", _du(mounts / entry)))
    return out


def _live_builds(root: Path) -> int:
    from lamina import _leases

    return sum(info.kind == "build" for info in _leases.live(root))
