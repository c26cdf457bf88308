"""Media types, manifest/index parsing and platform selection.

Documents are shaped like what Docker Hub, buildkit and podman really serve
(manifest lists, OCI indexes with attestation entries, schema1 leftovers).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lamina.errors import InvalidManifest, LaminaError, NotFound
from lamina.image import _media as media
from lamina.image._digest import sha256_digest
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
    normalize_platform,
    parse_platform,
    platform_str,
    select_manifest,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
D4 = "sha256:" + "4" * 64


def _bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def docker_manifest(layers: int = 2) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": media.DOCKER_MANIFEST,
        "config": {"mediaType": media.DOCKER_CONFIG, "size": 1457, "digest": D1},
        "layers": [
            {"mediaType": media.DOCKER_LAYER_GZIP, "size": 2000 + i, "digest": D2}
            for i in range(layers)
        ],
    }


def oci_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": media.OCI_MANIFEST,
        "config": {"mediaType": media.OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [
            {"mediaType": media.OCI_LAYER_ZSTD, "digest": D2, "size": 20},
            {
                "mediaType": media.OCI_LAYER_ND_GZIP,
                "digest": D3,
                "size": 30,
                "urls": ["https://example.com/layer"],
                "annotations": {"b": "2", "a": "1"},
            },
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }


def entry(digest: str, os: str, arch: str, variant: str | None = None, **extra: Any) -> Any:
    platform: dict[str, Any] = {"architecture": arch, "os": os}
    if variant:
        platform["variant"] = variant
    return {"mediaType": media.OCI_MANIFEST, "digest": digest, "size": 500, "platform": platform}


def oci_index(*entries: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": list(entries)}


# -- media types --------------------------------------------------------------------


def test_media_sets_and_accept() -> None:
    assert {media.OCI_MANIFEST, media.DOCKER_MANIFEST} == media.MANIFEST_TYPES
    assert {media.OCI_INDEX, media.DOCKER_MANIFEST_LIST} == media.INDEX_TYPES
    assert {media.OCI_CONFIG, media.DOCKER_CONFIG} == media.CONFIG_TYPES
    assert media.DOCKER_LAYER_FOREIGN in media.LAYER_TYPES
    assert len(media.LAYER_TYPES) == 9
    accepted = media.MANIFEST_ACCEPT.split(", ")
    assert set(accepted) == media.MANIFEST_TYPES | media.INDEX_TYPES
    assert media.base_media_type("Application/JSON; charset=utf-8") == "application/json"
    assert media.base_media_type(None) == ""


@pytest.mark.parametrize(
    ("mt", "compression"),
    [
        (media.OCI_LAYER_TAR, None),
        (media.OCI_LAYER_GZIP, "gzip"),
        (media.OCI_LAYER_ZSTD, "zstd"),
        (media.OCI_LAYER_ND_TAR, None),
        (media.OCI_LAYER_ND_GZIP, "gzip"),
        (media.OCI_LAYER_ND_ZSTD, "zstd"),
        (media.DOCKER_LAYER_TAR, None),
        (media.DOCKER_LAYER_GZIP, "gzip"),
        (media.DOCKER_LAYER_FOREIGN, "gzip"),
    ],
)
def test_layer_compression(mt: str, compression: str | None) -> None:
    assert media.layer_compression(mt) == compression


def test_unknown_layer_type() -> None:
    with pytest.raises(InvalidManifest, match="unsupported layer media type"):
        media.layer_compression("application/vnd.example.layer")


# -- parsing ------------------------------------------------------------------------


def test_parse_docker_manifest() -> None:
    m = parse_manifest(_bytes(docker_manifest()), media.DOCKER_MANIFEST)
    assert isinstance(m, Manifest)
    assert m.media_type == media.DOCKER_MANIFEST
    assert m.config == Descriptor(media.DOCKER_CONFIG, D1, 1457)
    assert [layer.size for layer in m.layers] == [2000, 2001]
    assert m.annotations == {} and m.subject is None and m.artifact_type is None


def test_parse_oci_manifest_keeps_everything() -> None:
    m = parse_manifest(_bytes(oci_manifest()))
    assert isinstance(m, Manifest)
    assert m.media_type == media.OCI_MANIFEST
    foreign = m.layers[1]
    assert foreign.urls == ("https://example.com/layer",)
    assert foreign.annotations == {"a": "1", "b": "2"}
    assert m.annotations["org.opencontainers.image.created"].startswith("2024")


def test_parse_docker_manifest_list() -> None:
    doc = {
        "manifests": [
            {
                "digest": D2,
                "mediaType": media.DOCKER_MANIFEST,
                "platform": {"architecture": "amd64", "os": "linux"},
                "size": 528,
            },
            {
                "digest": D3,
                "mediaType": media.DOCKER_MANIFEST,
                "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
                "size": 528,
            },
            {
                "digest": D4,
                "mediaType": media.DOCKER_MANIFEST,
                "platform": {
                    "architecture": "amd64",
                    "os": "windows",
                    "os.version": "10.0.17763.5576",
                    "os.features": ["win32k"],
                },
                "size": 528,
            },
        ],
        "mediaType": media.DOCKER_MANIFEST_LIST,
        "schemaVersion": 2,
    }
    idx = parse_manifest(_bytes(doc), "application/vnd.docker.distribution.manifest.list.v2+json")
    assert isinstance(idx, Index)
    assert idx.media_type == media.DOCKER_MANIFEST_LIST
    assert [d.platform for d in idx.manifests] == [
        Platform("linux", "amd64"),
        Platform("linux", "arm", "v7"),
        Platform("windows", "amd64", os_version="10.0.17763.5576", os_features=("win32k",)),
    ]


@pytest.mark.parametrize(
    ("doc", "header", "kind", "media_type"),
    [
        # no mediaType in the body: the Content-Type decides
        ({"schemaVersion": 2, "manifests": []}, media.OCI_INDEX, Index, media.OCI_INDEX),
        (
            {k: v for k, v in docker_manifest().items() if k != "mediaType"},
            media.DOCKER_MANIFEST,
            Manifest,
            media.DOCKER_MANIFEST,
        ),
        # generic Content-Types are ignored; then the shape decides (OCI default)
        ({"schemaVersion": 2, "manifests": []}, "application/json", Index, media.OCI_INDEX),
        (
            {k: v for k, v in oci_manifest().items() if k != "mediaType"},
            "application/octet-stream",
            Manifest,
            media.OCI_MANIFEST,
        ),
        ({"schemaVersion": 2, "manifests": []}, None, Index, media.OCI_INDEX),
        # the body's own mediaType wins over the header
        (docker_manifest(), media.OCI_MANIFEST, Manifest, media.DOCKER_MANIFEST),
        # parameters in the Content-Type are fine
        (
            {"schemaVersion": 2, "manifests": []},
            media.OCI_INDEX + "; charset=utf-8",
            Index,
            media.OCI_INDEX,
        ),
    ],
)
def test_kind_detection(doc: Any, header: str | None, kind: type, media_type: str) -> None:
    parsed = parse_manifest(_bytes(doc), header)
    assert isinstance(parsed, kind)
    assert parsed.media_type == media_type


def test_empty_layers_allowed_for_artifacts() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": media.OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": media.OCI_EMPTY, "digest": D1, "size": 2},
        "layers": [],
        "subject": {"mediaType": media.OCI_MANIFEST, "digest": D2, "size": 100},
    }
    m = parse_manifest(_bytes(doc))
    assert isinstance(m, Manifest)
    assert m.layers == [] and m.artifact_type == "application/vnd.example.sbom"
    assert m.subject == Descriptor(media.OCI_MANIFEST, D2, 100)


SCHEMA1 = {
    "schemaVersion": 1,
    "name": "library/busybox",
    "tag": "latest",
    "architecture": "amd64",
    "fsLayers": [{"blobSum": D1}],
    "history": [],
}


@pytest.mark.parametrize(
    ("doc", "header"),
    [
        (SCHEMA1, None),
        (SCHEMA1, media.DOCKER_SCHEMA1_SIGNED),
        ({**SCHEMA1, "schemaVersion": 2}, media.DOCKER_SCHEMA1),
        ({**SCHEMA1, "mediaType": media.DOCKER_SCHEMA1}, None),
    ],
)
def test_schema1_rejected(doc: Any, header: str | None) -> None:
    with pytest.raises(InvalidManifest, match="schema1 manifests are not supported"):
        parse_manifest(_bytes(doc), header)


def _with(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with ``path`` ("layers/0/size") set, or deleted if value is ..."""
    doc = json.loads(json.dumps(doc))
    *parents, last = path.split("/")
    target: Any = doc
    for p in parents:
        target = target[int(p)] if isinstance(target, list) else target[p]
    key: Any = int(last) if isinstance(target, list) else last
    if value is ...:
        del target[key]
    else:
        target[key] = value
    return doc


M = docker_manifest()
IDX = oci_index(entry(D2, "linux", "amd64"))

INVALID_DOCS: list[tuple[bytes, str]] = [
    (b"", "not valid JSON"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    (b"[]", "top level must be a JSON object"),
    (b'"manifest"', "top level must be a JSON object"),
    (_bytes({"schemaVersion": 2}), "neither an index"),
    (_bytes(_with(M, "schemaVersion", ...)), "schemaVersion is missing"),
    (_bytes(_with(M, "schemaVersion", 3)), "schemaVersion: must be 2, got 3"),
    (_bytes(_with(M, "schemaVersion", "2")), 'must be 2, got "2"'),
    (_bytes(_with(M, "schemaVersion", 2.0)), "must be 2, got 2.0"),
    (_bytes(_with(M, "mediaType", "application/vnd.x+json")), "unsupported manifest media type"),
    (_bytes(_with(M, "mediaType", 7)), "mediaType: must be a string"),
    (_bytes(_with(M, "config", ...)), "config: is missing"),
    (_bytes(_with(M, "config", [])), "config: must be an object"),
    (_bytes(_with(M, "layers", ...)), "layers: is missing"),
    (_bytes(_with(M, "layers", {})), "layers: must be a list"),
    (_bytes(_with(M, "layers/1", "x")), "layers[1]: must be an object"),
    (_bytes(_with(M, "layers/1/digest", "sha256:abc")), "layers[1].digest: invalid digest"),
    (_bytes(_with(M, "layers/0/digest", ...)), "layers[0].digest: is missing"),
    (_bytes(_with(M, "config/digest", "md5:" + "0" * 32)), 'unsupported algorithm "md5"'),
    (_bytes(_with(M, "layers/0/size", -1)), "layers[0].size: must be non-negative, got -1"),
    (_bytes(_with(M, "layers/0/size", 1.5)), "layers[0].size: must be an integer"),
    (_bytes(_with(M, "layers/0/size", "10")), "layers[0].size: must be an integer"),
    (_bytes(_with(M, "layers/0/size", True)), "layers[0].size: must be an integer"),
    (_bytes(_with(M, "layers/0/size", 2**63)), "must be non-negative"),
    (_bytes(_with(M, "layers/0/size", ...)), "layers[0].size: must be an integer"),
    (_bytes(_with(M, "layers/0/mediaType", ...)), "layers[0].mediaType: is missing"),
    (_bytes(_with(M, "layers/0/mediaType", "")), "must be a non-empty string"),
    (_bytes(_with(M, "layers/0/urls", "http://x")), "layers[0].urls: must be a list"),
    (_bytes(_with(M, "annotations", {"a": 1})), "annotations: must be an object of strings"),
    (_bytes(_with(M, "manifests", [])), "manifest: must not have manifests"),
    (_bytes(_with(IDX, "layers", [])), "index: must not have config or layers"),
    (_bytes(_with(IDX, "manifests", ...)), "manifests: is missing"),
    (_bytes(_with(IDX, "manifests/0/platform", "linux")), "platform: must be an object"),
    (_bytes(_with(IDX, "manifests/0/platform/os", ...)), "manifests[0].platform.os: is missing"),
    (_bytes(_with(IDX, "manifests/0/platform/os.features", "x")), "os.features: must be a list"),
    (_bytes(_with(IDX, "manifests/0/platform/variant", 8)), "variant: must be a string"),
]


@pytest.mark.parametrize(("data", "fragment"), INVALID_DOCS)
def test_invalid_documents(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidManifest) as exc:
        parse_manifest(data)
    msg = str(exc.value)
    assert fragment in msg
    assert "\n" not in msg


def test_index_content_type_cannot_turn_a_manifest_into_an_index() -> None:
    body = {k: v for k, v in docker_manifest().items() if k != "mediaType"}
    with pytest.raises(InvalidManifest, match="index: must not have config or layers"):
        parse_manifest(_bytes(body), media.OCI_INDEX)


# -- serialisation ------------------------------------------------------------------


def test_round_trip_is_stable() -> None:
    original = oci_manifest()
    parsed = parse_manifest(_bytes(original))
    data = dump_json(parsed)
    # compact, Go field order, annotation keys sorted
    assert data.startswith(b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest')
    assert b'"annotations":{"a":"1","b":"2"}' in data
    assert b" " not in data
    again = parse_manifest(data)
    assert again == parsed
    assert dump_json(again) == data
    assert sha256_digest(dump_json(again)) == sha256_digest(data)


def test_dump_descriptor_field_order() -> None:
    d = Descriptor(
        media_type=media.OCI_MANIFEST,
        digest=D1,
        size=3,
        platform=Platform("linux", "arm64", "v8"),
        annotations={"z": "1"},
        urls=("u",),
        artifact_type="application/x",
    )
    assert list(d.to_dict()) == [
        "mediaType",
        "digest",
        "size",
        "urls",
        "annotations",
        "platform",
        "artifactType",
    ]
    assert d.to_dict()["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert Descriptor.from_dict(d.to_dict()) == d


def test_build_and_dump_index() -> None:
    idx = Index(
        media.OCI_INDEX,
        [Descriptor(media.OCI_MANIFEST, D2, 7, Platform("linux", "amd64"))],
        annotations={"org.opencontainers.image.ref.name": "latest"},
    )
    data = dump_json(idx)
    assert json.loads(data) == {
        "schemaVersion": 2,
        "mediaType": media.OCI_INDEX,
        "manifests": [
            {
                "mediaType": media.OCI_MANIFEST,
                "digest": D2,
                "size": 7,
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }
    assert parse_manifest(data) == idx
    assert dump_json({"b": 1, "a": "é"}) == '{"b":1,"a":"é"}'.encode()


# -- image config -------------------------------------------------------------------


def config_doc(diff_ids: int = 2) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [D3] * diff_ids},
        "history": [{"created_by": "ADD file"}, {"empty_layer": True}],
    }


def test_parse_image_config_and_check_layers() -> None:
    config = parse_image_config(_bytes(config_doc()))
    assert config["config"]["Cmd"] == ["sh"]
    manifest = parse_manifest(_bytes(docker_manifest(2)))
    assert isinstance(manifest, Manifest)
    check_layers(manifest, config)
    short = parse_manifest(_bytes(docker_manifest(3)))
    assert isinstance(short, Manifest)
    with pytest.raises(InvalidManifest, match="manifest has 3 layers but its config lists 2"):
        check_layers(short, config)


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (_with(config_doc(), "rootfs", ...), "rootfs is missing"),
        (_with(config_doc(), "rootfs/type", "tar"), 'rootfs.type must be "layers", got "tar"'),
        (_with(config_doc(), "rootfs/diff_ids", ...), "diff_ids must be a list"),
        (_with(config_doc(), "rootfs/diff_ids/1", "sha256:x"), "diff_ids[1]: sha256 hex"),
        (_with(config_doc(), "rootfs/diff_ids/0", 5), "diff_ids[0]: not a string"),
        (_with(config_doc(), "config", "sh"), "config must be an object"),
        ([], "top level must be a JSON object"),
    ],
)
def test_invalid_image_config(doc: Any, fragment: str) -> None:
    with pytest.raises(InvalidManifest) as exc:
        parse_image_config(_bytes(doc))
    assert fragment in str(exc.value)


# -- platforms ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/x86-64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/arm64", Platform("linux", "arm64", "v8")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/aarch64", Platform("linux", "arm64", "v8")),
        ("linux/arm64/8", Platform("linux", "arm64", "v8")),
        ("linux/arm64/v9.0", Platform("linux", "arm64", "v9")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("linux/arm/5", Platform("linux", "arm", "v5")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("linux/armel", Platform("linux", "arm", "v6")),
        ("linux/i386", Platform("linux", "386")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("linux/s390x", Platform("linux", "s390x")),
        ("linux/ppc64le", Platform("linux", "ppc64le")),
        ("linux/riscv64", Platform("linux", "riscv64")),
        ("windows/amd64", Platform("windows", "amd64")),
        ("macos/arm64", Platform("darwin", "arm64", "v8")),
        ("arm64", Platform(host_platform().os, "arm64", "v8")),
        ("aarch64", Platform(host_platform().os, "arm64", "v8")),
    ],
)
def test_parse_platform(s: str, expected: Platform) -> None:
    assert parse_platform(s) == expected


def test_parse_platform_os_only_uses_host_arch() -> None:
    host = host_platform()
    p = parse_platform("linux")
    assert (p.os, p.architecture, p.variant) == ("linux", host.architecture, host.variant)


@pytest.mark.parametrize(
    "s", ["", "/", "linux/", "/amd64", "linux/amd64/v8/x", "linux amd64", "linux/am d64", "bogus"]
)
def test_parse_platform_invalid(s: str) -> None:
    with pytest.raises(LaminaError, match="invalid platform"):
        parse_platform(s)


def test_host_platform_is_normalised() -> None:
    host = host_platform()
    assert host.os == "linux"
    assert host.architecture not in ("x86_64", "aarch64")
    assert normalize_platform(host) == host
    assert parse_platform(platform_str(host)) == host


@pytest.mark.parametrize(
    ("p", "s"),
    [
        (Platform("linux", "amd64"), "linux/amd64"),
        (Platform("linux", "arm64", "v8"), "linux/arm64/v8"),
        (Platform("windows", "amd64", os_version="10.0"), "windows/amd64"),
    ],
)
def test_platform_str(p: Platform, s: str) -> None:
    assert platform_str(p) == s


@pytest.mark.parametrize(
    ("want", "have", "ok"),
    [
        ("linux/amd64", "linux/amd64", True),
        ("linux/amd64", "linux/x86_64", True),
        ("linux/amd64", "linux/amd64/v2", False),  # needs a newer CPU
        ("linux/amd64/v3", "linux/amd64/v2", True),
        ("linux/amd64/v3", "linux/amd64", True),
        ("linux/amd64", "linux/386", False),  # no cross-architecture fallback
        ("linux/amd64", "windows/amd64", False),
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64/v8", "linux/arm64", True),
        ("linux/arm64/v8", "linux/aarch64", True),
        ("linux/arm64/v8", "linux/arm64/v8.2", False),
        ("linux/arm64/v9", "linux/arm64/v8", True),
        ("linux/arm64", "linux/arm/v7", False),
        ("linux/arm/v7", "linux/arm/v7", True),
        ("linux/arm/v7", "linux/arm", True),
        ("linux/arm/v7", "linux/arm/v6", True),
        ("linux/arm/v7", "linux/arm/v5", True),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/arm", "linux/arm/v6", True),
        ("linux/s390x", "linux/s390x", True),
        ("linux/s390x", "linux/ppc64le", False),
    ],
)
def test_matches(want: str, have: str, ok: bool) -> None:
    # ``have`` stays raw (not normalised), as an index would carry it.
    os_name, arch, *variant = have.split("/")
    have_p = Platform(os_name, arch, variant[0] if variant else None)
    assert matches(parse_platform(want), have_p) is ok


def attestation(digest: str, of: str) -> Any:
    return {
        "mediaType": media.OCI_MANIFEST,
        "digest": digest,
        "size": 840,
        "annotations": {
            "vnd.docker.reference.digest": of,
            "vnd.docker.reference.type": "attestation-manifest",
        },
        "platform": {"architecture": "unknown", "os": "unknown"},
    }


BUILDKIT_INDEX = oci_index(
    entry(D1, "linux", "amd64"),
    entry(D2, "linux", "arm64", "v8"),
    attestation(D3, D1),
    attestation(D4, D2),
)
ARM_INDEX = oci_index(
    entry(D1, "linux", "arm", "v5"),
    entry(D2, "linux", "arm", "v6"),
    entry(D3, "linux", "arm", "v7"),
    entry(D4, "linux", "amd64"),
)
# No variant on arm means v7; the first of equally good entries wins.
TIE_INDEX = oci_index(entry(D1, "linux", "arm"), entry(D2, "linux", "arm", "v7"))
AMD64_LEVELS = oci_index(
    entry(D1, "linux", "amd64"),
    entry(D2, "linux", "amd64", "v3"),
    entry(D3, "linux", "amd64", "v2"),
)
UNTAGGED = oci_index(
    {"mediaType": media.OCI_MANIFEST, "digest": D1, "size": 1},
    entry(D2, "linux", "amd64"),
)


@pytest.mark.parametrize(
    ("doc", "want", "expected"),
    [
        (BUILDKIT_INDEX, "linux/amd64", D1),
        (BUILDKIT_INDEX, "linux/arm64", D2),
        (BUILDKIT_INDEX, "linux/aarch64", D2),
        (ARM_INDEX, "linux/arm/v7", D3),
        (ARM_INDEX, "linux/arm/v6", D2),
        (ARM_INDEX, "linux/arm/v5", D1),
        (oci_index(ARM_INDEX["manifests"][0], ARM_INDEX["manifests"][1]), "linux/arm/v7", D2),
        (oci_index(ARM_INDEX["manifests"][0]), "linux/arm/v7", D1),
        (TIE_INDEX, "linux/arm/v7", D1),
        (AMD64_LEVELS, "linux/amd64", D1),
        (AMD64_LEVELS, "linux/amd64/v3", D2),
        (AMD64_LEVELS, "linux/amd64/v4", D2),
        (AMD64_LEVELS, "linux/amd64/v2", D3),
        (UNTAGGED, "linux/amd64", D2),
    ],
)
def test_select_manifest(doc: Any, want: str, expected: str) -> None:
    idx = parse_manifest(_bytes(doc))
    assert isinstance(idx, Index)
    assert select_manifest(idx, parse_platform(want)).digest == expected


@pytest.mark.parametrize(
    ("doc", "want", "message"),
    [
        (
            BUILDKIT_INDEX,
            "linux/s390x",
            "no manifest for platform linux/s390x in index"
            " (available: linux/amd64, linux/arm64/v8)",
        ),
        (
            ARM_INDEX,
            "linux/arm64",
            "no manifest for platform linux/arm64/v8 in index"
            " (available: linux/arm/v5, linux/arm/v6, linux/arm/v7, linux/amd64)",
        ),
        (
            oci_index(attestation(D3, D1)),
            "linux/amd64",
            "no manifest for platform linux/amd64 in index (available: none)",
        ),
    ],
)
def test_select_manifest_not_found(doc: Any, want: str, message: str) -> None:
    idx = parse_manifest(_bytes(doc))
    assert isinstance(idx, Index)
    with pytest.raises(NotFound) as exc:
        select_manifest(idx, parse_platform(want))
    assert str(exc.value) == message
