"""The certificate store of the ingress: ``<root>/ingress/certs/<host>.pem`` (chain then
key, as HAProxy reads them), served by SNI through a crt-list naming each file with
its host. A certificate is checked before it is stored: it parses, its key is its
own and it covers the host it is stored for."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lamina._fsutil import atomic_write
from lamina.ingress._model import InvalidIngress, check_host


@dataclass(frozen=True)
class CertInfo:
    host: str
    not_after: str  # ISO 8601, UTC
    issuer: str
    acme: bool = False

    @property
    def expires(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.not_after)


def _file_stem(host: str) -> str:
    # "*" is no file name character we want; "_" is no host name character.
    return host.replace("*", "_")


class CertStore:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def _pem(self, host: str) -> Path:
        return self.dir / f"{_file_stem(host)}.pem"

    def _meta(self, host: str) -> Path:
        return self.dir / f"{_file_stem(host)}.json"

    def add(self, host: str, cert_pem: bytes, key_pem: bytes, *, acme: bool = False) -> CertInfo:
        """Store (or replace) the certificate served for ``host``."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        host = check_host(host)
        try:
            chain = x509.load_pem_x509_certificates(cert_pem)
        except ValueError as e:
            raise InvalidIngress(f"certificate for {host}: not a PEM certificate ({e})") from e
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as e:
            raise InvalidIngress(f"key for {host}: not an unencrypted PEM private key") from e
        leaf = chain[0]
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        enc = serialization.Encoding.DER
        if key.public_key().public_bytes(enc, pub) != leaf.public_key().public_bytes(enc, pub):
            raise InvalidIngress(f"certificate for {host}: the key does not belong to it")
        if host not in _names(leaf):
            raise InvalidIngress(f"certificate for {host}: it does not name {host}")
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_text = key_pem if key_pem.endswith(b"\n") else key_pem + b"\n"
        cert_text = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        atomic_write(self._pem(host), cert_text + key_text, mode=0o600)
        info = CertInfo(
            host=host,
            not_after=leaf.not_valid_after_utc.isoformat(),
            issuer=leaf.issuer.rfc4514_string(),
            acme=acme,
        )
        atomic_write(self._meta(host), json.dumps(info.__dict__).encode(), mode=0o600)
        return info

    def list(self) -> list[CertInfo]:
        out = []
        for meta in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, TypeError):
                out.append(CertInfo(**json.loads(meta.read_text())))
        return sorted(out, key=lambda c: c.host)

    def get(self, host: str) -> CertInfo | None:
        return next((c for c in self.list() if c.host == host.lower()), None)

    def remove(self, host: str) -> None:
        from lamina.errors import NotFound

        host = check_host(host)
        if not self._meta(host).exists():
            raise NotFound(f"no certificate for {host}")
        for path in (self._pem(host), self._meta(host)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def write_crt_list(self, path: Path) -> None:
        lines = [f"{self._pem(c.host)} {c.host}\n" for c in self.list()]
        atomic_write(path, "".join(lines).encode(), mode=0o600, sync=False)

    def fingerprint(self) -> str:
        """Changes whenever a served certificate does."""
        digest = hashlib.sha256()
        for c in self.list():
            digest.update(c.host.encode())
            with contextlib.suppress(OSError):
                digest.update(self._pem(c.host).read_bytes())
        return digest.hexdigest()

    def ensure_default(self, path: Path) -> None:
        """The certificate for clients naming no host we have (HAProxy needs one)."""
        if path.exists():
            return
        atomic_write(path, self_signed("lamina-ingress.invalid"), mode=0o600)


def _names(cert: object) -> set[str]:
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return {n.lower() for n in san.value.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        return set()


def self_signed(host: str, days: int = 3650) -> bytes:
    """A self-signed certificate and its key for ``host``, as one PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
