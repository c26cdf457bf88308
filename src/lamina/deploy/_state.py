"""Desired state of deployments, persisted before anything is acted on.

``<root>/deployments/<name>/desired.json`` (written whole, atomically): the spec as
the model dumps it, each service's resolved image ID and spec hash, manual scale
counts, rolling-restart generations, halted rollouts, when each service was last
deployed, scaled or restarted (``resumed``: ``unless_stopped`` keeps a replica the
user stopped after that stopped), and ``removing`` (a ``down`` in progress: a
controller that restarts finishes it). Beside it, markers per replica (container ID):
``init/ID`` once its init steps succeeded, ``removing/ID`` once the controller
decided to remove it (its stop is then not the user's). ``<root>/deployments/
controller.lock``: held by the one controller converging the root; whoever holds it
may remove temporary files an earlier (killed) holder left half written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lamina._fsutil import atomic_write
from lamina.errors import LaminaError, NotFound

DIR = "deployments"
DESIRED = "desired.json"
CONTROLLER_LOCK = "controller.lock"


@dataclass
class Halt:
    spec_hash: str  # the hash whose rollout halted; a new apply clears it
    message: str


@dataclass
class Desired:
    """What one deployment should be."""

    name: str
    spec: dict[str, Any]  # DeploymentSpec.model_dump(mode="json", by_alias=True)
    images: dict[str, str] = field(default_factory=dict)  # service -> image ID
    hashes: dict[str, str] = field(default_factory=dict)  # service -> spec hash
    scale: dict[str, int] = field(default_factory=dict)  # service -> replicas set by ``scale``
    restarts: dict[str, int] = field(default_factory=dict)  # service -> rolling-restart count
    halted: dict[str, Halt] = field(default_factory=dict)
    # service -> when a deploy, scale or restart of it last asked for all its replicas
    resumed: dict[str, float] = field(default_factory=dict)
    removing: bool = False
    volumes: bool = False  # ``down -v`` asked (with ``removing``)
    generation: int = 1
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Desired:
        data = dict(data)
        data["halted"] = {k: Halt(**v) for k, v in (data.get("halted") or {}).items()}
        return cls(**data)


def root_dir(root: Path) -> Path:
    return Path(root) / DIR


def deployment_dir(root: Path, name: str) -> Path:
    """The directory of deployment ``name``; a name no deployment can have (a path, as
    from a request) is NotFound, never a path outside."""
    from lamina.deploy._spec import Problems, check_deployment_name

    problems = Problems()
    check_deployment_name(name, "", problems)
    if problems.items:
        raise NotFound(f"no such deployment: {name}")
    return root_dir(root) / name


def save(root: Path, desired: Desired) -> None:
    """Write ``desired`` whole (atomic: a crash leaves the old file or the new one)."""
    d = deployment_dir(root, desired.name)
    d.mkdir(parents=True, exist_ok=True)
    desired.updated = time.time()
    data = json.dumps(desired.to_json(), indent=1, sort_keys=True).encode()
    atomic_write(d / DESIRED, data, mode=0o600)


def load(root: Path, name: str) -> Desired:
    path = deployment_dir(root, name) / DESIRED
    try:
        return Desired.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise NotFound(f"no such deployment: {name}") from None
    except (ValueError, TypeError) as e:
        raise LaminaError(f"the desired state of deployment {name} is unreadable: {e}") from None


def names(root: Path) -> list[str]:
    """Deployments with a desired state (a directory without one is a killed first
    apply's: nothing was acted on)."""
    base = root_dir(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / DESIRED).is_file())


def remove(root: Path, name: str) -> None:
    shutil.rmtree(deployment_dir(root, name), ignore_errors=True)


def clean_scratch(root: Path) -> None:
    """What killed writers left (half-written temporary files, the directory of a
    first apply killed before its file was in place). Only the lock's holder calls it."""
    base = root_dir(root)
    if not base.is_dir():
        return
    for d in base.iterdir():
        if not d.is_dir():
            continue
        for tmp in [*d.glob(".*.tmp"), *d.glob("init/.*.tmp")]:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if not (d / DESIRED).exists():
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def controller_lock(root: Path) -> Iterator[bool]:
    """Held by the one controller of ``root`` (True inside when taken)."""
    from lamina import _leases

    root_dir(root).mkdir(parents=True, exist_ok=True)
    with _leases.try_lock(root_dir(root) / CONTROLLER_LOCK) as taken:
        yield taken


def init_marker(root: Path, name: str, container_id: str) -> Path:
    """Present once the init steps of replica ``container_id`` have succeeded."""
    return deployment_dir(root, name) / "init" / container_id


def mark_init_done(root: Path, name: str, container_id: str) -> None:
    _mark(init_marker(root, name, container_id))


def removal_marker(root: Path, name: str, container_id: str) -> Path:
    """Present once the controller decided to remove replica ``container_id``: a stop
    it made, seen after a crash, is not taken for the user's."""
    return deployment_dir(root, name) / "removing" / container_id


def mark_removing(root: Path, name: str, container_id: str) -> None:
    _mark(removal_marker(root, name, container_id))


def _mark(marker: Path) -> None:
    """Make the empty file ``marker`` (``<deployment>/<kind>/<container id>``)."""
    if not marker.parent.parent.is_dir():
        return  # the deployment was removed meanwhile
    marker.parent.mkdir(exist_ok=True)
    atomic_write(marker, b"", mode=0o600)


def forget_markers(root: Path, name: str, live: set[str]) -> None:
    """Markers (init, removing) of replicas that are gone."""
    for kind in ("init", "removing"):
        d = deployment_dir(root, name) / kind
        if d.is_dir():
            for marker in d.iterdir():
                if marker.name not in live and not marker.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        marker.unlink()


def service_hash(service: dict[str, Any], image_id: str, restarts: int) -> str:
    """What a replica is made from: the service's spec (less what changes no
    container: its scale and dependencies), its image and its rolling-restart count."""
    made_of = {k: v for k, v in service.items() if k not in ("scale", "depends")}
    text = json.dumps([made_of, image_id, restarts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
