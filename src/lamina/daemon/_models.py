"""The request bodies the API takes, as pydantic models: a body is checked whole
before the engine is called, and a bad one is a 400 whose one line names the field.

The create body is ``lamina create``'s flags (``RunOptions``, one field per flag, the
same values as on the command line), so the remote CLI sends what it parsed and the
daemon decides with the same code. What only the client can read (``--env-file``,
``--label-file``, ``-e KEY`` without a value: the client's environment) the client
resolves into ``env`` and ``labels`` first.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from lamina.daemon._http import HttpError
from lamina.engine._options import RunOptions

_STRICT = ConfigDict(extra="forbid", strict=True)
# Flags that name the client's files: resolved by the client (see the docstring).
_CLIENT_ONLY = frozenset({"env_files", "label_files"})


def _field_type(hint: Any) -> Any:
    if typing.get_origin(hint) in (Sequence, list, tuple) or hint is Sequence:
        return list[str]
    return hint


def _create_model() -> type[BaseModel]:
    hints = typing.get_type_hints(RunOptions)
    fields: dict[str, Any] = {
        "image": (str, Field(min_length=1, description="image reference or ID")),
        "command": (list[str] | None, Field(None, description="replaces the image's CMD")),
        "pull": (
            typing.Literal["always", "missing", "never", "newer"],
            Field("missing", description="when to pull the image"),
        ),
        "platform": (str | None, Field(None, description="OS/ARCH[/VARIANT] to pull")),
    }
    for f in dataclasses.fields(RunOptions):
        if f.name in _CLIENT_ONLY:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        if isinstance(default, tuple):
            default = list(default)
        fields[f.name] = (_field_type(hints[f.name]), default)
    model: type[BaseModel] = create_model("ContainerCreate", __config__=_STRICT, **fields)
    model.__doc__ = "lamina create's flags, one field each (RunOptions)."
    return model


ContainerCreate = _create_model()


class ContainerCreated(BaseModel):
    Id: str
    Warnings: list[str]
    # the created container as ``GET /v1/containers/{id}/record`` describes it: a
    # ``run`` needs no second request for it
    Container: dict[str, Any]


class ContainerUpdate(BaseModel):
    """``lamina update``'s flags; absent ones stay as they are."""

    model_config = _STRICT
    cpus: str | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    memory: str | None = None
    memory_swap: str | None = None
    pids_limit: int | None = None
    restart: str | None = None  # --restart's policy: no, always, on-failure[:N], ...


class ContainerCommit(BaseModel):
    """``lamina commit``'s arguments and flags."""

    model_config = _STRICT
    reference: str | None = None
    changes: list[str] = []
    message: str | None = None
    author: str | None = None
    pause: bool = True


class ExecCreate(BaseModel):
    model_config = _STRICT
    cmd: list[str] = Field(min_length=1)
    env: list[str] = []
    user: str | None = None
    workdir: str | None = None
    tty: bool = False
    detach_keys: str | None = None  # Docker's notation; None: ctrl-p,ctrl-q


class IdResponse(BaseModel):
    Id: str


class ExecInspect(BaseModel):
    Id: str
    ContainerId: str
    Running: bool
    ExitCode: int | None
    Error: str | None = None  # why it could not run (then ExitCode is 126, 127 or 1)


class WaitResponse(BaseModel):
    StatusCode: int
    Reason: str
    Signal: str | None
    Error: str


class VolumeCreate(BaseModel):
    model_config = _STRICT
    name: str | None = None
    labels: dict[str, str] = {}


class ImageTag(BaseModel):
    model_config = _STRICT
    target: str = Field(min_length=1)


def parse(model: type[BaseModel], data: Any) -> Any:
    """``data`` as ``model``; HttpError 400 naming the first bad field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise HttpError(400, f"invalid field {where}: {err['msg']}") from None
