"""Media types of OCI and Docker schema2 image content.

Contract: constants only, plus the sets used to classify a descriptor and the
Accept header a registry client sends for manifest GETs. Docker schema1 types
are listed so they can be recognised and refused, never handled.
"""

from __future__ import annotations

import json

from lamina.errors import InvalidManifest

# OCI image-spec v1.1
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# Docker image manifest v2, schema 2
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Docker schema1: recognised only to give a clear refusal.
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

_GZIP_LAYERS = frozenset(
    {OCI_LAYER_GZIP, OCI_LAYER_ND_GZIP, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN}
)
_ZSTD_LAYERS = frozenset({OCI_LAYER_ZSTD, OCI_LAYER_ND_ZSTD})
_PLAIN_LAYERS = frozenset({OCI_LAYER_TAR, OCI_LAYER_ND_TAR, DOCKER_LAYER_TAR})
LAYER_TYPES = _GZIP_LAYERS | _ZSTD_LAYERS | _PLAIN_LAYERS
# Layers a registry may refuse to serve: fetched from the descriptor's urls instead.
NONDISTRIBUTABLE_TYPES = frozenset(
    {OCI_LAYER_ND_TAR, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_LAYER_FOREIGN}
)

# Indexes first: a multi-arch image should come back as its index so that
# platform selection happens here, not on the registry's guess.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))


def base_media_type(content_type: str | None) -> str:
    """Strip parameters and case from a Content-Type ("a/b; charset=x" -> "a/b")."""
    if not content_type:
        return ""
    return content_type.partition(";")[0].strip().lower()


def layer_compression(media_type: str) -> str | None:
    """The compression of a layer type: "gzip", "zstd" or None (plain tar).

    Unknown layer types raise InvalidManifest.
    """
    if media_type in _GZIP_LAYERS:
        return "gzip"
    if media_type in _ZSTD_LAYERS:
        return "zstd"
    if media_type in _PLAIN_LAYERS:
        return None
    raise InvalidManifest(f"unsupported layer media type {json.dumps(media_type)}")
