"""OCI / Docker schema2 manifests, indexes and descriptors as plain dataclasses.

Lifecycle: bytes from a registry, an archive or the content store go through
``parse_manifest`` (which validates and never trusts them) and come back as a
``Manifest`` or an ``Index``. Parsed objects keep no link to their bytes: whoever
needs the digest hashes the bytes received, never a re-serialisation. Documents
lamina creates are built from the dataclasses and written with ``dump_json``,
whose output is stable (fixed field order as in the Go image-spec structs,
annotation keys sorted like Go maps, compact separators) so the same content
always gets the same digest. Pure logic, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from lamina.errors import InvalidManifest
from lamina.image import _media as media
from lamina.image._digest import digest_problem, quote

_MAX_SIZE = 2**63 - 1  # Go's int64: larger sizes are lies


@dataclass(frozen=True, slots=True)
class Platform:
    """The platform an image runs on (OCI ``platform`` object)."""

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        out = f"{self.os}/{self.architecture}"
        return f"{out}/{self.variant}" if self.variant else out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            d["os.version"] = self.os_version
        if self.os_features:
            d["os.features"] = list(self.os_features)
        if self.variant:
            d["variant"] = self.variant
        return d

    @classmethod
    def of_config(cls, config: Mapping[str, Any]) -> Platform:
        """The platform an image config states (os defaults to linux); not validated."""
        return cls(
            os=str(config.get("os", "linux")),
            architecture=str(config.get("architecture", "")),
            variant=config.get("variant"),
        )

    @classmethod
    def from_dict(cls, d: Any, where: str = "platform") -> Platform:
        obj = _object(d, where)
        features = obj.get("os.features")
        if features is not None and not (
            isinstance(features, list) and all(isinstance(f, str) for f in features)
        ):
            _fail(f"{where}.os.features", "must be a list of strings")
        return cls(
            os=_str(obj, "os", where),
            architecture=_str(obj, "architecture", where),
            variant=_opt_str(obj, "variant", where) or None,
            os_version=_opt_str(obj, "os.version", where) or None,
            os_features=tuple(features or ()),
        )


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A typed, sized, content-addressed pointer to a blob."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            d["urls"] = list(self.urls)
        if self.annotations:
            d["annotations"] = _sorted(self.annotations)
        if self.platform is not None:
            d["platform"] = self.platform.to_dict()
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "descriptor") -> Descriptor:
        obj = _object(d, where)
        digest = _str(obj, "digest", where)
        problem = digest_problem(digest)
        if problem is not None:
            _fail(f"{where}.digest", f"invalid digest {quote(digest)}: {problem}")
        size = obj.get("size")
        if type(size) is not int:  # bool is an int subclass; floats are not sizes
            _fail(f"{where}.size", "must be an integer")
        if not 0 <= size <= _MAX_SIZE:
            _fail(f"{where}.size", f"must be non-negative, got {size}")
        urls = obj.get("urls")
        if urls is not None and not (
            isinstance(urls, list) and all(isinstance(u, str) for u in urls)
        ):
            _fail(f"{where}.urls", "must be a list of strings")
        platform = obj.get("platform")
        return cls(
            media_type=_str(obj, "mediaType", where),
            digest=digest,
            size=size,
            platform=None
            if platform is None
            else Platform.from_dict(platform, f"{where}.platform"),
            annotations=_annotations(obj, where),
            urls=tuple(urls or ()),
            artifact_type=_opt_str(obj, "artifactType", where) or None,
        )


@dataclass(slots=True)
class Manifest:
    """An image manifest: one config blob and an ordered list of layers."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    subject: Descriptor | None = None

    def to_dict(self) -> dict[str, Any]:
        body = {
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        return _document(self, body)


@dataclass(slots=True)
class Index:
    """An image index / manifest list: manifests for several platforms."""

    media_type: str
    manifests: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    subject: Descriptor | None = None

    def to_dict(self) -> dict[str, Any]:
        return _document(self, {"manifests": [m.to_dict() for m in self.manifests]})


def _document(doc: Manifest | Index, body: dict[str, Any]) -> dict[str, Any]:
    """A manifest or index as JSON: the envelope (schemaVersion, mediaType,
    artifactType) around ``body``, then subject and annotations, in the spec's order."""
    d: dict[str, Any] = {"schemaVersion": 2, "mediaType": doc.media_type}
    if doc.artifact_type:
        d["artifactType"] = doc.artifact_type
    d.update(body)
    if doc.subject is not None:
        d["subject"] = doc.subject.to_dict()
    if doc.annotations:
        d["annotations"] = _sorted(doc.annotations)
    return d


def dump_json(obj: Any) -> bytes:
    """Stable compact JSON (UTF-8) for a dict or anything with ``to_dict()``."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def parse_manifest(data: bytes, media_type: str | None = None) -> Manifest | Index:
    """Parse and validate a manifest or index.

    The kind comes from the document's ``mediaType``, else from ``media_type``
    (a Content-Type; generic ones like application/json are ignored), else from
    its shape. A document whose fields contradict its kind is refused, so an
    index can never be mistaken for a manifest or the other way round.
    """
    doc = _load(data, "manifest")
    header = media.base_media_type(media_type)
    body_type = _opt_str(doc, "mediaType", "manifest")
    if (
        header in media.SCHEMA1_TYPES
        or body_type in media.SCHEMA1_TYPES
        or (doc.get("schemaVersion") == 1 and type(doc.get("schemaVersion")) is int)
    ):
        raise InvalidManifest(
            "schema1 manifests are not supported (the image must be re-pushed as schema2 or OCI)"
        )
    kind = _kind(doc, body_type, header)
    version = doc.get("schemaVersion")
    if version is None:
        _fail("manifest", "schemaVersion is missing")
    if type(version) is not int or version != 2:
        _fail("manifest.schemaVersion", f"must be 2, got {json.dumps(version)}")
    mt = body_type or (header if header in media.MANIFEST_TYPES | media.INDEX_TYPES else "")
    if kind == "index":
        return _parse_index(doc, mt or media.OCI_INDEX)
    return _parse_image_manifest(doc, mt or media.OCI_MANIFEST)


def parse_image_config(data: bytes) -> dict[str, Any]:
    """Parse an image config; checks only what unpacking relies on (rootfs.diff_ids)."""
    doc = _load(data, "image config")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise InvalidManifest("invalid image config: rootfs is missing or not an object")
    if rootfs.get("type") != "layers":
        raise InvalidManifest(
            'invalid image config: rootfs.type must be "layers",'
            f" got {json.dumps(rootfs.get('type'))}"
        )
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise InvalidManifest("invalid image config: rootfs.diff_ids must be a list")
    for i, diff_id in enumerate(diff_ids):
        problem = digest_problem(diff_id) if isinstance(diff_id, str) else "not a string"
        if problem is not None:
            raise InvalidManifest(f"invalid image config: rootfs.diff_ids[{i}]: {problem}")
    config = doc.get("config")
    if config is not None and not isinstance(config, dict):
        raise InvalidManifest("invalid image config: config must be an object")
    return doc


def check_layers(manifest: Manifest, config: Mapping[str, Any]) -> None:
    """Raise InvalidManifest unless the config lists one diff_id per manifest layer."""
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    count = len(diff_ids) if isinstance(diff_ids, list) else 0
    if count != len(manifest.layers):
        raise InvalidManifest(
            f"manifest has {len(manifest.layers)} layers but its config lists {count} diff_ids"
        )


# -- validation helpers ----------------------------------------------------------


def _fail(where: str, problem: str) -> NoReturn:
    raise InvalidManifest(f"invalid manifest: {where}: {problem}")


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidManifest(f"invalid {what}: not valid JSON ({e})")
    if not isinstance(doc, dict):
        raise InvalidManifest(f"invalid {what}: top level must be a JSON object")
    return doc


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, "must be an object")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        _fail(f"{where}.{key}", "is missing" if value is None else "must be a non-empty string")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        _fail(f"{where}.{key}", "must be a string")
    return value


def _annotations(obj: Mapping[str, Any], where: str) -> dict[str, str]:
    value = obj.get("annotations")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        _fail(f"{where}.annotations", "must be an object of strings")
    return value


def _sorted(annotations: Mapping[str, str]) -> dict[str, str]:
    return {k: annotations[k] for k in sorted(annotations)}


def _kind(doc: Mapping[str, Any], body_type: str, header: str) -> str:
    declared = body_type or header
    if declared in media.INDEX_TYPES:
        kind = "index"
    elif declared in media.MANIFEST_TYPES:
        kind = "manifest"
    elif body_type:
        raise InvalidManifest(f"unsupported manifest media type {quote(body_type)}")
    elif "manifests" in doc:
        kind = "index"
    elif "layers" in doc or "config" in doc:
        kind = "manifest"
    else:
        raise InvalidManifest(
            "invalid manifest: neither an index (manifests) nor a manifest (layers)"
        )
    # Refuse ambiguous documents (containerd's fix for CVE-2021-41190).
    if kind == "index" and ("config" in doc or "layers" in doc):
        _fail("index", "must not have config or layers")
    if kind == "manifest" and "manifests" in doc:
        _fail("manifest", "must not have manifests")
    return kind


def _descriptors(doc: Mapping[str, Any], key: str) -> list[Descriptor]:
    items = doc.get(key)
    if not isinstance(items, list):
        _fail(key, "is missing" if items is None else "must be a list")
    return [Descriptor.from_dict(item, f"{key}[{i}]") for i, item in enumerate(items)]


def _subject(doc: Mapping[str, Any]) -> Descriptor | None:
    subject = doc.get("subject")
    return None if subject is None else Descriptor.from_dict(subject, "subject")


def _parse_image_manifest(doc: Mapping[str, Any], media_type: str) -> Manifest:
    config = doc.get("config")
    if config is None:
        _fail("config", "is missing")
    return Manifest(
        media_type=media_type,
        config=Descriptor.from_dict(config, "config"),
        layers=_descriptors(doc, "layers"),
        annotations=_annotations(doc, "manifest"),
        artifact_type=_opt_str(doc, "artifactType", "manifest") or None,
        subject=_subject(doc),
    )


def _parse_index(doc: Mapping[str, Any], media_type: str) -> Index:
    return Index(
        media_type=media_type,
        manifests=_descriptors(doc, "manifests"),
        annotations=_annotations(doc, "index"),
        artifact_type=_opt_str(doc, "artifactType", "index") or None,
        subject=_subject(doc),
    )
