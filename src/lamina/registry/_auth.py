"""Registry authentication: WWW-Authenticate challenges, Basic, and bearer tokens.

Lifecycle: a ``RegistryClient`` pings ``/v2/`` once and hands the challenges it got
to its ``Authenticator``. From then on every request asks ``authorization(scopes)``
for its Authorization header *before* sending (no 401 round trip per request):

- no challenge: anonymous, no header;
- ``Basic``: the stored credentials, or none (the registry will say 401);
- ``Bearer``: a token from the realm for exactly that scope set, fetched with the
  credentials when there are some (GET with Basic auth, or an OAuth2 POST with the
  identity token) and cached per (realm, service, scopes) until shortly before it
  expires. Concurrent threads asking for the same scopes fetch it once.

A 401 on a request makes the client call ``update(challenges)`` and ``invalidate``
and retry once; a second 401 is AuthenticationRequired.

Scopes are ``repository:NAME:ACTIONS`` strings; ``merge_scopes`` folds several into
one per repository (``pull`` + ``push`` -> ``pull,push``) in a stable order.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lamina.errors import AuthenticationRequired, RegistryError
from lamina.registry._credentials import Credentials
from lamina.registry._httpx import httpx

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~/"
)
# Tokens are renewed this long before the server says they expire (clock skew,
# long requests).
_EXPIRY_MARGIN = 10.0
_DEFAULT_TOKEN_LIFETIME = 60.0


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: "bearer", "basic", ...
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse WWW-Authenticate header values (RFC 7235): several challenges per value,
    parameters with token or quoted-string values (backslash escapes)."""
    out: list[Challenge] = []
    for value in values:
        out.extend(_parse_header(value))
    return out


def _parse_header(s: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    params: dict[str, str] = {}
    scheme: str | None = None
    i, n = 0, len(s)

    def flush() -> None:
        if scheme is not None:
            challenges.append(Challenge(scheme, dict(params)))

    while i < n:
        while i < n and s[i] in " \t,":
            i += 1
        start = i
        while i < n and s[i] in _TOKEN_CHARS:
            i += 1
        word = s[start:i]
        if not word:
            i += 1  # stray character: skip it rather than loop forever
            continue
        j = i
        while j < n and s[j] in " \t":
            j += 1
        if j < n and s[j] == "=" and scheme is not None:
            i = j + 1
            while i < n and s[i] in " \t":
                i += 1
            value, i = _read_value(s, i)
            params[word.lower()] = value
        else:
            flush()
            scheme, params = word.lower(), {}
    flush()
    return challenges


def _read_value(s: str, i: int) -> tuple[str, int]:
    n = len(s)
    if i < n and s[i] == '"':
        i += 1
        buf: list[str] = []
        while i < n and s[i] != '"':
            if s[i] == "\\" and i + 1 < n:
                i += 1
            buf.append(s[i])
            i += 1
        return "".join(buf), i + 1
    start = i
    while i < n and s[i] not in ", \t":
        i += 1
    return s[start:i], i


def repository_scope(name: str, *actions: str) -> str:
    return f"repository:{name}:{','.join(actions)}"


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """One scope per resource with the union of its actions; stable order."""
    merged: dict[str, list[str]] = {}
    for scope in scopes:
        for part in scope.split(" "):
            if not part:
                continue
            resource, sep, actions = part.rpartition(":")
            if not sep:
                merged.setdefault(part, [])
                continue
            acts = merged.setdefault(resource, [])
            for a in actions.split(","):
                if a and a not in acts:
                    acts.append(a)
    order = {"pull": 0, "push": 1}
    return tuple(
        f"{res}:{','.join(sorted(acts, key=lambda a: (order.get(a, 2), a)))}" if acts else res
        for res, acts in merged.items()
    )


def _scope_pairs(scopes: tuple[str, ...]) -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for scope in scopes:
        resource, _, actions = scope.rpartition(":")
        pairs.update((resource, a) for a in actions.split(","))
    return pairs


@dataclass
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """Authorization headers for one registry host. Thread-safe."""

    def __init__(
        self, host: str, http: httpx.Client, credentials: Credentials | None = None
    ) -> None:
        self.host = host
        self.credentials = credentials
        self._http = http
        self._challenges: list[Challenge] = []
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self._lock = threading.Lock()
        self._fetch_locks: dict[tuple[str, str, tuple[str, ...]], threading.Lock] = {}

    # -- challenge state
    def update(self, challenges: list[Challenge]) -> None:
        if challenges:
            self._challenges = challenges

    @property
    def scheme(self) -> str | None:
        chosen = self._chosen()
        return chosen.scheme if chosen else None

    def _chosen(self) -> Challenge | None:
        by_scheme = {c.scheme: c for c in self._challenges}
        return by_scheme.get("bearer") or by_scheme.get("basic")

    def unsupported(self) -> str | None:
        """The scheme name when the registry only offers schemes lamina cannot do."""
        if self._challenges and self._chosen() is None:
            return self._challenges[0].scheme
        return None

    # -- headers
    def authorization(self, scopes: Iterable[str]) -> str | None:
        chosen = self._chosen()
        if chosen is None:
            return None
        if chosen.scheme == "basic":
            return self._basic_header()
        return "Bearer " + self._bearer_token(chosen, merge_scopes(scopes))

    def invalidate(self, scopes: Iterable[str]) -> None:
        want = _scope_pairs(merge_scopes(scopes))
        with self._lock:
            for key in [k for k in self._tokens if want <= _scope_pairs(k[2])]:
                del self._tokens[key]

    def _basic_header(self) -> str | None:
        c = self.credentials
        if c is None or not c.has_basic:
            return None
        raw = f"{c.username}:{c.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _bearer_token(self, challenge: Challenge, scopes: tuple[str, ...]) -> str:
        realm = challenge.realm
        if not realm:
            raise RegistryError(f"registry {self.host}: bearer challenge without a realm")
        service = challenge.params.get("service", "")
        key = (realm, service, scopes)
        with self._lock:
            cached = self._cached(key)
            if cached:
                return cached
            fetch_lock = self._fetch_locks.setdefault(key, threading.Lock())
        with fetch_lock:
            with self._lock:
                cached = self._cached(key)
                if cached:
                    return cached
            token = self._fetch_token(realm, service, scopes)
            with self._lock:
                self._tokens[key] = token
            return token.value

    def _cached(self, key: tuple[str, str, tuple[str, ...]]) -> str | None:
        """A live token for exactly these scopes, or for a superset of them (a push
        token serves the pulls of the same repository)."""
        now = time.monotonic()
        token = self._tokens.get(key)
        if token and token.expires_at > now:
            return token.value
        want = _scope_pairs(key[2])
        for (realm, service, scopes), tok in self._tokens.items():
            live = (realm, service) == key[:2] and tok.expires_at > now
            if live and want <= _scope_pairs(scopes):
                return tok.value
        return None

    def _fetch_token(self, realm: str, service: str, scopes: tuple[str, ...]) -> _Token:
        creds = self.credentials
        started = time.monotonic()
        try:
            if creds is not None and creds.identity_token:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "service": service,
                    "client_id": "lamina",
                    "scope": " ".join(scopes),
                }
                resp = self._http.post(realm, data=form)
            else:
                params: list[tuple[str, str | int | float | bool | None]] = []
                if service:
                    params.append(("service", service))
                params.extend(("scope", s) for s in scopes)
                auth: tuple[str, str] | None = None
                if creds is not None and creds.has_basic:
                    params.append(("account", creds.username))
                    auth = (creds.username, creds.password)
                resp = self._http.get(realm, params=params, auth=auth)
        except httpx.HTTPError as e:
            where = urlsplit(realm).netloc or realm
            raise RegistryError(
                f"cannot reach token server {where} for registry {self.host}: {_reason(e)}"
            ) from None
        if resp.status_code in (401, 403):
            raise AuthenticationRequired(self.refused_message("token server refused"))
        if resp.status_code != 200:
            raise RegistryError(
                f"registry {self.host}: token server answered HTTP {resp.status_code}"
            )
        try:
            body = resp.json()
        except ValueError:
            raise RegistryError(f"registry {self.host}: token server sent invalid JSON") from None
        value = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"registry {self.host}: token server sent no token")
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) and lifetime > 0 else 0.0
        seconds = max(seconds, _DEFAULT_TOKEN_LIFETIME)
        return _Token(value, started + seconds - _EXPIRY_MARGIN)

    def refused_message(self, what: str = "access denied") -> str:
        c = self.credentials
        if c is not None and (c.has_basic or c.identity_token):
            who = f" for user {c.username}" if c.username else ""
            return (
                f"registry {self.host}: {what}{who}: wrong credentials or no access; "
                f"run `lamina login {self.host}`"
            )
        return (
            f"registry {self.host}: {what}: authentication required; run `lamina login {self.host}`"
        )


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if text.startswith("[Errno"):
        text = text.partition("] ")[2] or text
    return text.strip().rstrip(".").lower() if text[:1].isupper() else text.strip()
