"""Docker image references ("busybox", "localhost:5000/app:1.0@sha256:...").

Contract: ``parse_reference`` accepts exactly what docker's
distribution/reference ``ParseNormalizedNamed`` accepts and normalises the same
way (``busybox`` -> ``docker.io/library/busybox:latest``); strings that
``ParseAnyReference`` would read as an image ID or a bare digest are refused,
because a Reference always names a repository. A Reference is an immutable value;
``str()`` gives the canonical form, ``familiar()`` docker's short form. Pure
string logic, no I/O.

One deliberate difference from distribution/reference v0.6: a first path
component with uppercase letters but no "." or ":" ("Docker/docker") is not taken
as a registry domain, so it fails as an uppercase repository name (docker and
podman behaved this way for years, and it catches typos of Hub names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from lamina.errors import InvalidReference
from lamina.image._digest import digest_problem, quote

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# The grammar of distribution/reference's regexp.go, piece by piece so that an
# error can name the piece that failed.
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
# Go's \w is ASCII-only.
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised reference: registry domain, repository path, optional tag/digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``domain/path``, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        """The repository path within the registry, e.g. ``library/busybox``."""
        return self.path

    def __str__(self) -> str:
        return self.name + _suffix(self.tag, self.digest)

    def familiar_name(self) -> str:
        """The name as docker prints it: Hub domain and ``library/`` dropped."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_REPO_PREFIX):
            rest = path[len(OFFICIAL_REPO_PREFIX) :]
            # library/foo/bar would be ambiguous with foo/bar if shortened.
            if "/" not in rest:
                return rest
        return path

    def familiar(self) -> str:
        """Docker's short form: ``busybox:latest``, ``user/repo``, ``localhost:5000/x:t``."""
        return self.familiar_name() + _suffix(self.tag, self.digest)

    def with_tag(self, tag: str) -> Reference:
        """A copy with ``tag`` (validated); a digest, if any, is kept."""
        if _TAG_RE.fullmatch(tag) is None:
            raise InvalidReference(f"invalid tag {quote(tag)} for {quote(self.name)}")
        return replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        """A copy pinned to ``digest`` (validated); a tag, if any, is kept."""
        problem = digest_problem(digest)
        if problem is not None:
            raise InvalidReference(
                f"invalid digest {quote(digest)} for {quote(self.name)}: {problem}"
            )
        return replace(self, digest=digest)

    def without_tag(self) -> Reference:
        """A copy with no tag (digest kept)."""
        return replace(self, tag=None)


def _suffix(tag: str | None, digest: str | None) -> str:
    out = ""
    if tag is not None:
        out += ":" + tag
    if digest is not None:
        out += "@" + digest
    return out


def _split_domain(name: str) -> tuple[str, str]:
    """distribution's splitDockerDomain, minus the uppercase-domain rule (see module doc)."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def parse_reference(s: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise a docker reference; InvalidReference names the bad part.

    With ``default_tag`` a reference with neither tag nor digest gets ``latest``.
    """
    if not s:
        raise InvalidReference('invalid reference "": empty string')
    if _IDENTIFIER_RE.fullmatch(s):
        raise InvalidReference(
            f"invalid reference {quote(s)}: cannot use a 64-character hexadecimal string"
            " as a repository name (it looks like an image ID)"
        )
    if digest_problem(s) is None:
        raise InvalidReference(f"invalid reference {quote(s)}: a digest is not a repository name")

    def bad(problem: str) -> InvalidReference:
        return InvalidReference(f"invalid reference {quote(s)}: {problem}")

    name_tag, at, digest = s.partition("@")
    # Neither names nor tags can contain "/" or ":" after the last "/", so a ":"
    # there always starts the tag (a port is always followed by "/").
    colon = name_tag.rfind(":")
    if colon > name_tag.rfind("/"):
        name, tag = name_tag[:colon], name_tag[colon + 1 :]
    else:
        name, tag = name_tag, None

    if not name:
        raise bad("missing repository name")
    if name.startswith("[") and "/" not in name_tag:
        raise bad("an IPv6 registry address must be followed by /repository")
    domain, path = _split_domain(name)
    if _DOMAIN_RE.fullmatch(domain) is None:
        raise bad(f"invalid registry domain {quote(domain)}")
    if path.lower() != path:
        raise bad("repository name must be lowercase")
    for component in path.split("/"):
        if not component:
            raise bad("empty path component in repository name")
        if _PATH_COMPONENT_RE.fullmatch(component) is None:
            raise bad(f"invalid repository name component {quote(component)}")
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise bad(f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")

    if tag is not None and _TAG_RE.fullmatch(tag) is None:
        raise InvalidReference(f"invalid tag {quote(tag)} in {quote(s)}")

    if not at:
        if tag is None and default_tag:
            tag = DEFAULT_TAG
        return Reference(domain, path, tag, None)
    problem = digest_problem(digest)
    if problem is not None:
        raise InvalidReference(f"invalid digest {quote(digest)} in {quote(s)}: {problem}")
    return Reference(domain, path, tag, digest)


def parse_image_id(s: str) -> str | None:
    """The digest ``s`` denotes as an image ID ("<64 hex>" or "sha256:<hex>"), else None.

    This is the half of ParseAnyReference that parse_reference refuses: callers
    that accept "name or ID" try this first.
    """
    if _IDENTIFIER_RE.fullmatch(s):
        return "sha256:" + s
    if digest_problem(s) is None:
        return s
    return None
