"""Image references and digests, table-driven from distribution/reference's own cases.

The valid/invalid names come from distribution/reference (reference_test.go,
normalize_test.go, regexp_test.go), adapted to ParseNormalizedNamed: a first
component without "." or ":" (and not "localhost") is a Docker Hub namespace.
"""

from __future__ import annotations

import hashlib

import pytest

from lamina.errors import DigestMismatch, InvalidDigest, InvalidReference
from lamina.image._digest import (
    digest_hex,
    hasher_for,
    is_digest,
    sha256_digest,
    short_id,
    validate_digest,
    verify_digest,
)
from lamina.image._reference import Reference, parse_image_id, parse_reference

F64 = "f" * 64
SHA = "sha256:" + F64
SHA512 = "sha512:" + "f" * 128
BUSYBOX_SHA = "sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582"
HEX_ID = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"


# -- digests -----------------------------------------------------------------------


@pytest.mark.parametrize("d", [SHA, SHA512, BUSYBOX_SHA, "sha256:" + "0123456789abcdef" * 4])
def test_valid_digests(d: str) -> None:
    assert validate_digest(d) == d
    assert is_digest(d)


@pytest.mark.parametrize(
    ("d", "problem"),
    [
        ("", 'missing ":"'),
        (F64, 'missing ":"'),
        ("sha256", 'missing ":"'),
        ("md5:" + "f" * 32, 'unsupported algorithm "md5"'),
        ("sha384:" + "f" * 96, 'unsupported algorithm "sha384"'),
        ("SHA256:" + F64, 'unsupported algorithm "SHA256"'),
        (":" + F64, 'unsupported algorithm ""'),
        ("sha256:" + "f" * 63, "must be 64 characters, got 63"),
        ("sha256:" + "f" * 65, "must be 64 characters, got 65"),
        ("sha256:", "must be 64 characters, got 0"),
        ("sha256:" + "F" * 64, "lowercase hexadecimal"),
        ("sha256:" + "g" * 64, "lowercase hexadecimal"),
        ("sha512:" + "f" * 64, "must be 128 characters, got 64"),
        ("sha256:" + F64 + "\n", "must be 64 characters"),
    ],
)
def test_invalid_digests_name_the_problem(d: str, problem: str) -> None:
    with pytest.raises(InvalidDigest) as exc:
        validate_digest(d)
    msg = str(exc.value)
    assert problem in msg
    assert msg.startswith("invalid digest ")
    assert "\n" not in msg
    assert not is_digest(d)


def test_digest_helpers() -> None:
    data = b"hello lamina"
    d = sha256_digest(data)
    assert d == "sha256:" + hashlib.sha256(data).hexdigest()
    assert digest_hex(d) == hashlib.sha256(data).hexdigest()
    assert short_id(d) == d[7:19]
    assert short_id(d, 5) == d[7:12]
    verify_digest(data, d)
    with pytest.raises(DigestMismatch, match="does not match"):
        verify_digest(b"other", d)
    d512 = "sha512:" + hashlib.sha512(data).hexdigest()
    verify_digest(data, d512)
    h = hasher_for(d512)
    h.update(data)
    assert h.hexdigest() == digest_hex(d512)
    with pytest.raises(InvalidDigest):
        digest_hex("sha256:nothex")
    with pytest.raises(InvalidDigest):
        short_id("abc")


# -- references: valid -------------------------------------------------------------

# (input, domain, path, tag, digest)
VALID: list[tuple[str, str, str, str | None, str | None]] = [
    # familiar Docker Hub names
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("library/busybox", "docker.io", "library/busybox", "latest", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/library/debian", "docker.io", "library/debian", "latest", None),
    ("index.docker.io/docker/docker", "docker.io", "docker/docker", "latest", None),
    ("docker/docker", "docker.io", "docker/docker", "latest", None),
    ("fooo/bar", "docker.io", "fooo/bar", "latest", None),
    ("nonlibrary/ubuntu", "docker.io", "nonlibrary/ubuntu", "latest", None),
    ("other/library", "docker.io", "other/library", "latest", None),
    ("ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base", "latest", None),
    ("library/foo/bar", "docker.io", "library/foo/bar", "latest", None),
    ("store/foo/bar", "docker.io", "store/foo/bar", "latest", None),
    ("docker.io/library/foo/bar", "docker.io", "library/foo/bar", "latest", None),
    ("test_com", "docker.io", "library/test_com", "latest", None),
    ("test_com/foo", "docker.io", "test_com/foo", "latest", None),
    ("docker/migrator", "docker.io", "docker/migrator", "latest", None),
    ("docker.io", "docker.io", "library/docker.io", "latest", None),
    # a name that is only a tag away from a host:port stays a Hub name
    ("test.com:tag", "docker.io", "library/test.com", "tag", None),
    ("test.com:5000", "docker.io", "library/test.com", "5000", None),
    ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", "8080", None),
    ("192.168.1.1", "docker.io", "library/192.168.1.1", "latest", None),
    ("192.168.1.1:tag", "docker.io", "library/192.168.1.1", "tag", None),
    ("192.168.1.1:5000", "docker.io", "library/192.168.1.1", "5000", None),
    ("192.168.0.1:80", "docker.io", "library/192.168.0.1", "80", None),
    # path component separators
    ("a__b", "docker.io", "library/a__b", "latest", None),
    ("a-b", "docker.io", "library/a-b", "latest", None),
    ("a--b---c", "docker.io", "library/a--b---c", "latest", None),
    ("a.b_c-d__e", "docker.io", "library/a.b_c-d__e", "latest", None),
    ("a", "docker.io", "library/a", "latest", None),
    ("0", "docker.io", "library/0", "latest", None),
    (
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker.io",
        "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "latest",
        None,
    ),
    # 64 hex is a fine name once it is not the whole input
    ("docker.io/" + HEX_ID, "docker.io", "library/" + HEX_ID, "latest", None),
    (HEX_ID + ":tag", "docker.io", "library/" + HEX_ID, "tag", None),
    # registries
    ("localhost/foo", "localhost", "foo", "latest", None),
    ("localhost:5000/x:tag", "localhost:5000", "x", "tag", None),
    ("test.com/repo:tag", "test.com", "repo", "tag", None),
    ("test.com/foo", "test.com", "foo", "latest", None),
    ("test:5000/repo", "test:5000", "repo", "latest", None),
    ("test:5000/repo:tag", "test:5000", "repo", "tag", None),
    ("test:5000/repo@" + SHA, "test:5000", "repo", None, SHA),
    ("test:5000/repo:tag@" + SHA, "test:5000", "repo", "tag", SHA),
    ("test.com:8080/foo", "test.com:8080", "foo", "latest", None),
    ("test-com:8080/foo", "test-com:8080", "foo", "latest", None),
    ("Example.com/foo", "Example.com", "foo", "latest", None),
    ("127.0.0.1:5000/docker/docker", "127.0.0.1:5000", "docker/docker", "latest", None),
    ("127.0.0.1:5000/library/debian", "127.0.0.1:5000", "library/debian", "latest", None),
    ("127.0.0.1:5000/debian", "127.0.0.1:5000", "debian", "latest", None),
    ("192.168.0.1:8/debian", "192.168.0.1:8", "debian", "latest", None),
    ("192.168.1.1/repo", "192.168.1.1", "repo", "latest", None),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", "5050", None),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", "latest", None),
    (
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        "some-long-tag",
        None,
    ),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io",
        "test.example.com/my-app",
        "test.example.com",
        None,
    ),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", "latest", None),
    (
        "xn--7o8h.com/myimage:xn--7o8h.com@" + SHA512,
        "xn--7o8h.com",
        "myimage",
        "xn--7o8h.com",
        SHA512,
    ),
    # IPv6 registries
    ("[::1]:5000/repo", "[::1]:5000", "repo", "latest", None),
    ("[fc00::1]:5000/docker", "[fc00::1]:5000", "docker", "latest", None),
    ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000", "docker/docker", "latest", None),
    (
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "[fc00:1:2:3:4:5:6:7]:5000",
        "library/debian",
        "latest",
        None,
    ),
    ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", "latest", None),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", "tag", None),
    ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000", "repo", "tag", None),
    ("[2001:db8::1]:5000/repo@" + SHA, "[2001:db8::1]:5000", "repo", None, SHA),
    ("[2001:db8::1]:5000/repo:tag@" + SHA, "[2001:db8::1]:5000", "repo", "tag", SHA),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", "latest", None),
    # tags
    ("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None),
    ("x:_tag", "docker.io", "library/x", "_tag", None),
    ("x:1.0-rc_2.b", "docker.io", "library/x", "1.0-rc_2.b", None),
    ("x:" + "t" * 128, "docker.io", "library/x", "t" * 128, None),
    # digests: no default tag when pinned, both kept when both given
    ("busybox@" + BUSYBOX_SHA, "docker.io", "library/busybox", None, BUSYBOX_SHA),
    ("busybox:1.36@" + BUSYBOX_SHA, "docker.io", "library/busybox", "1.36", BUSYBOX_SHA),
    ("repo@" + SHA512, "docker.io", "library/repo", None, SHA512),
]


@pytest.mark.parametrize(("s", "domain", "path", "tag", "digest"), VALID)
def test_parse_valid(s: str, domain: str, path: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(s)
    assert ref == Reference(domain, path, tag, digest)
    assert ref.name == f"{domain}/{path}"
    assert ref.repository == path
    # canonical form round-trips, and so does the familiar form
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar()) == ref


def test_default_tag_can_be_turned_off() -> None:
    assert parse_reference("busybox", default_tag=False) == Reference(
        "docker.io", "library/busybox", None, None
    )
    assert parse_reference("busybox:1", default_tag=False).tag == "1"


def test_name_length_limit_counts_domain() -> None:
    # distribution counts the whole normalised name: 255 is fine, 256 is not.
    path = "/".join(["a" * 49] * 5)  # 249 characters
    assert len("ab.io/" + path) == 255
    ref = parse_reference("ab.io/" + path + ":tag-puts-this-over-max")
    assert ref.path == path
    with pytest.raises(InvalidReference, match="more than 255 characters"):
        parse_reference("abc.io/" + path)
    with pytest.raises(InvalidReference, match="more than 255 characters"):
        parse_reference("a/" * 128 + "a:tag")


# -- references: printing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "canonical", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("library/busybox:latest", "docker.io/library/busybox:latest", "busybox:latest"),
        (
            "docker.io/library/busybox@" + BUSYBOX_SHA,
            "docker.io/library/busybox@" + BUSYBOX_SHA,
            "busybox@" + BUSYBOX_SHA,
        ),
        (
            "docker.io/library/busybox:latest@" + BUSYBOX_SHA,
            "docker.io/library/busybox:latest@" + BUSYBOX_SHA,
            "busybox:latest@" + BUSYBOX_SHA,
        ),
        ("user/repo", "docker.io/user/repo:latest", "user/repo:latest"),
        ("docker.io/foo/bar", "docker.io/foo/bar:latest", "foo/bar:latest"),
        # shortening would make it ambiguous with foo/bar
        ("docker.io/library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
        ("example.com/busybox", "example.com/busybox:latest", "example.com/busybox:latest"),
        ("localhost:5000/x:tag", "localhost:5000/x:tag", "localhost:5000/x:tag"),
        (
            "127.0.0.1:8000/private/moonbase",
            "127.0.0.1:8000/private/moonbase:latest",
            "127.0.0.1:8000/private/moonbase:latest",
        ),
        ("[::1]:5000/repo:1", "[::1]:5000/repo:1", "[::1]:5000/repo:1"),
    ],
)
def test_canonical_and_familiar(s: str, canonical: str, familiar: str) -> None:
    ref = parse_reference(s)
    assert str(ref) == canonical
    assert ref.familiar() == familiar


def test_familiar_without_tag() -> None:
    assert parse_reference("user/repo", default_tag=False).familiar() == "user/repo"
    assert parse_reference("busybox", default_tag=False).familiar_name() == "busybox"


def test_with_tag_and_digest() -> None:
    ref = parse_reference("busybox")
    pinned = ref.with_digest(BUSYBOX_SHA)
    assert str(pinned) == "docker.io/library/busybox:latest@" + BUSYBOX_SHA
    assert str(pinned.with_tag("1.36")) == "docker.io/library/busybox:1.36@" + BUSYBOX_SHA
    assert str(pinned.without_tag()) == "docker.io/library/busybox@" + BUSYBOX_SHA
    assert ref.tag == "latest"  # immutable
    with pytest.raises(InvalidReference, match=r'invalid tag "\.bad"'):
        ref.with_tag(".bad")
    with pytest.raises(InvalidReference, match="invalid digest"):
        ref.with_digest("sha256:abc")


# -- references: invalid ------------------------------------------------------------

# (input, fragment of the one-line error message)
INVALID = [
    ("", "empty"),
    ("Busybox", 'invalid reference "Busybox": repository name must be lowercase'),
    ("Uppercase:tag", "must be lowercase"),
    ("docker/Docker", "must be lowercase"),
    ("docker.io/docker/Docker", "must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "must be lowercase"),
    # no "." or ":": not a domain, so the uppercase lands in the repository name
    ("Docker/docker", "must be lowercase"),
    ("FOO/bar", "must be lowercase"),
    ("Uppercase@" + SHA, "must be lowercase"),
    (HEX_ID, "64-character hexadecimal"),
    (SHA, "a digest is not a repository name"),
    (":justtag", "missing repository name"),
    ("@" + SHA, "missing repository name"),
    ("https://github.com/docker/docker", "invalid registry domain"),
    ("-docker", 'invalid repository name component "-docker"'),
    ("-docker/docker", 'component "-docker"'),
    ("-docker.io/docker/docker", 'invalid registry domain "-docker.io"'),
    ("foo-.com/bar", 'invalid registry domain "foo-.com"'),
    ("a_b.c/d", 'invalid registry domain "a_b.c"'),
    ("foo.com:http/bar", 'invalid registry domain "foo.com:http"'),
    ("docker///docker", "empty path component"),
    ("docker.io/docker///docker", "empty path component"),
    ("a/a/a/a/", "empty path component"),
    ("a//a/a", "empty path component"),
    ("localhost/", "empty path component"),
    ("aa/asdf$$^/aa", 'component "asdf$$^"'),
    ("a___b", 'component "a___b"'),
    ("a..b", 'component "a..b"'),
    ("a._b", 'component "a._b"'),
    ("a-.b", 'component "a-.b"'),
    ("a-", 'component "a-"'),
    ("_a", 'component "_a"'),
    ("a_", 'component "a_"'),
    (".a", 'component ".a"'),
    ("a.", 'component "a."'),
    ("foo.com/a-/a", 'component "a-"'),
    ("b\u00fcsybox", "component"),
    ("[fc00::1]", "IPv6"),
    ("[fc00::1]:5000", "IPv6"),
    ("[2001:db8::1]:tag", "IPv6"),
    ("fc00::1:5000/debian", 'invalid registry domain "fc00::1:5000"'),
    ("[fc00::1]:5000/-docker", 'component "-docker"'),
    ("[fe80::1%eth0]:5000/repo", "invalid registry domain"),
    ("[fe80::1%@invalidzone]:5000/repo", "invalid"),
    ("x:", 'invalid tag "" in "x:"'),
    ("x:.tag", 'invalid tag ".tag" in "x:.tag"'),
    ("x:-tag", 'invalid tag "-tag"'),
    ("x:t/ag", 'invalid registry domain "x:t"'),  # a ":" before a "/" is a port
    ("x:t@g", "invalid digest"),
    ("x:" + "t" * 129, "invalid tag"),
    ("x:t\u00e4g", "invalid tag"),
    ("x@", 'invalid digest "" in "x@"'),
    ("repo@sha256:" + "f" * 63, "must be 64 characters, got 63"),
    ("validname@invaliddigest:" + F64, 'unsupported algorithm "invaliddigest"'),
    ("repo@sha256:" + "F" * 64, "lowercase"),
    ("repo@" + SHA + "@" + SHA, "invalid digest"),
    ("repo:tag@" + SHA + ":x", "invalid digest"),
    ("repo name", "component"),
    (" busybox", "component"),
    ("busybox\n", 'component "busybox\\n"'),
]


@pytest.mark.parametrize(("s", "fragment"), INVALID)
def test_parse_invalid(s: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as exc:
        parse_reference(s)
    msg = str(exc.value)
    assert fragment in msg
    assert "\n" not in msg


def test_invalid_reference_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_reference("Busybox")


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        (HEX_ID, "sha256:" + HEX_ID),
        (SHA, SHA),
        (SHA512, SHA512),
        ("busybox", None),
        ("1a3f5e7d9c1b", None),  # short IDs are resolved against the store, not here
        ("sha256:abc", None),
    ],
)
def test_parse_image_id(s: str, expected: str | None) -> None:
    assert parse_image_id(s) == expected
