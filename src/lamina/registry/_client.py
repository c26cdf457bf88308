"""An OCI distribution (registry v2 API) client for one registry host.

Lifecycle: ``RegistryClient(host, config=...)`` is cheap; the first request pings
``/v2/`` to pick the scheme (HTTPS; plain HTTP only for loopback or insecure hosts
that do not speak TLS) and to learn the auth challenge. Every later request carries
its Authorization header up front (see ``_auth``); a 401 refreshes the token once.
One client is shared by the worker threads of a pull or push (httpx's pool is
thread-safe); ``close()`` it when done (or use it as a context manager).

Every failure surfaces as a one-line LaminaError: transport problems and
distribution error bodies become RegistryError / AuthenticationRequired /
NotFound (unknown manifest, blob or repository), digest problems DigestMismatch.

Blob downloads stream into a ``BlobWriter`` with large reads, resume with
``Range: bytes=N-`` after a dropped connection, and restart from zero when a
server ignores the Range. Uploads skip what exists, mount across repositories
when asked, and go up monolithically (POST + PUT) or in PATCH chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from urllib.parse import urlencode, urljoin

from lamina.errors import (
    AuthenticationRequired,
    DigestMismatch,
    LaminaError,
    NotFound,
    RegistryError,
)
from lamina.image import _media as media
from lamina.image._digest import digest_problem, quote, validate_digest
from lamina.registry._auth import Authenticator, parse_challenges, repository_scope
from lamina.registry._config import RegistryConfig
from lamina.registry._credentials import Credentials, lookup_credentials
from lamina.registry._httpx import httpx
from lamina.registry._progress import ProgressEvent, ProgressSink

USER_AGENT = "lamina/0.1"
MAX_MANIFEST_SIZE = 4 << 20  # containerd's limit: manifests are small JSON
MAX_CONFIG_SIZE = 64 << 20
READ_CHUNK = 1 << 20
UPLOAD_CHUNK = 1 << 20
THREADED_COPY_MIN = 4 << 20
# Blobs above this go up in PATCH chunks of this size unless told otherwise.
CHUNKED_UPLOAD_THRESHOLD = 256 << 20
DEFAULT_CHUNK_SIZE = 64 << 20
BLOB_RETRIES = 5
_BACKOFF = (0.1, 0.3, 0.8, 1.5, 3.0)

# Probed once per process: which scheme a plain-HTTP-capable host answers on.
_scheme_cache: dict[tuple[str, bool], str] = {}
_scheme_lock = threading.Lock()

_lookup_default = object()


class BytesCallback(Protocol):
    def __call__(self, n: int) -> None: ...


class BlobSink(Protocol):
    """What fetch_blob writes into: a content-store BlobWriter."""

    @property
    def offset(self) -> int: ...

    def write(self, data: bytes | memoryview) -> int: ...
    def truncate(self) -> None: ...
    def digest(self) -> str: ...


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str


class RegistryClient:
    """Talks to one registry host (a reference domain such as ``127.0.0.1:5000``)."""

    def __init__(
        self,
        host: str,
        *,
        config: RegistryConfig | None = None,
        credentials: Credentials | object | None = _lookup_default,
        insecure: bool = False,
        ca_file: str | None = None,
        max_connections: int = 16,
        timeout: float = 60.0,
        retries: int = BLOB_RETRIES,
        backoff: tuple[float, ...] = _BACKOFF,
    ) -> None:
        cfg = config or RegistryConfig.load()
        if insecure or ca_file:
            cfg = cfg.with_options(
                insecure_registries=[host] if insecure else [],
                ca_files={host: ca_file} if ca_file else None,
            )
        self.host = host
        self.config = cfg
        self.api_host = cfg.api_host(host)
        if credentials is _lookup_default:
            credentials = cfg.credentials_for(host) or lookup_credentials(host)
        assert credentials is None or isinstance(credentials, Credentials)
        self._http = httpx.Client(
            verify=cfg.tls_verify(host),
            timeout=httpx.Timeout(timeout, connect=15.0, pool=None),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            trust_env=False,
        )
        self.auth = Authenticator(host, self._http, credentials)
        # How often a dropped blob download is resumed, and the pauses in between.
        self.retries = retries
        self.backoff = backoff or (0.0,)
        self._base: str | None = None
        self._ping_lock = threading.Lock()

    # -- lifecycle
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        self.ping()
        assert self._base is not None
        return self._base

    def ping(self) -> None:
        """Find the scheme and the auth challenge (once)."""
        if self._base is not None:
            return
        with self._ping_lock:
            if self._base is not None:
                return
            resp, base = self._probe()
            if resp.status_code == 401:
                self.auth.update(parse_challenges(resp.headers.get_list("www-authenticate")))
                odd = self.auth.unsupported()
                if odd:
                    raise RegistryError(
                        f"registry {self.host}: unsupported authentication scheme {odd!r}"
                    )
            elif resp.status_code == 404:
                raise RegistryError(f"{self.host} does not serve the registry v2 API (/v2/ is 404)")
            elif resp.status_code >= 500:
                raise RegistryError(f"registry {self.host} answered HTTP {resp.status_code}")
            self._base = base

    def _probe(self) -> tuple[httpx.Response, str]:
        plain_ok = self.config.plain_http_allowed(self.host)
        key = (self.api_host, plain_ok)
        with _scheme_lock:
            cached = _scheme_cache.get(key)
        if cached:
            try:
                return self._probe_schemes([cached])
            except RegistryError:
                # The host may have changed since (another server on that port).
                with _scheme_lock:
                    _scheme_cache.pop(key, None)
        resp, base = self._probe_schemes(["https", "http"] if plain_ok else ["https"])
        with _scheme_lock:
            _scheme_cache[key] = base.partition(":")[0]
        return resp, base

    def _probe_schemes(self, schemes: list[str]) -> tuple[httpx.Response, str]:
        for i, scheme in enumerate(schemes):
            base = f"{scheme}://{self.api_host}"
            try:
                resp = self._http.get(base + "/v2/")
                resp.read()
            except httpx.HTTPError as e:
                if i + 1 < len(schemes) and _speaks_no_tls(e):
                    continue
                raise self._transport_error(e) from None
            return resp, base
        raise AssertionError("unreachable")

    # -- the request core
    def _url(self, path: str) -> str:
        return self.base_url + path

    def request(
        self,
        method: str,
        url: str,
        *,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None = None,
        content: Callable[[], bytes | Iterator[bytes]] | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """Send with auth; one retry after a 401 with a fresh token. The caller checks
        the status (and closes streamed responses)."""
        if not url.startswith(("http://", "https://")):
            url = self._url(url)
        else:
            self.ping()
        for attempt in (0, 1):
            hdrs = dict(headers or {})
            authz = self.auth.authorization(scopes)
            if authz:
                hdrs["Authorization"] = authz
            body = content() if content is not None else None
            req = self._http.build_request(method, url, headers=hdrs, content=body)
            try:
                resp = self._http.send(req, stream=stream, follow_redirects=follow_redirects)
            except httpx.HTTPError as e:
                raise self._transport_error(e) from None
            if resp.status_code != 401:
                return resp
            resp.read()
            resp.close()
            challenges = parse_challenges(resp.headers.get_list("www-authenticate"))
            if attempt == 0 and (challenges or self.auth.scheme):
                self.auth.update(challenges)
                self.auth.invalidate(scopes)
                if self.auth.scheme == "basic" and self.auth.authorization(scopes) is None:
                    break
                continue
            break
        why = _error_text(resp) or "access denied"
        raise AuthenticationRequired(self.auth.refused_message(why))

    def _transport_error(self, e: httpx.HTTPError) -> LaminaError:
        text = str(e)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            why = text.partition("certificate verify failed: ")[2].partition(" (_ssl")[0]
            return RegistryError(
                f"registry {self.host}: TLS certificate not trusted ({why or 'verify failed'}); "
                f"give its CA with --ca-file or /etc/docker/certs.d/{self.host}/ca.crt"
            )
        if isinstance(e, httpx.TimeoutException):
            return RegistryError(f"registry {self.host}: timed out ({type(e).__name__})")
        if isinstance(e, httpx.ConnectError):
            return RegistryError(f"cannot reach registry {self.host}: {_reason(text)}")
        return RegistryError(f"registry {self.host}: connection failed: {_reason(text)}")

    def _check(self, resp: httpx.Response, what: str, ok: tuple[int, ...] = (200,)) -> None:
        if resp.status_code in ok:
            return
        if not resp.is_stream_consumed:
            resp.read()
        code, message = _error_code(resp)
        detail = message or code.lower().replace("_", " ") or f"HTTP {resp.status_code}"
        if resp.status_code == 404 or code in ("MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN"):
            raise NotFound(f"{what}: not found in registry {self.host} ({detail})")
        if resp.status_code in (401, 403) or code in ("UNAUTHORIZED", "DENIED"):
            raise AuthenticationRequired(self.auth.refused_message(f"{what}: {detail}"))
        raise RegistryError(f"registry {self.host}: {what}: {detail} (HTTP {resp.status_code})")

    def _small_body(
        self,
        resp: httpx.Response,
        what: str,
        limit: int,
        too_large: str,
        *,
        raw: bool = False,
        declared: bool = False,
    ) -> bytes:
        """The body of a streamed response held in memory, refused beyond ``limit``
        bytes (``too_large`` says so; with ``declared``, a larger Content-Length is
        refused before reading); ``raw`` skips content decoding. Closes ``resp``."""
        try:
            self._check(resp, what)
            if declared:
                length = int(resp.headers.get("content-length") or 0)
                if length > limit:
                    raise RegistryError(f"{what}: {length} bytes is {too_large}")
            data = bytearray()
            for chunk in resp.iter_raw() if raw else resp.iter_bytes():
                data += chunk
                if len(data) > limit:
                    raise RegistryError(f"{what}: {too_large}")
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        finally:
            resp.close()
        return bytes(data)

    # -- manifests
    def get_manifest(self, repo: str, reference: str) -> FetchedManifest:
        """GET a manifest or index by tag or digest; verifies a digest reference, and
        the registry's Docker-Content-Digest when it sends one (as containerd and
        Docker do): the bytes received must hash to it, else nothing is returned."""
        what = f"manifest {self.host}/{repo}{_sep(reference)}{reference}"
        resp = self.request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            scopes=(repository_scope(repo, "pull"),),
            headers={"Accept": media.MANIFEST_ACCEPT},
            stream=True,
        )
        body = self._small_body(
            resp, what, MAX_MANIFEST_SIZE, "too large for a manifest", declared=True
        )
        if digest_problem(reference) is None:  # fetched by digest: it must match
            _verify(body, reference, what)
        announced = resp.headers.get("docker-content-digest")
        if announced:
            _verify_announced(body, announced, what)
        # The digest is always what lamina computed, never a header it was told.
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        mt = media.base_media_type(resp.headers.get("content-type"))
        return FetchedManifest(body, mt, digest)

    def head_manifest(self, repo: str, reference: str) -> str:
        """The digest the registry resolves ``reference`` to (HEAD; GET as fallback)."""
        what = f"manifest {self.host}/{repo}{_sep(reference)}{reference}"
        resp = self.request(
            "HEAD",
            f"/v2/{repo}/manifests/{reference}",
            scopes=(repository_scope(repo, "pull"),),
            headers={"Accept": media.MANIFEST_ACCEPT},
        )
        if resp.status_code == 404:
            raise NotFound(f"{what}: not found in registry {self.host}")
        self._check(resp, what)
        digest = str(resp.headers.get("docker-content-digest", ""))
        if digest and digest_problem(digest) is None:
            return digest
        return self.get_manifest(repo, reference).digest

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        what = f"manifest {self.host}/{repo}{_sep(reference)}{reference}"
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            scopes=(repository_scope(repo, "pull", "push"),),
            headers={"Content-Type": media_type},
            content=lambda: data,
        )
        self._check(resp, f"push {what}", ok=(200, 201, 202))
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        sent = resp.headers.get("docker-content-digest")
        if sent and sent != digest:
            raise DigestMismatch(f"{what}: registry stored digest {sent}, expected {digest}")
        return digest

    # -- blobs: download
    def blob_size(self, repo: str, digest: str, *, scopes: tuple[str, ...] = ()) -> int | None:
        """HEAD a blob: its size, or None when the registry does not have it."""
        resp = self.request(
            "HEAD",
            f"/v2/{repo}/blobs/{digest}",
            scopes=scopes or (repository_scope(repo, "pull"),),
            follow_redirects=True,
        )
        if resp.status_code == 404:
            return None
        self._check(resp, f"blob {digest} in {repo}")
        return int(resp.headers.get("content-length") or 0)

    def get_blob_bytes(self, repo: str, digest: str, max_size: int = MAX_CONFIG_SIZE) -> bytes:
        """A small blob (a config) in memory, verified."""
        validate_digest(digest)
        what = f"blob {digest} in {self.host}/{repo}"
        resp = self.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            scopes=(repository_scope(repo, "pull"),),
            headers={"Accept-Encoding": "identity"},
            stream=True,
            follow_redirects=True,
        )
        body = self._small_body(resp, what, max_size, f"larger than {max_size} bytes", raw=True)
        _verify(body, digest, what)
        return body

    def fetch_blob(
        self,
        repo: str,
        digest: str,
        size: int | None,
        sink: BlobSink,
        *,
        on_bytes: BytesCallback | None = None,
    ) -> None:
        """Stream a blob into ``sink`` (resuming at ``sink.offset``). The caller commits
        (which verifies the digest). Raises RegistryError after ``self.retries`` failed
        resumptions."""
        what = f"blob {digest} from {self.host}/{repo}"
        failures = 0
        restarted = False
        while True:
            if size is not None and sink.offset == size:
                return
            if size is not None and sink.offset > size:
                sink.truncate()
            try:
                finished = self._fetch_once(repo, digest, sink, on_bytes)
            except _Retryable as e:
                failures += 1
                if failures > self.retries:
                    raise RegistryError(
                        f"{what}: download failed after {self.retries} retries: {e}"
                    ) from None
                time.sleep(self.backoff[min(failures - 1, len(self.backoff) - 1)])
                continue
            if finished:
                if size is not None and sink.offset != size and not restarted:
                    # More bytes than announced, or a server that lost our offset:
                    # one clean restart before giving up.
                    restarted = True
                    sink.truncate()
                    continue
                return

    def _fetch_once(
        self,
        repo: str,
        digest: str,
        sink: BlobSink,
        on_bytes: BytesCallback | None,
    ) -> bool:
        offset = sink.offset
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            scopes=(repository_scope(repo, "pull"),),
            headers=headers,
            stream=True,
            follow_redirects=True,
        )
        try:
            if resp.status_code == 416 and offset:
                # Our partial data is not a prefix the server knows: start over.
                sink.truncate()
                raise _Retryable("server refused the resume range")
            if resp.status_code >= 500:
                raise _Retryable(f"HTTP {resp.status_code}")
            self._check(resp, f"blob {digest} in {self.host}/{repo}", ok=(200, 206))
            if offset and resp.status_code == 206 and _range_start(resp) != offset:
                sink.truncate()  # next attempt asks for the whole blob
                raise _Retryable("server answered a different range")
            if offset and resp.status_code == 200:
                # The server ignored the Range: the whole blob follows, start over.
                sink.truncate()
                if on_bytes is not None:
                    on_bytes(-offset)
            _copy_stream(resp, sink, on_bytes)
            return True
        except httpx.TransportError as e:
            raise _Retryable(_reason(str(e) or type(e).__name__)) from None
        finally:
            resp.close()

    # -- blobs: upload
    def mount_blob(self, repo: str, digest: str, from_repo: str) -> str | None:
        """Ask the registry to mount ``digest`` from ``from_repo``. Returns None when
        mounted, else the upload location the registry opened instead."""
        scopes = (repository_scope(repo, "pull", "push"), repository_scope(from_repo, "pull"))
        query = urlencode({"mount": digest, "from": from_repo})
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/?{query}", scopes=scopes)
        if resp.status_code == 201:
            return None
        self._check(resp, f"mount blob {digest} into {repo}", ok=(202,))
        return self._location(resp)

    def start_upload(self, repo: str) -> str:
        resp = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scopes=(repository_scope(repo, "pull", "push"),),
            headers={"Content-Length": "0"},
        )
        self._check(resp, f"start upload to {self.host}/{repo}", ok=(202,))
        return self._location(resp)

    def upload_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        open_blob: Callable[[], BinaryIO],
        *,
        chunk_size: int | None = None,
        location: str | None = None,
        on_bytes: BytesCallback | None = None,
    ) -> None:
        """Upload a blob: one PUT, or PATCH chunks then PUT when ``chunk_size`` is set
        or the blob is larger than CHUNKED_UPLOAD_THRESHOLD."""
        scopes = (repository_scope(repo, "pull", "push"),)
        loc = location or self.start_upload(repo)
        what = f"upload blob {digest} to {self.host}/{repo}"
        if chunk_size is None and size > CHUNKED_UPLOAD_THRESHOLD:
            chunk_size = DEFAULT_CHUNK_SIZE
        if chunk_size is None or chunk_size >= size:
            resp = self.request(
                "PUT",
                _with_query(loc, {"digest": digest}),
                scopes=scopes,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                content=_range_body(open_blob, 0, size, on_bytes),
            )
            self._check(resp, what, ok=(201, 204))
            return
        offset = 0
        while offset < size:
            n = min(chunk_size, size - offset)
            start = offset
            resp = self.request(
                "PATCH",
                loc,
                scopes=scopes,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(n),
                    "Content-Range": f"{start}-{start + n - 1}",
                },
                content=_range_body(open_blob, start, n, on_bytes),
            )
            self._check(resp, what, ok=(202, 204))
            loc = self._location(resp)
            offset += n
        resp = self.request(
            "PUT",
            _with_query(loc, {"digest": digest}),
            scopes=scopes,
            headers={"Content-Length": "0"},
        )
        self._check(resp, what, ok=(201, 204))

    def _location(self, resp: httpx.Response) -> str:
        loc = str(resp.headers.get("location") or "")
        if not loc:
            raise RegistryError(f"registry {self.host}: upload response without Location")
        return urljoin(str(resp.request.url), loc)


class _Retryable(Exception):
    """A transient download failure: resume with a Range request."""


def _copy_stream(resp: httpx.Response, sink: BlobSink, on_bytes: BytesCallback | None) -> None:
    """Copy a response body into the sink. Large bodies use a second thread for the
    sink (hashing and file writes release the GIL), so receiving overlaps with them."""
    length = int(resp.headers.get("content-length") or 0)
    if length < THREADED_COPY_MIN:
        for chunk in resp.iter_raw():
            sink.write(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
        return
    q: queue.Queue[bytearray | None] = queue.Queue(maxsize=8)
    failed: list[BaseException] = []

    def drain() -> None:
        while (item := q.get()) is not None:
            if failed:
                continue
            try:
                sink.write(memoryview(item))
                if on_bytes is not None:
                    on_bytes(len(item))
            except BaseException as e:
                failed.append(e)

    worker = threading.Thread(target=drain, name="blob-writer", daemon=True)
    worker.start()
    try:
        batch = bytearray()
        for chunk in resp.iter_raw():
            batch += chunk
            if len(batch) >= READ_CHUNK:
                q.put(batch)  # handed over, not copied
                batch = bytearray()
                if failed:
                    break
        if batch:
            q.put(batch)
    finally:
        # Whatever was received is written before a retry looks at sink.offset.
        q.put(None)
        worker.join()
    if failed:
        raise failed[0]


def _read_range(
    open_blob: Callable[[], BinaryIO], start: int, length: int, on_bytes: BytesCallback | None
) -> Iterator[bytes]:
    with open_blob() as f:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(UPLOAD_CHUNK * 4, left))
            if not chunk:
                raise RegistryError(f"local blob ended {left} bytes early while uploading")
            left -= len(chunk)
            yield chunk
            if on_bytes is not None:
                on_bytes(len(chunk))


def _range_body(
    open_blob: Callable[[], BinaryIO], start: int, length: int, on_bytes: BytesCallback | None
) -> Callable[[], Iterator[bytes]]:
    return lambda: _read_range(open_blob, start, length, on_bytes)


def _range_start(resp: httpx.Response) -> int | None:
    """The first byte of a 206 answer ("Content-Range: bytes 100-199/200")."""
    value = resp.headers.get("content-range", "")
    first = value.removeprefix("bytes ").partition("-")[0].strip()
    return int(first) if first.isdigit() else None


def _with_query(url: str, params: dict[str, str]) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urlencode(params)


def _sep(reference: str) -> str:
    return "@" if ":" in reference else ":"


def _speaks_no_tls(e: httpx.HTTPError) -> bool:
    """A TLS handshake that failed because the server talks plain HTTP."""
    text = str(e)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return False
    return isinstance(e, httpx.ConnectError) and (
        "SSL" in text or "EOF occurred" in text or "record layer" in text.lower()
    )


def _reason(text: str) -> str:
    if text.startswith("[Errno"):
        text = text.partition("] ")[2] or text
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def _error_code(resp: httpx.Response) -> tuple[str, str]:
    try:
        body = resp.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        return "", ""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        return str(first.get("code") or ""), str(first.get("message") or "")
    return "", ""


def _error_text(resp: httpx.Response) -> str:
    code, message = _error_code(resp)
    return message or code.lower().replace("_", " ")


def _verify(body: bytes, digest: str, what: str, claim: str = "") -> None:
    """Raise DigestMismatch unless ``body`` hashes to ``digest`` (its own algorithm);
    ``claim`` ends the message (who said ``digest``)."""
    algo = digest.partition(":")[0]
    got = f"{algo}:{hashlib.new(algo, body).hexdigest()}"
    if got != digest:
        raise DigestMismatch(f"{what}: registry sent content with digest {got}{claim}")


def _verify_announced(body: bytes, announced: str, what: str) -> None:
    """Raise DigestMismatch unless ``body`` hashes to the Docker-Content-Digest the
    registry sent with it (a malformed one is refused too, as containerd does)."""
    problem = digest_problem(announced)
    if problem is not None:
        raise DigestMismatch(
            f"{what}: registry sent Docker-Content-Digest {quote(announced)}, "
            f"which is not a digest ({problem})"
        )
    _verify(body, announced, what, f", but its Docker-Content-Digest says {announced}")


@contextlib.contextmanager
def client_session(
    domain: str,
    config: RegistryConfig | None,
    client: RegistryClient | None,
    sink: ProgressSink,
) -> Iterator[RegistryClient]:
    """``client``, or a new client for ``domain`` closed afterwards; whatever fails
    (opening the client included) is reported to ``sink`` as a "failed" event. How
    pull and push talk to a registry."""
    try:
        c = client or RegistryClient(domain, config=config)
        try:
            yield c
        finally:
            if client is None:
                c.close()
    except BaseException as e:
        sink.event(ProgressEvent("failed", message=str(e)))
        raise
