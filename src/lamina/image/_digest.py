"""Content digests ("sha256:<hex>"): validate, compute and shorten them.

Contract: a digest string is ``<algorithm>:<hex>`` where the algorithm is sha256
(64 lowercase hex) or sha512 (128 lowercase hex), exactly what go-digest accepts
for those two. Everything here is a pure function on strings/bytes; digests are
passed around as plain ``str`` once validated.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from lamina.errors import DigestMismatch, InvalidDigest

# Lowercase only: go-digest rejects uppercase hex, and two spellings of one digest
# would give one blob two names in the content store.
_HEX = {
    "sha256": re.compile(r"[a-f0-9]{64}"),
    "sha512": re.compile(r"[a-f0-9]{128}"),
}
_HEX_LEN = {"sha256": 64, "sha512": 128}


def quote(s: str) -> str:
    """``s`` in double quotes with control characters escaped, for one-line errors."""
    return json.dumps(s, ensure_ascii=False)


def digest_problem(s: str) -> str | None:
    """Return why ``s`` is not a valid digest (one phrase), or None when it is."""
    algo, sep, hexpart = s.partition(":")
    if not sep:
        return 'missing ":" between algorithm and hex'
    pattern = _HEX.get(algo)
    if pattern is None:
        return f"unsupported algorithm {quote(algo)} (want sha256 or sha512)"
    if pattern.fullmatch(hexpart) is None:
        want = _HEX_LEN[algo]
        if len(hexpart) != want:
            return f"{algo} hex must be {want} characters, got {len(hexpart)}"
        return f"{algo} hex must be lowercase hexadecimal"
    return None


def validate_digest(s: str) -> str:
    """Return ``s`` unchanged if it is a valid digest, else raise InvalidDigest."""
    problem = digest_problem(s)
    if problem is not None:
        raise InvalidDigest(f"invalid digest {quote(s)}: {problem}")
    return s


def is_digest(s: str) -> bool:
    """True when ``s`` is a valid digest string."""
    return digest_problem(s) is None


def sha256_digest(data: bytes) -> str:
    """The "sha256:<hex>" digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_algorithm(d: str) -> str:
    """The algorithm part ("sha256") of a valid digest."""
    return validate_digest(d).partition(":")[0]


def digest_hex(d: str) -> str:
    """The hex part of a valid digest."""
    return validate_digest(d).partition(":")[2]


def short_id(d: str, n: int = 12) -> str:
    """The first ``n`` hex characters, as docker shows image IDs."""
    return digest_hex(d)[:n]


def hasher_for(d: str) -> Any:
    """A fresh hashlib object for the algorithm of digest ``d`` (for streaming checks)."""
    return hashlib.new(digest_algorithm(d))


def verify_digest(data: bytes, d: str) -> None:
    """Raise DigestMismatch unless ``data`` hashes to digest ``d``."""
    h = hasher_for(d)
    h.update(data)
    got = f"{digest_algorithm(d)}:{h.hexdigest()}"
    if got != d:
        raise DigestMismatch(f"content digest {got} does not match expected {d}")
