"""lamina.registry: talk to OCI distribution registries (pull, push, login).

Public API::

    pull(local, ref, *, policy, platform, progress, config, max_concurrent) -> ImageRecord
    push(local, source, dest=None, *, progress, config, chunk_size) -> str (digest)
    login(host, username, password) / logout(host)
    RegistryClient(host, config=...)  # the v2 API, for callers that need it directly
    RegistryConfig.load(path=None, insecure_registries=..., ca_files=...)
    ProgressSink / ProgressEvent / PlainProgress / RichProgress

Layering: this package uses ``lamina.image`` (content store, image store,
snapshots); ``lamina.image`` never imports it.
"""

from lamina.registry._auth import Challenge, parse_challenges
from lamina.registry._client import FetchedManifest, RegistryClient
from lamina.registry._config import RegistryConfig
from lamina.registry._credentials import (
    Credentials,
    auth_config_credentials,
    docker_config_path,
    lookup_credentials,
    remove_credentials,
    save_credentials,
)
from lamina.registry._login import login, logout
from lamina.registry._progress import (
    NullProgress,
    PlainProgress,
    ProgressEvent,
    ProgressSink,
    RichProgress,
)
from lamina.registry._pull import POLICIES, PullPolicy, pull
from lamina.registry._push import push
from lamina.registry._sources import BlobSources

__all__ = [
    "POLICIES",
    "BlobSources",
    "Challenge",
    "Credentials",
    "FetchedManifest",
    "NullProgress",
    "PlainProgress",
    "ProgressEvent",
    "ProgressSink",
    "PullPolicy",
    "RegistryClient",
    "RegistryConfig",
    "RichProgress",
    "auth_config_credentials",
    "docker_config_path",
    "login",
    "logout",
    "lookup_credentials",
    "parse_challenges",
    "pull",
    "push",
    "remove_credentials",
    "save_credentials",
]
