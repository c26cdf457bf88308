"""A container's volumes, for every isolation: named volumes created on first use,
anonymous ones made (the image's ``VOLUME``s among them), each new one filled from
the image at its mount point (Docker's copy-up), and the anonymous ones removed with
the container (``--rm``, ``rm -v``). Which containers use a volume is read from the
records (``extra["volumes"]``: mount target -> volume name).

The volumes themselves are ``lamina.runtime._volumes.VolumeStore``'s directories
(``<root>/volumes/<name>/_data``); the backends mount them (a bind, a virtio-fs share).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lamina.errors import LaminaError
from lamina.runtime._types import ContainerConfig

if TYPE_CHECKING:
    from lamina.image import ImageRecord, LocalImages
    from lamina.runtime._volumes import Volume, VolumeStore


def prepare_volumes(
    store: VolumeStore,
    local: LocalImages,
    image: ImageRecord,
    config: ContainerConfig,
    created: list[str],
) -> dict[str, Volume]:
    """The volume of each volume mount of ``config``, by mount target; the names of
    the volumes this made are appended to ``created`` (for the caller to remove them
    again when a later step fails). Copy-up fills a volume that is empty, unless its
    mount says ``nocopy``."""
    from lamina.runtime._paths import secure_join

    found: dict[str, Volume] = {}
    to_fill: list[tuple[Volume, str]] = []
    for m in config.mounts:
        if m.type != "volume":
            continue
        existed = bool(m.source) and store.exists(m.source)
        vol = store.create(m.source or None)
        if not existed:
            created.append(vol.name)
        found[m.target] = vol
        if "nocopy" not in m.options and not any(os.scandir(vol.mountpoint)):
            to_fill.append((vol, m.target))
    if to_fill:
        with image_tree(local, image) as tree:
            for vol, target in to_fill:
                store.populate(vol, secure_join(tree, target))
    return found


@contextlib.contextmanager
def image_tree(local: LocalImages, record: ImageRecord) -> Iterator[Path]:
    """The image's merged filesystem as a host directory, for the copy-up: its one
    layer's snapshot directory, or a read-only overlay of its layers, mounted under a
    lease (a killed command's mount is undone by the next one)."""
    import tempfile

    from lamina import _leases
    from lamina._mount import MNT_DETACH, libc, mount_overlay

    lowers = local.snapshots.lowerdirs(local.unpack(record))
    if len(lowers) == 1:  # a single layer is its own merged view
        yield lowers[0]
        return
    if os.geteuid() != 0:
        raise LaminaError("filling a volume from a layered image needs root (an overlay mount)")
    scratch = local.root / "engine" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with _leases.take(local.root, "copy-up") as lease:
        mnt = Path(tempfile.mkdtemp(prefix="copyup-", dir=scratch))
        lease.add_path(mnt)
        lease.add_mount(mnt)
        try:
            err = mount_overlay(mnt, [str(p) for p in lowers])  # no upper dir: read-only
            if err:
                raise LaminaError(f"cannot mount the image to fill a volume: {os.strerror(err)}")
            try:
                yield mnt
            finally:
                libc().umount2(str(mnt).encode(), MNT_DETACH)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(mnt)


def remove_anonymous(
    store: VolumeStore, names: Sequence[str], users: Callable[[str], Sequence[str]]
) -> None:
    """Delete the anonymous volumes ``names`` of a container being removed (one in
    use by another container, or gone already, is left alone)."""
    for vol in names:
        with contextlib.suppress(LaminaError, OSError):
            store.remove(vol, force=True, users=users)


# -- volumes as objects of their own: docker volume create|ls|inspect|rm|prune -----------

VOLUME_FILTERS = ("name", "label", "dangling", "driver")


def check_filters(filters: Mapping[str, Sequence[str]]) -> None:
    from lamina.engine._filters import InvalidFilter

    for key in filters:
        if key not in VOLUME_FILTERS:
            raise InvalidFilter(f"invalid filter {key!r} (supported: {', '.join(VOLUME_FILTERS)})")


def matches(
    vol: Volume, filters: Mapping[str, Sequence[str]], users: Callable[[str], Sequence[str]]
) -> bool:
    """Docker's volume filters: every value of every key must hold (``name``: a part
    of the name or a glob; ``label``: KEY or KEY=VALUE; ``dangling``: no container uses
    it; ``driver``)."""
    import fnmatch

    for key, values in filters.items():
        for value in values:
            if key == "name":
                if value not in vol.name and not fnmatch.fnmatch(vol.name, value):
                    return False
            elif key == "label":
                k, has_value, v = value.partition("=")
                if k not in vol.labels or (has_value and vol.labels[k] != v):
                    return False
            elif key == "dangling":
                if (not users(vol.name)) != (value.lower() in ("true", "1")):
                    return False
            elif key == "driver" and vol.driver != value:
                return False
    return True
