"""``BuildOptions``: what a build takes, apart from the builder, so that a client
that sends a build to a daemon (``lamina --host ... build``) need not import it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class BuildOptions:
    """What ``lamina build`` takes. ``secrets`` maps an id to ("file", path) or
    ("env", value)."""

    context: Path
    dockerfile: Path | None = None  # default: <context>/Dockerfile
    dockerfile_text: str | None = None  # the Dockerfile itself (``-f -``)
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    platform: str | None = None
    network: str = "default"  # default (the engine's default bridge) | host | none
    secrets: dict[str, tuple[str, str]] = field(default_factory=dict)
    compression: str = "gzip"
    source_date_epoch: int | None = None
    registry_config: Any = None  # a RegistryConfig, or a function returning one
    max_parallel: int = 4  # stages working at once
    # A function returning what RUN steps make their containers with (the engine's
    # container operations: create, attach, wait, inspect, remove, kill, close), called
    # once per thread that runs a step; ``Engine.build`` gives its own.
    containers: Any = None
    # Set by the caller to stop the build (a daemon's client went away): the steps
    # running are killed, no new one starts, the build fails as a cancelled one.
    cancel: threading.Event | None = None
