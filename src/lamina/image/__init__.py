"""The image plane: references, manifests, content/image/snapshot stores, layers,
archives. Modules are private; this is the public API.

Names are imported on first use (PEP 562) so that a command which only lists
images does not pay for the archive, layer and compression modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lamina.image import _media as media
    from lamina.image._archive import FORMATS, ArchiveFormat, load, save
    from lamina.image._content import (
        BlobInfo,
        BlobIngester,
        BlobManager,
        BlobReader,
        BlobWriter,
        ContentStore,
    )
    from lamina.image._digest import (
        digest_hex,
        is_digest,
        sha256_digest,
        short_id,
        validate_digest,
        verify_digest,
    )
    from lamina.image._gc import StoreLease
    from lamina.image._import import apply_changes, import_rootfs
    from lamina.image._layers import (
        Compression,
        LayerResult,
        LayerWritten,
        apply_layer,
        detect_compression,
        open_decompressed,
        write_layer,
    )
    from lamina.image._local import LocalImages, RemoveResult
    from lamina.image._manifest import (
        Descriptor,
        Index,
        Manifest,
        Platform,
        check_layers,
        dump_json,
        parse_image_config,
        parse_manifest,
    )
    from lamina.image._platform import (
        host_platform,
        matches,
        parse_platform,
        platform_str,
        select_manifest,
    )
    from lamina.image._reference import Reference, parse_image_id, parse_reference
    from lamina.image._snapshots import Snapshotter, chain_ids
    from lamina.image._store import ImageRecord, ImageStore

_LAZY: dict[str, str] = {
    "ArchiveFormat": "lamina.image._archive",
    "BlobInfo": "lamina.image._content",
    "BlobIngester": "lamina.image._content",
    "BlobManager": "lamina.image._content",
    "BlobReader": "lamina.image._content",
    "BlobWriter": "lamina.image._content",
    "Compression": "lamina.image._layers",
    "ContentStore": "lamina.image._content",
    "Descriptor": "lamina.image._manifest",
    "FORMATS": "lamina.image._archive",
    "ImageRecord": "lamina.image._store",
    "ImageStore": "lamina.image._store",
    "Index": "lamina.image._manifest",
    "LayerResult": "lamina.image._layers",
    "LayerWritten": "lamina.image._layers",
    "LocalImages": "lamina.image._local",
    "Manifest": "lamina.image._manifest",
    "Platform": "lamina.image._manifest",
    "Reference": "lamina.image._reference",
    "RemoveResult": "lamina.image._local",
    "Snapshotter": "lamina.image._snapshots",
    "StoreLease": "lamina.image._gc",
    "apply_changes": "lamina.image._import",
    "apply_layer": "lamina.image._layers",
    "chain_ids": "lamina.image._snapshots",
    "check_layers": "lamina.image._manifest",
    "detect_compression": "lamina.image._layers",
    "digest_hex": "lamina.image._digest",
    "dump_json": "lamina.image._manifest",
    "host_platform": "lamina.image._platform",
    "import_rootfs": "lamina.image._import",
    "is_digest": "lamina.image._digest",
    "load": "lamina.image._archive",
    "matches": "lamina.image._platform",
    "open_decompressed": "lamina.image._layers",
    "parse_image_config": "lamina.image._manifest",
    "parse_image_id": "lamina.image._reference",
    "parse_manifest": "lamina.image._manifest",
    "parse_platform": "lamina.image._platform",
    "parse_reference": "lamina.image._reference",
    "platform_str": "lamina.image._platform",
    "save": "lamina.image._archive",
    "select_manifest": "lamina.image._platform",
    "sha256_digest": "lamina.image._digest",
    "short_id": "lamina.image._digest",
    "validate_digest": "lamina.image._digest",
    "verify_digest": "lamina.image._digest",
    "write_layer": "lamina.image._layers",
}


def __getattr__(name: str) -> Any:
    if name == "media":
        return importlib.import_module("lamina.image._media")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina.image' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "FORMATS",
    "ArchiveFormat",
    "BlobInfo",
    "BlobIngester",
    "BlobManager",
    "BlobReader",
    "BlobWriter",
    "Compression",
    "ContentStore",
    "Descriptor",
    "ImageRecord",
    "ImageStore",
    "Index",
    "LayerResult",
    "LayerWritten",
    "LocalImages",
    "Manifest",
    "Platform",
    "Reference",
    "RemoveResult",
    "Snapshotter",
    "StoreLease",
    "apply_changes",
    "apply_layer",
    "chain_ids",
    "check_layers",
    "detect_compression",
    "digest_hex",
    "dump_json",
    "host_platform",
    "import_rootfs",
    "is_digest",
    "load",
    "matches",
    "media",
    "open_decompressed",
    "parse_image_config",
    "parse_image_id",
    "parse_manifest",
    "parse_platform",
    "parse_reference",
    "platform_str",
    "save",
    "select_manifest",
    "sha256_digest",
    "short_id",
    "validate_digest",
    "verify_digest",
    "write_layer",
]
