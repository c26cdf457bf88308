"""Image operations of the engine over the image plane and the registry client:
pull, push, tag, remove, prune, import, load, save. Each reports what it did through
the engine's one place for events; removing images also removes what only they kept
(their cached micro-VM root disks, and the VM snapshots made from those disks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from lamina.image import ArchiveFormat, ImageRecord, LocalImages, Platform, RemoveResult
    from lamina.registry import RegistryConfig

Emit = Callable[[str, str, dict[str, str]], None]  # (action, actor, attributes)


def pull(
    local: LocalImages,
    reference: str,
    *,
    policy: str,
    platform: Platform | None,
    progress: Any,
    config: RegistryConfig,
    emit: Emit,
) -> ImageRecord:
    from lamina.registry import pull as registry_pull

    if policy == "missing":
        policy = "if-not-present"
    record = registry_pull(
        local, reference, policy=policy, platform=platform, progress=progress, config=config
    )
    actor, name = _event_names(reference)
    emit("pull", actor, {"name": name})
    return record


def _event_names(reference: str) -> tuple[str, str]:
    """Docker's actor and ``name`` of a pull or push of ``reference``: its familiar
    form with the tag (``busybox:latest``) and its familiar name (``busybox``)."""
    from lamina.errors import InvalidReference
    from lamina.image import parse_reference

    try:
        ref = parse_reference(reference)
    except InvalidReference:
        return reference, reference
    return ref.familiar(), ref.familiar_name()


def push(
    local: LocalImages,
    source: str,
    destination: str | None,
    *,
    progress: Any,
    config: RegistryConfig,
    chunk_size: int | None,
    emit: Emit,
) -> str:
    from lamina.registry import push as registry_push

    # The lease keeps the image's blobs from a concurrent rmi while they upload.
    with local.lease("push") as lease:
        lease.protect(images=[local.require(source).digest])
        digest = registry_push(
            local, source, destination, progress=progress, config=config, chunk_size=chunk_size
        )
    actor, name = _event_names(destination or source)
    emit("push", actor, {"name": name})
    return digest


def tag(local: LocalImages, source: str, target: str, *, emit: Emit) -> None:
    record = local.images.resolve(source)
    local.images.tag(source, target)
    emit("tag", record.id, {"name": _event_names(target)[0]})  # Docker's: busybox:latest


def remove(local: LocalImages, name: str, *, force: bool, emit: Emit) -> RemoveResult:
    """Docker's ``rmi`` of one image (``LocalImages.remove``)."""
    ids = {r.id for r in local.images.list()}
    record = local.images.resolve(name)
    result = local.remove(name, force=force)
    _report(result, ids, record.id, emit)
    collect_vm_disks(local)
    return result


def prune(
    local: LocalImages,
    *,
    all_unused: bool,
    select: Callable[[ImageRecord], bool] | None,
    emit: Emit,
) -> RemoveResult:
    """``image prune`` (``LocalImages.prune``)."""
    ids = {r.id for r in local.images.list()}
    result = local.prune(all_unused=all_unused, select=select)
    _report(result, ids, "", emit)
    collect_vm_disks(local)
    return result


def _report(result: RemoveResult, ids: set[str], image_id: str, emit: Emit) -> None:
    for name in result.untagged:
        emit("untag", image_id or name, {"name": _event_names(name)[0]})
    for deleted in result.deleted:
        if deleted in ids:  # an image (the rest are blobs and snapshots)
            emit("delete", deleted, {"name": deleted})


def inspect(local: LocalImages, rec: ImageRecord) -> dict[str, Any]:
    """``image inspect``'s data (Docker's fields where lamina has them)."""
    from lamina.image import parse_reference

    cfg = local.config(rec)
    return {
        "Id": rec.id,
        "Digest": rec.digest,
        "MediaType": rec.media_type,
        "ManifestDigest": rec.manifest_digest,
        "RepoTags": [parse_reference(t).familiar() for t in rec.tags],
        "RepoDigests": [parse_reference(d).familiar() for d in rec.repo_digests],
        "Created": rec.created,
        "Author": cfg.get("author", ""),
        "Architecture": cfg.get("architecture", ""),
        "Variant": cfg.get("variant", ""),
        "Os": cfg.get("os", ""),
        "Size": rec.image_size,
        "Config": cfg.get("config", {}),
        "RootFS": cfg.get("rootfs", {}),
        "History": cfg.get("history", []),
        "Unpacked": local.is_unpacked(rec),
    }


def collect_vm_disks(local: LocalImages) -> None:
    """Removed images take their cached micro-VM root disks with them, and the VM
    snapshots made from those disks, which no VM can match any more."""
    if (local.root / "vm" / "rootfs").is_dir():
        from lamina.vm._rootfs import collect_rootfs_garbage

        if collect_rootfs_garbage(local) and (local.root / "vm" / "snapshots").is_dir():
            from lamina.vm._snapshot import prune_snapshots

            prune_snapshots(local.root)


def import_(
    local: LocalImages,
    source: Path | BinaryIO,
    *,
    reference: str | None,
    changes: Sequence[str],
    message: str | None,
    platform: Platform | None,
    emit: Emit,
) -> ImageRecord:
    from lamina.image import import_rootfs

    record = import_rootfs(
        local, source, reference=reference, changes=changes, message=message, platform=platform
    )
    if reference:  # Docker's import tags first, then reports the import by ID
        emit("tag", record.id, {"name": _event_names(reference)[0]})
    emit("import", record.id, {"name": record.id})
    return record


def load(local: LocalImages, source: Path | BinaryIO, *, emit: Emit) -> list[ImageRecord]:
    from lamina.image import load as image_load

    records = image_load(local, source)
    for record in records:
        emit("load", record.id, {"name": record.tags[0] if record.tags else record.id})
    return records


def save(
    local: LocalImages,
    names: Sequence[str],
    dest: Path | BinaryIO,
    *,
    format: ArchiveFormat,
    emit: Emit,
) -> None:
    from lamina.image import save as image_save

    image_save(local, list(names), dest, format=format)
    for name in names:
        emit("save", name, {"name": name})
