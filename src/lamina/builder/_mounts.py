"""``RUN --mount=...`` flags: parsed into ``MountSpec`` (no I/O here; the runner
turns them into container mounts).

Keys as BuildKit accepts them: ``type`` (bind by default, cache, tmpfs, secret;
ssh is refused), ``target``/``dst``/``destination``, ``source``/``src``, ``from``,
``ro``/``readonly``, ``rw``/``readwrite``, ``id``, ``sharing``, ``mode``, ``uid``,
``gid``, ``size``, ``required``, ``env``. Values are expanded with the stage's
variables; a relative target is taken from the working directory.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from lamina.builder._dockerfile import BuildError
from lamina.builder.shell import ShellSyntaxError, process_word

_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_BOOL_KEYS = {"ro": "readonly", "readonly": "readonly", "rw": "readwrite", "readwrite": "readwrite"}


@dataclass
class MountSpec:
    type: str = "bind"
    target: str = ""
    source: str = ""
    from_: str | None = None
    readonly: bool | None = None
    id: str = ""
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: str = ""
    required: bool = False
    env: str | None = None

    def key(self) -> dict[str, Any]:
        """What of this mount belongs in the step's cache key (not cache or secret
        contents: BuildKit leaves those out too)."""
        return {k: v for k, v in self.__dict__.items() if v not in (None, "", False)}


def _truthy(value: str, where: str, key: str) -> bool:
    v = value.lower()
    if v in ("", "true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise BuildError(f"{where}: invalid value {value!r} for mount option {key}")


def _octal(value: str, where: str, key: str) -> int:
    try:
        return int(value, 8)
    except ValueError:
        raise BuildError(f"{where}: invalid {key} {value!r} in --mount: want octal") from None


def _int(value: str, where: str, key: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise BuildError(f"{where}: invalid {key} {value!r} in --mount: want a number") from None
    if n < 0:
        raise BuildError(f"{where}: invalid {key} {value!r} in --mount")
    return n


def parse_mount(spec: str, env: dict[str, str], escape: str, workdir: str, where: str) -> MountSpec:
    """One ``--mount=`` value (CSV of key=value, values expanded with ``env``)."""
    m = MountSpec()
    for part in spec.split(","):
        if not part.strip():
            continue
        key, eq, raw = part.partition("=")
        key = key.strip().lower()
        try:
            value = process_word(raw.strip(), env, escape) if eq else ""
        except ShellSyntaxError as e:
            raise BuildError(f"{where}: {e}") from None
        if key == "type":
            if value not in _MOUNT_TYPES:
                raise BuildError(f"{where}: unsupported mount type {value!r}")
            m.type = value
        elif key in ("target", "dst", "destination"):
            m.target = value
        elif key in ("source", "src"):
            m.source = value
        elif key == "from":
            m.from_ = value
        elif key in _BOOL_KEYS:
            flag = _truthy(value, where, key) if eq else True
            m.readonly = flag if _BOOL_KEYS[key] == "readonly" else not flag
        elif key == "id":
            m.id = value
        elif key == "sharing":
            if value not in ("shared", "private", "locked"):
                raise BuildError(f"{where}: invalid sharing={value} (shared, private or locked)")
            m.sharing = value
        elif key == "mode":
            m.mode = _octal(value, where, key)
        elif key == "uid":
            m.uid = _int(value, where, key)
        elif key == "gid":
            m.gid = _int(value, where, key)
        elif key == "size":
            m.size = value
        elif key == "required":
            m.required = _truthy(value, where, key) if eq else True
        elif key == "env":
            m.env = value
        else:
            raise BuildError(f"{where}: unknown mount option {key!r}")
    if m.type == "ssh":
        raise BuildError(f"{where}: RUN --mount=type=ssh is not supported by lamina")
    if m.from_ is not None and m.type != "bind":
        raise BuildError(f"{where}: --mount from= is only supported for bind mounts")
    if m.type == "secret":
        if not m.id and m.target:
            m.id = posixpath.basename(m.target)
        if not m.id:
            raise BuildError(f"{where}: a secret mount needs id=")
        if not m.target and m.env is None:
            m.target = f"/run/secrets/{m.id}"
    if not m.target and not (m.type == "secret" and m.env is not None):
        raise BuildError(f"{where}: --mount needs target=")
    if m.target and not m.target.startswith("/"):
        m.target = posixpath.join("/", workdir or "/", m.target)
    if m.target:
        m.target = posixpath.normpath(m.target)
    if m.type == "cache" and not m.id:
        m.id = m.target
    return m
