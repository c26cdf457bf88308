"""Per-registry connection policy: which scheme, which CA, which API host.

Contract: a ``RegistryConfig`` is an immutable value built once per command from
the JSON file (``$LAMINA_REGISTRIES_CONFIG``, else ``/etc/lamina/registries.json``)
merged with command-line flags, then asked per registry host:

- ``api_host(host)``: where the v2 API lives (``docker.io`` -> ``registry-1.docker.io``);
- ``plain_http_allowed(host)``: loopback hosts and hosts listed as insecure may fall
  back to plain HTTP when they do not speak TLS (Docker's behaviour); every other
  host is HTTPS only;
- ``mirror_hosts(domain)``: the registry mirrors a pull of a ``docker.io`` name tries
  first, in order (dockerd's ``registry-mirrors``), as registry hosts; none for
  any other domain. A mirror given as ``http://`` may be spoken to in plain HTTP;
- ``credentials_for(host)``: one call's own credentials (``with_credentials``: the
  Engine API's ``X-Registry-Auth``), which the registry client uses instead of the
  credential files for that host;
- ``tls_verify(host)``: insecure hosts skip certificate verification; the others
  verify against the system roots plus a registry CA found, first match wins, in
  the explicit ``ca_files`` map, ``<config dir>/certs.d/<host>/ca.crt``,
  ``/etc/docker/certs.d/<host>/ca.crt`` and ``/etc/containers/certs.d/<host>/ca.crt``.

File format (every key optional)::

    {"insecure_registries": ["myreg:5000"], "ca_files": {"myreg:5443": "/path/ca.crt"},
     "registry_mirrors": ["https://mirror.example:5000"]}
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lamina.errors import RegistryError
from lamina.registry._credentials import Credentials, registry_host_key

DEFAULT_CONFIG_PATH = Path("/etc/lamina/registries.json")
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_SYSTEM_CERTS_DIRS = (Path("/etc/docker/certs.d"), Path("/etc/containers/certs.d"))


def config_path_from_env() -> Path:
    env = os.environ.get("LAMINA_REGISTRIES_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without a port)."""
    name = _strip_port(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.index("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


@dataclass(frozen=True)
class RegistryConfig:
    insecure_registries: frozenset[str] = frozenset()
    ca_files: Mapping[str, str] = field(default_factory=dict)
    # lamina's own certs.d lives next to the config file.
    config_dir: Path | None = None
    certs_dirs: tuple[Path, ...] = _SYSTEM_CERTS_DIRS
    registry_mirrors: tuple[str, ...] = ()  # URLs, in the order they are tried
    # One call's own credentials by registry host (the Engine API's X-Registry-Auth):
    # used instead of the credential files for that host, never saved.
    credentials: Mapping[str, Credentials] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        insecure_registries: Iterable[str] = (),
        ca_files: Mapping[str, str] | None = None,
        registry_mirrors: Iterable[str] = (),
    ) -> RegistryConfig:
        """Read the config file (absent is fine) and merge the command-line flags,
        which win over the file (their mirrors are tried before the file's)."""
        file = Path(path) if path is not None else config_path_from_env()
        data: dict[str, object] = {}
        if file.is_file():
            try:
                loaded = json.loads(file.read_text())
            except (OSError, ValueError) as e:
                raise RegistryError(f"cannot read registries config {file}: {e}") from None
            if not isinstance(loaded, dict):
                raise RegistryError(f"registries config {file}: expected a JSON object")
            data = loaded
        insecure = data.get("insecure_registries", [])
        cas = data.get("ca_files", {})
        if not isinstance(insecure, list) or not all(isinstance(h, str) for h in insecure):
            raise RegistryError(f"registries config {file}: insecure_registries must be a list")
        if not isinstance(cas, dict) or not all(isinstance(v, str) for v in cas.values()):
            raise RegistryError(f"registries config {file}: ca_files must map host to path")
        mirrors = data.get("registry_mirrors", [])
        if not isinstance(mirrors, list) or not all(isinstance(u, str) for u in mirrors):
            raise RegistryError(f"registries config {file}: registry_mirrors must be a list")
        merged_cas = {str(k): str(v) for k, v in cas.items()}
        merged_cas.update(ca_files or {})
        urls = [mirror_url(u) for u in [*registry_mirrors, *mirrors]]
        return cls(
            insecure_registries=frozenset(insecure) | frozenset(insecure_registries),
            ca_files=merged_cas,
            config_dir=file.parent,
            registry_mirrors=tuple(dict.fromkeys(urls)),
        )

    def with_options(
        self,
        *,
        insecure_registries: Iterable[str] = (),
        ca_files: Mapping[str, str] | None = None,
    ) -> RegistryConfig:
        cas = dict(self.ca_files)
        cas.update(ca_files or {})
        return RegistryConfig(
            insecure_registries=self.insecure_registries | frozenset(insecure_registries),
            ca_files=cas,
            config_dir=self.config_dir,
            certs_dirs=self.certs_dirs,
            registry_mirrors=self.registry_mirrors,
            credentials=self.credentials,
        )

    def with_credentials(self, by_host: Mapping[str, Credentials]) -> RegistryConfig:
        """This config with one call's credentials for the given registry hosts
        (Docker Hub's names are one host)."""
        merged = dict(self.credentials)
        merged.update({registry_host_key(h): c for h, c in by_host.items()})
        return dataclasses.replace(self, credentials=merged)

    def credentials_for(self, host: str) -> Credentials | None:
        """The call's own credentials for ``host``, None when it brought none."""
        return self.credentials.get(registry_host_key(host))

    # -- questions asked per host
    def api_host(self, host: str) -> str:
        return "registry-1.docker.io" if host in DOCKER_HUB_HOSTS else host

    @property
    def mirrors(self) -> tuple[str, ...]:
        """The mirrors' URLs (what ``docker info`` shows as RegistryConfig.Mirrors)."""
        return self.registry_mirrors

    def mirror_hosts(self, domain: str) -> tuple[str, ...]:
        """The mirror hosts a pull from ``domain`` tries first (Docker Hub's only)."""
        if domain not in DOCKER_HUB_HOSTS:
            return ()
        return tuple(urlsplit(u).netloc for u in self.registry_mirrors)

    def is_insecure(self, host: str) -> bool:
        """Listed as insecure (TLS unverified, plain HTTP allowed), or a mirror given
        as an ``http://`` URL."""
        if host in self.insecure_registries or _strip_port(host) in self.insecure_registries:
            return True
        return any(u == f"http://{host}" for u in self.registry_mirrors)

    def plain_http_allowed(self, host: str) -> bool:
        return is_loopback(host) or self.is_insecure(host)

    def ca_file(self, host: str) -> Path | None:
        explicit = self.ca_files.get(host)
        if explicit:
            return Path(explicit)
        dirs = [self.config_dir / "certs.d"] if self.config_dir else []
        for d in [*dirs, *self.certs_dirs]:
            candidate = d / host / "ca.crt"
            if candidate.is_file():
                return candidate
        return None

    def tls_verify(self, host: str) -> ssl.SSLContext | bool:
        """What httpx's ``verify=`` gets for this host."""
        if self.is_insecure(host):
            return False
        ca = self.ca_file(host)
        try:
            return _ssl_context(str(ca) if ca else None)
        except (OSError, ssl.SSLError) as e:
            raise RegistryError(f"cannot load CA file {ca} for registry {host}: {e}") from None


def mirror_url(text: str) -> str:
    """A registry mirror as dockerd takes it: ``http(s)://host[:port]`` (a path is
    refused: the mirror serves the v2 API at its root); normalised without a slash."""
    url = urlsplit(text.strip())
    if url.scheme not in ("http", "https") or not url.netloc:
        raise RegistryError(f"invalid registry mirror {text!r}: expected http(s)://HOST[:PORT]")
    if url.path not in ("", "/") or url.query or url.fragment or "@" in url.netloc:
        raise RegistryError(f"invalid registry mirror {text!r}: only a scheme and a host")
    return f"{url.scheme}://{url.netloc}"


@functools.lru_cache(maxsize=32)
def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    # Loading the system roots costs ~10 ms: share one context per CA file.
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx
