"""A container's process and mounts from its image config and run options, with
Docker's precedence, once for every isolation: entrypoint and command, environment,
working directory, user, hostname, the stop signal, and an anonymous volume for each
``VOLUME`` of the image that nothing else covers."""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any

from lamina.errors import LaminaError
from lamina.runtime._types import ContainerConfig, Mount, ProcessSpec
from lamina.runtime.common import DEFAULT_PATH, merge_env, process_args


def merge_process(config: ContainerConfig, image: dict[str, Any], cid: str) -> ProcessSpec:
    """The workload's process for ``config`` from an image whose config (the image
    config's ``config`` object) is ``image``. ``HOME`` is the backend's to add, from
    the user it resolves in the container's files."""
    args = process_args(
        config.entrypoint, config.command, image.get("Entrypoint"), image.get("Cmd")
    )
    hostname = config.hostname or cid[:12]
    base = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    if config.tty:
        base.append("TERM=xterm")  # as Docker does for -t; the image or -e may set another
    env = merge_env(merge_env(base, image.get("Env") or []), config.env)
    if config.working_dir and not config.working_dir.startswith("/"):
        raise LaminaError(
            f"the working directory {config.working_dir!r} is invalid: "
            "it needs to be an absolute path"
        )
    cwd = config.working_dir or image.get("WorkingDir") or "/"
    cwd = posixpath.normpath(posixpath.join("/", cwd))
    return ProcessSpec(
        args=args,
        env=env,
        cwd=cwd,
        user=config.user or str(image.get("User") or ""),
        hostname=hostname,
    )


def with_image_volumes(config: ContainerConfig, volumes: object) -> ContainerConfig:
    """``config`` plus an anonymous volume for each ``VOLUME`` of the image that no
    mount or tmpfs of the container covers (Docker's rule)."""
    if not isinstance(volumes, dict) or not volumes:
        return config
    covered = {posixpath.normpath(m.target) for m in config.mounts}
    covered |= {posixpath.normpath(t) for t in config.tmpfs}
    extra = []
    for target in sorted(volumes):
        t = posixpath.normpath("/" + str(target).lstrip("/"))
        if t not in covered:
            covered.add(t)
            extra.append(Mount("volume", t))
    if not extra:
        return config
    return dataclasses.replace(config, mounts=[*config.mounts, *extra])
