"""``login`` / ``logout``: check credentials against a registry, then remember them.

``login`` proves the credentials before saving anything: with a Basic challenge it
GETs ``/v2/`` with them; with a Bearer challenge it first asks the token server for
a token with no scope (as docker does), which authenticates the user without naming
a repository, then GETs ``/v2/`` with it. Only then are they written to Docker's
config.json (atomically, mode 0600, other entries kept). A registry without
authentication accepts any login, as with docker.
"""

from __future__ import annotations

from pathlib import Path

from lamina.errors import AuthenticationRequired
from lamina.registry._client import RegistryClient
from lamina.registry._config import RegistryConfig
from lamina.registry._credentials import Credentials, remove_credentials, save_credentials


def login(
    host: str,
    username: str,
    password: str,
    *,
    config: RegistryConfig | None = None,
    path: Path | None = None,
) -> Path:
    """Verify and store credentials for ``host``; returns the file written."""
    verify_login(host, username, password, config=config)
    return save_credentials(host, username, password, path)


def verify_login(
    host: str, username: str, password: str, *, config: RegistryConfig | None = None
) -> None:
    """Check credentials against ``host`` (AuthenticationRequired when it refuses
    them), storing nothing: the Docker API's ``/auth``."""
    if not username or not password:
        raise AuthenticationRequired(f"login to {host}: username and password are required")
    creds = Credentials(username, password)
    with RegistryClient(host, config=config, credentials=creds) as client:
        client.ping()
        if client.auth.scheme is not None:
            try:
                resp = client.request("GET", "/v2/", scopes=())
            except AuthenticationRequired:
                raise AuthenticationRequired(
                    f"login to {host} failed: wrong username or password for {username}"
                ) from None
            if resp.status_code != 200:
                raise AuthenticationRequired(f"login to {host} failed: HTTP {resp.status_code}")


def logout(host: str, *, path: Path | None = None) -> bool:
    """Forget stored credentials for ``host``; False when there were none."""
    return remove_credentials(host, path)
