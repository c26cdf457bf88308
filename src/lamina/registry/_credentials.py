"""Registry credentials in Docker's ``config.json`` format (and podman's auth.json).

Lookup order for a host (first file with an entry wins):

1. Docker's config: ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` —
   this is also where ``save_credentials`` (``lamina login``) writes;
2. ``$REGISTRY_AUTH_FILE`` (podman/skopeo's override);
3. ``${XDG_RUNTIME_DIR}/containers/auth.json`` (podman's default).

Within a file, ``auths`` keys may be ``host``, ``https://host``, ``https://host/v1/``
or (podman) ``host/namespace/repo`` — the longest repository prefix matches first.
Docker Hub's key is ``https://index.docker.io/v1/``. An entry holds either a base64
``auth`` of ``user:password`` or ``username``/``password``, and possibly an
``identitytoken`` (an OAuth2 refresh token). ``credHelpers``/``credsStore`` are
honoured for reading when the ``docker-credential-<name>`` helper is installed.

Writes are atomic (tmp + fsync + rename), mode 0600, and keep every other key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina._fsutil import atomic_write
from lamina.errors import RegistryError

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB_KEY)


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:  # never print secrets in tracebacks
        return f"Credentials(username={self.username!r})"

    @property
    def has_basic(self) -> bool:
        return bool(self.username and self.password)


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def auth_files() -> list[Path]:
    files = [docker_config_path()]
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        files.append(Path(env))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        files.append(Path(runtime) / "containers" / "auth.json")
    return files


def _normalize_key(key: str) -> str:
    """``https://host/v1/`` -> ``host``; ``host/ns/repo`` stays as is."""
    k = key.strip()
    for prefix in ("https://", "http://"):
        if k.startswith(prefix):
            k = k[len(prefix) :]
            # A URL key names only a host: drop any path ("/v1/", "/v2/").
            k = k.partition("/")[0]
            break
    k = k.rstrip("/")
    if k in _HUB_ALIASES:
        return "docker.io"
    return k


def _host_key(host: str) -> str:
    return "docker.io" if host in _HUB_ALIASES else host


def _candidate_keys(host: str, repository: str | None) -> list[str]:
    """Most specific first: host/a/b, host/a, host."""
    base = _host_key(host)
    keys = []
    if repository:
        parts = repository.split("/")
        for n in range(len(parts), 0, -1):
            keys.append(base + "/" + "/".join(parts[:n]))
    keys.append(base)
    return keys


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RegistryError(f"cannot read credentials file {path}: {e.strerror}") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RegistryError(f"credentials file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"credentials file {path}: expected a JSON object")
    return data


def _entry_credentials(entry: Any, path: Path, key: str) -> Credentials | None:
    return auth_config_credentials(entry, f"credentials file {path}: the auth of {key}")


def auth_config_credentials(entry: Any, where: str) -> Credentials | None:
    """The credentials of one of Docker's AuthConfig objects (a config.json entry, the
    Engine API's ``X-Registry-Auth``): ``username`` and ``password``, ``auth`` (base64
    of user:password) or ``identitytoken``; None when it holds none. ``where`` names
    it in errors."""
    if not isinstance(entry, dict):
        return None
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    auth = entry.get("auth")
    if auth:
        try:
            decoded = base64.b64decode(str(auth), validate=False).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryError(f"{where}: bad base64") from None
        user, sep, pw = decoded.partition(":")
        if not sep:
            raise RegistryError(f"{where} lacks ':'")
        username, password = user, pw
    token = str(entry.get("identitytoken") or "")
    if not (username or password or token):
        return None
    return Credentials(username, password, token)


def registry_host_key(address: str) -> str:
    """The registry host a credential key or server address names: ``https://host/v1/``
    -> ``host``; Docker Hub's names -> ``docker.io``."""
    return _normalize_key(address)


def _from_helper(helper: str, host: str) -> Credentials | None:
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        return None
    server = DOCKER_HUB_KEY if _host_key(host) == "docker.io" else host
    try:
        out = subprocess.run(
            [exe, "get"], input=server.encode(), capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        data = json.loads(out.stdout)
    except ValueError:
        return None
    user, secret = str(data.get("Username", "")), str(data.get("Secret", ""))
    if user == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(user, secret) if secret else None


def _lookup_in(data: dict[str, Any], path: Path, host: str, repo: str | None) -> Credentials | None:
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if _normalize_key(str(key)) == _host_key(host):
                creds = _from_helper(str(helper), host)
                if creds:
                    return creds
    auths = data.get("auths")
    if isinstance(auths, dict):
        by_key = {_normalize_key(str(k)): (str(k), v) for k, v in auths.items()}
        for candidate in _candidate_keys(host, repo):
            if candidate in by_key:
                raw_key, entry = by_key[candidate]
                creds = _entry_credentials(entry, path, raw_key)
                if creds:
                    return creds
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, host)
    return None


def lookup_credentials(host: str, repository: str | None = None) -> Credentials | None:
    """Credentials for ``host`` (a registry name as in references, e.g. ``docker.io``)."""
    for path in auth_files():
        data = _read_json(path)
        if data is None:
            continue
        creds = _lookup_in(data, path, host, repository)
        if creds:
            return creds
    return None


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, (json.dumps(data, indent="\t") + "\n").encode(), mode=0o600)


def _config_key(host: str) -> str:
    return DOCKER_HUB_KEY if _host_key(host) == "docker.io" else host


def save_credentials(host: str, username: str, password: str, path: Path | None = None) -> Path:
    """Store ``username:password`` for ``host`` in Docker's config.json; returns the file."""
    target = path or docker_config_path()
    data = _read_json(target) or {}
    auths = data.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    # Drop other spellings of the same host so lookups cannot find a stale entry.
    for key in [k for k in auths if _normalize_key(k) == _host_key(host)]:
        del auths[key]
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths[_config_key(host)] = {"auth": token}
    data["auths"] = auths
    _write_atomic(target, data)
    return target


def remove_credentials(host: str, path: Path | None = None) -> bool:
    """Forget ``host`` in Docker's config.json; False when nothing was stored."""
    target = path or docker_config_path()
    data = _read_json(target)
    if not data or not isinstance(data.get("auths"), dict):
        return False
    auths: dict[str, Any] = data["auths"]
    keys = [k for k in auths if _normalize_key(k) == _host_key(host)]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _write_atomic(target, data)
    return True
