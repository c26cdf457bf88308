"""Test helpers: a real registry (Debian's docker-registry), its auth and faults, test images.

- ``RegistryServer``: ``docker-registry serve`` on 127.0.0.1 with a random free port and
  a private storage dir, in one of four modes: open, htpasswd (Basic), token (bearer,
  with a ``TokenServer``) and TLS (with a ``TestCA``). ``kill()``/``start()`` restart
  it on the same port and storage.
- ``TokenServer``: a threading HTTP server that checks Basic credentials and signs RS256
  JWTs granting the requested scopes (anonymous users get pull on repositories listed
  in ``public``); it records every token request.
- ``FaultProxy``: an HTTP proxy in front of a registry that records requests and can
  drop a response after N bytes, corrupt a byte, or fail with 500 — once or always.
- ``TestImage`` / ``build_image`` / ``build_index``: images made by hand (tar, gzip,
  config, manifest) from files such as /bin/busybox, stored into a LocalImages or written
  as an OCI layout for skopeo.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import http.client
import io
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- TLS


@dataclass
class TestCA:
    """A CA and a server certificate for 127.0.0.1 / localhost, as PEM files."""

    __test__ = False  # not a pytest class

    dir: Path
    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> TestCA:
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lamina test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        paths = cls(
            directory, directory / "ca.crt", directory / "server.crt", directory / "server.key"
        )
        paths.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        return paths


# --------------------------------------------------------------------------- token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenRequest:
    user: str | None  # None: anonymous
    service: str
    scopes: list[str]
    granted: list[str]


class TokenServer:
    """Bearer token issuer for distribution's ``auth.token`` (RS256 JWT with x5c)."""

    def __init__(
        self,
        directory: Path,
        users: dict[str, str],
        *,
        service: str = "lamina-test-registry",
        issuer: str = "lamina-test-issuer",
        public: Iterable[str] = (),
        token_field: str = "token",
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.public = set(public)
        self.token_field = token_field
        self.requests: list[TokenRequest] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lamina token signer")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_bundle = directory / "token-signer.crt"
        self.cert_bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qsl(urlsplit(self.path).query)
                scopes = [part for k, v in query if k == "scope" for part in v.split(" ") if part]
                service = next((v for k, v in query if k == "service"), "")
                server._answer(self, service, scopes)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                scopes = [p for p in form.get("scope", "").split(" ") if p]
                server._answer(self, form.get("service", ""), scopes, form)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def scopes_seen(self) -> list[str]:
        with self._lock:
            return [s for r in self.requests for s in r.scopes]

    def _user(self, handler: BaseHTTPRequestHandler, form: dict[str, str] | None) -> str | None:
        if form and form.get("grant_type") == "refresh_token":
            token = form.get("refresh_token", "")
            for user, pw in self.users.items():
                if token == f"refresh-{user}-{pw}":
                    return user
            return ""
        header = handler.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.users.get(user) == pw else ""

    def _answer(
        self,
        handler: BaseHTTPRequestHandler,
        service: str,
        scopes: list[str],
        form: dict[str, str] | None = None,
    ) -> None:
        user = self._user(handler, form)
        if user == "":
            body = b'{"details":"invalid credentials"}'
            handler.send_response(401)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            with self._lock:
                self.requests.append(TokenRequest("<refused>", service, scopes, []))
            return
        access: list[dict[str, Any]] = []
        granted: list[str] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [a for a in actions.split(",") if a]
            allowed = wanted if user else (["pull"] if name in self.public else [])
            allowed = [a for a in wanted if a in allowed]
            if allowed:
                access.append({"type": kind, "name": name, "actions": allowed})
                granted.append(f"{kind}:{name}:{','.join(allowed)}")
        with self._lock:
            self.requests.append(TokenRequest(user, service, scopes, granted))
        token = self.sign(user or "", access)
        payload = {self.token_field: token, "expires_in": 300, "issued_at": _now_rfc3339()}
        body = json.dumps(payload).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 30,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(sig)


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- registry


@dataclass
class RegistryServer:
    """One docker-registry process. ``host`` is what references use: 127.0.0.1:PORT."""

    dir: Path
    port: int
    mode: str = "open"  # open | htpasswd | token | tls
    tls: TestCA | None = None
    token_server: TokenServer | None = None
    users: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def storage(self) -> Path:
        return self.dir / "storage"

    @property
    def log_path(self) -> Path:
        return self.dir / "registry.log"

    def _write_config(self) -> Path:
        cfg: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "lamina-tests"},
        }
        if self.tls is not None:
            cfg["http"]["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        if self.mode == "htpasswd":
            lines = []
            for user, pw in self.users.items():
                out = subprocess.run(
                    ["htpasswd", "-Bbn", user, pw], check=True, capture_output=True, text=True
                )
                lines.append(out.stdout.strip())
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text("\n".join(lines) + "\n")
            cfg["auth"] = {"htpasswd": {"realm": "lamina-test", "path": str(htpasswd)}}
        elif self.mode == "token":
            assert self.token_server is not None
            ts = self.token_server
            cfg["auth"] = {
                "token": {
                    "realm": ts.realm,
                    "service": ts.service,
                    "issuer": ts.issuer,
                    "rootcertbundle": str(ts.cert_bundle),
                }
            }
        path = self.dir / "config.yml"  # JSON is YAML
        path.write_text(json.dumps(cfg, indent=2))
        return path

    def start(self, timeout: float = 15.0) -> RegistryServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}")
            try:
                status = self._get_status("/v2/")
                if status in (200, 401):
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("docker-registry did not come up")

    def _get_status(self, path: str) -> int:
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls.ca_cert))
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=2, context=ctx
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()

    def kill(self) -> None:
        """SIGKILL: the registry vanishes mid-request."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        # SIGKILL: its storage is throwaway, and a graceful stop costs ~0.5 s per test.
        self.kill()
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def requests_logged(self, method: str, path_part: str) -> int:
        """Access-log lines for ``method`` with ``path_part`` in the URI."""
        needle = f'"{method} '
        return sum(
            1
            for line in self.log_text().splitlines()
            if needle in line and path_part in line and 'HTTP/1.1"' in line
        )


def start_registry(
    directory: Path,
    mode: str = "open",
    *,
    users: dict[str, str] | None = None,
    tls: TestCA | None = None,
    token_server: TokenServer | None = None,
) -> RegistryServer:
    if not Path(REGISTRY_BIN).exists():
        raise RuntimeError(f"{REGISTRY_BIN} is missing (apt-get install docker-registry)")
    server = RegistryServer(
        dir=directory,
        port=free_port(),
        mode=mode,
        tls=tls,
        token_server=token_server,
        users=dict(users or {}),
    )
    return server.start()


# --------------------------------------------------------------------------- fault proxy


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


# Edits a response: (headers, body) -> (headers, body).
Rewrite = Callable[[list[tuple[str, str]], bytes], tuple[list[tuple[str, str]], bytes]]


@dataclass
class Fault:
    """What to do to responses whose request matches ``method`` and ``path_part``."""

    # "drop" (close after `after` body bytes) | "corrupt" | "status" | "redirect" |
    # "ignore-range" (forward without the Range header) | "rewrite" (`rewrite` edits the
    # response's headers and body, e.g. a lying Docker-Content-Digest)
    kind: str
    method: str = "GET"
    path_part: str = "/blobs/"
    after: int = 0
    times: int = 1  # -1: always
    status: int = 500
    only_full: bool = False  # only on requests without a Range header
    on_fire: Callable[[], None] | None = None  # e.g. kill the registry at that moment
    rewrite: Rewrite | None = None
    hits: int = 0


_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
}


class FaultProxy:
    """HTTP proxy to a plain-HTTP registry on 127.0.0.1, with request log and faults."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def seen(self, method: str, path_part: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and path_part in r.path]

    def _take_fault(self, rec: Recorded) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.method != rec.method or f.path_part not in rec.path:
                    continue
                if f.only_full and "range" in {k.lower() for k in rec.headers}:
                    continue
                if f.times == -1 or f.hits < f.times:
                    f.hits += 1
                    return f
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        headers = {k: v for k, v in h.headers.items()}
        rec = Recorded(h.command, h.path, headers)
        with self._lock:
            self.requests.append(rec)
        body = self._read_body(h)
        fault = self._take_fault(rec)
        if fault is not None and fault.kind == "redirect":
            # Send the client straight to the registry: another origin (port), as a
            # registry redirecting blob downloads to a storage host does.
            rec.status = 307
            h.send_response(307)
            h.send_header("Location", f"http://127.0.0.1:{self.upstream_port}{h.path}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if fault is not None and fault.kind == "status":
            rec.status = fault.status
            payload = b'{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}'
            h.send_response(fault.status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            fwd = {k: v for k, v in headers.items() if k.lower() not in _HOP}
            if fault is not None and fault.kind == "ignore-range":
                # A server without Range support answers 200 with the whole blob.
                fwd = {k: v for k, v in fwd.items() if k.lower() != "range"}
            if body is not None:
                fwd["Content-Length"] = str(len(body))
            try:
                conn.request(h.command, h.path, body=body, headers=fwd)
                resp = conn.getresponse()
            except OSError:
                # Upstream gone (killed): hang up without an answer, as a dead server would.
                h.close_connection = True
                return
            rec.status = resp.status
            h.send_response_only(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            data: bytes | None = None
            rewrite = fault.rewrite if fault is not None else None
            if (length is None or rewrite is not None) and h.command != "HEAD":
                data = resp.read()
                length = str(len(data))
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            if rewrite is not None and data is not None:
                out, data = rewrite(out, data)
                length = str(len(data))
            for k, v in out:
                if k.lower() != "content-length":
                    h.send_header(k, v)
            if length is not None:
                h.send_header("Content-Length", length)
            h.end_headers()
            if h.command == "HEAD":
                return
            try:
                self._relay(h, resp, data, fault)
            except OSError:  # the client hung up (e.g. it gave up on a corrupt blob)
                h.close_connection = True
        finally:
            conn.close()

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes | None:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += h.rfile.read(size)
                h.rfile.readline()
        length = h.headers.get("Content-Length")
        if length is None:
            return None
        return h.rfile.read(int(length))

    def _relay(
        self,
        h: BaseHTTPRequestHandler,
        resp: http.client.HTTPResponse,
        data: bytes | None,
        fault: Fault | None,
    ) -> None:
        sent = 0
        source: Callable[[], bytes]
        if data is not None:
            buf = io.BytesIO(data)
            source = lambda: buf.read(65536)  # noqa: E731
        else:
            source = lambda: resp.read(65536)  # noqa: E731
        corrupted = False
        expected = int(resp.getheader("Content-Length") or -1) if data is None else len(data)
        while True:
            try:
                chunk = source()
            except (OSError, http.client.HTTPException):
                chunk = b""
            if not chunk:
                if 0 <= sent < expected:
                    # Upstream died mid-body (killed): hang up, as it would have, rather
                    # than leave the client waiting on a keep-alive connection.
                    with contextlib.suppress(OSError):
                        h.connection.shutdown(socket.SHUT_RDWR)
                    h.close_connection = True
                return
            if fault is not None and fault.kind == "drop" and sent + len(chunk) > fault.after:
                h.wfile.write(chunk[: max(0, fault.after - sent)])
                h.wfile.flush()
                # An abrupt end: the client sees a short body on a closed socket.
                with contextlib.suppress(OSError):
                    h.connection.shutdown(socket.SHUT_RDWR)
                h.close_connection = True
                if fault.on_fire is not None:
                    fault.on_fire()
                return
            if fault is not None and fault.kind == "corrupt" and not corrupted:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                corrupted = True
            h.wfile.write(chunk)
            sent += len(chunk)


# --------------------------------------------------------------------------- test images


def _tar_info(
    name: str, data: bytes | None, mode: int, kind: bytes = tarfile.REGTYPE
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = 1_700_000_000
    info.uid = info.gid = 0
    info.type = kind
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    return info


def layer_tar(files: dict[str, bytes | str | None], *, mode: int = 0o755) -> bytes:
    """An uncompressed layer tar. Values: bytes = regular file, str = symlink target,
    None = directory. Parent directories are added; names ``.wh.x`` are whiteouts
    (give them b"")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in sorted(files):
            parts = name.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    tar.addfile(_tar_info(d + "/", None, 0o755, tarfile.DIRTYPE))
            value = files[name]
            clean = name.strip("/")
            if value is None:
                if clean not in dirs:
                    dirs.add(clean)
                    tar.addfile(_tar_info(clean + "/", None, 0o755, tarfile.DIRTYPE))
            elif isinstance(value, str):
                info = _tar_info(clean, None, 0o777, tarfile.SYMTYPE)
                info.linkname = value
                tar.addfile(info)
            else:
                tar.addfile(_tar_info(clean, value, mode if value else 0o644), io.BytesIO(value))
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class TestImage:
    """An image held in memory: every blob by digest, plus the target (manifest or index)."""

    __test__ = False  # not a pytest class

    target: str  # digest of the manifest or index
    media_type: str
    blobs: dict[str, bytes]
    manifests: list[str]  # platform manifest digests
    platforms: list[str]

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.blobs[self.manifests[0]])  # type: ignore[no-any-return]

    def layers(self, manifest_digest: str | None = None) -> list[str]:
        doc = json.loads(self.blobs[manifest_digest or self.manifests[0]])
        return [layer["digest"] for layer in doc["layers"]]

    def config_digest(self, manifest_digest: str | None = None) -> str:
        doc = json.loads(self.blobs[manifest_digest or self.manifests[0]])
        return str(doc["config"]["digest"])

    def store(self, local: Any, name: str | None = None, platform: Any = None) -> Any:
        """Write every blob into ``local.content`` and record the image under ``name``."""
        for digest, data in self.blobs.items():
            local.content.add(data, digest)
        record = local.record(self.target, platform)
        names = [name] if name else []
        return local.images.put(record, names)

    def write_oci_layout(self, directory: Path, tag: str = "latest") -> Path:
        blobs = directory / "blobs" / "sha256"
        blobs.mkdir(parents=True, exist_ok=True)
        for digest, data in self.blobs.items():
            (blobs / digest.removeprefix("sha256:")).write_bytes(data)
        (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": self.media_type,
                    "digest": self.target,
                    "size": len(self.blobs[self.target]),
                    "annotations": {"org.opencontainers.image.ref.name": tag},
                }
            ],
        }
        (directory / "index.json").write_text(json.dumps(index))
        return directory


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def build_manifest(
    layers: list[bytes],
    *,
    platform: str = "linux/amd64",
    created: str = "2024-01-01T00:00:00Z",
    cmd: list[str] | None = None,
    compress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> tuple[str, dict[str, bytes]]:
    """One platform manifest from uncompressed layer tars: (manifest digest, blobs)."""
    blobs: dict[str, bytes] = {}
    descs, diff_ids = [], []
    for tar in layers:
        diff_ids.append(sha256(tar))
        blob = gzip.compress(tar, compresslevel=1, mtime=0) if compress else tar
        blobs[sha256(blob)] = blob
        descs.append(
            {
                "mediaType": OCI_LAYER_GZIP
                if compress
                else "application/vnd.oci.image.layer.v1.tar",
                "digest": sha256(blob),
                "size": len(blob),
            }
        )
    os_name, arch, *variant = platform.split("/")
    config: dict[str, Any] = {
        "created": created,
        "architecture": arch,
        "os": os_name,
        "config": {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/bin:/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": "lamina tests"} for _ in layers],
    }
    if variant:
        config["variant"] = variant[0]
    config.update(extra_config or {})
    config_blob = _dump(config)
    blobs[sha256(config_blob)] = config_blob
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": sha256(config_blob),
            "size": len(config_blob),
        },
        "layers": descs,
    }
    manifest_blob = _dump(manifest)
    blobs[sha256(manifest_blob)] = manifest_blob
    return sha256(manifest_blob), blobs


def build_image(layers: list[bytes], **kwargs: Any) -> TestImage:
    digest, blobs = build_manifest(layers, **kwargs)
    return TestImage(digest, OCI_MANIFEST, blobs, [digest], [kwargs.get("platform", "linux/amd64")])


def build_index(per_platform: dict[str, list[bytes]], **kwargs: Any) -> TestImage:
    blobs: dict[str, bytes] = {}
    entries, digests = [], []
    for plat, layers in per_platform.items():
        digest, mblobs = build_manifest(layers, platform=plat, **kwargs)
        blobs.update(mblobs)
        os_name, arch, *variant = plat.split("/")
        p: dict[str, Any] = {"architecture": arch, "os": os_name}
        if variant:
            p["variant"] = variant[0]
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(mblobs[digest]),
                "platform": p,
            }
        )
        digests.append(digest)
    index_blob = _dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    blobs[sha256(index_blob)] = index_blob
    return TestImage(sha256(index_blob), OCI_INDEX, blobs, digests, list(per_platform))


def busybox_layer() -> bytes:
    """A root filesystem with /bin/busybox and a few applet links."""
    data = Path("/bin/busybox").read_bytes()
    files: dict[str, bytes | str | None] = {"bin/busybox": data, "etc": None, "tmp": None}
    for applet in ("sh", "ls", "cat", "echo", "true"):
        files[f"bin/{applet}"] = "busybox"
    files["etc/hostname"] = b"lamina\n"
    return layer_tar(files)


def skopeo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("skopeo")
    if exe is None:
        raise RuntimeError("skopeo is not installed")
    return subprocess.run(
        [exe, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "HOME": os.environ.get("HOME", "/root")},
    )
