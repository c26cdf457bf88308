"""Docker's container filters (``ps --filter``): which keys exist, what each selects.
Values of one key are ORed (``label``: ANDed), keys ANDed; a ``status`` or ``exited``
filter looks at stopped containers too."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from lamina.errors import LaminaError
from lamina.runtime._types import Container

KEYS = ("status", "name", "id", "label", "exited", "ancestor", "isolation", "health")
HEALTH = ("starting", "healthy", "unhealthy", "none")
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


class InvalidFilter(LaminaError, ValueError):
    """A filter Docker would refuse (Docker's 125 for a bad flag)."""

    exit_code = 125


def state_word(c: Container) -> str:
    """Docker's one-word state: a first start that failed leaves it ``created``, a run
    that failed later ``exited``."""
    s = str(c.state.status)
    if s == "failed":
        return "created" if c.state.started_at is None else "exited"
    return s


def check(filters: Mapping[str, Sequence[str]]) -> None:
    """InvalidFilter for a key that does not exist or a value it cannot take."""
    for key, values in filters.items():
        if key not in KEYS:
            raise InvalidFilter(f"invalid filter {key!r} (supported: {', '.join(KEYS)})")
        for value in values:
            if key == "status" and value not in STATUSES:
                raise InvalidFilter(f"invalid filter 'status={value}' ({', '.join(STATUSES)})")
            if key == "health" and value not in HEALTH:
                raise InvalidFilter(f"Unrecognised filter value for health: {value}")
            if key == "name":
                try:
                    re.compile(value)
                except re.error:
                    raise InvalidFilter(f"invalid filter 'name={value}': bad pattern") from None


def needs_all(filters: Mapping[str, Sequence[str]]) -> bool:
    """Whether the filters look at stopped containers (status, exited)."""
    return bool(filters.get("status") or filters.get("exited"))


def select(
    containers: Sequence[Container],
    filters: Mapping[str, Sequence[str]],
    image_id: Callable[[str], str | None],
) -> list[Container]:
    """The containers every filter keeps; ``image_id(name)``: the ID of a local image
    (``ancestor``), None when there is none."""

    def keep(c: Container, key: str, values: Sequence[str]) -> bool:
        if key == "status":
            return state_word(c) in values
        if key == "name":
            return any(re.search(v, c.name) for v in values)
        if key == "id":
            return any(c.id.startswith(v) for v in values)
        if key == "label":
            return all(_has_label(c, v) for v in values)
        if key == "exited":
            code = c.state.exit_code
            return state_word(c) == "exited" and code is not None and str(code) in values
        if key == "ancestor":
            return any(_is_ancestor(c, v, image_id) for v in values)
        if key == "health":
            return (c.health or "none") in values
        return c.config.isolation in values  # isolation

    out = list(containers)
    for key, values in filters.items():
        if values:
            out = [c for c in out if keep(c, key, values)]
    return out


def _has_label(c: Container, spec: str) -> bool:
    key, sep, value = spec.partition("=")
    if key not in c.config.labels:
        return False
    return not sep or c.config.labels[key] == value


def _is_ancestor(c: Container, value: str, image_id: Callable[[str], str | None]) -> bool:
    if c.config.image_ref == value:
        return True
    if c.config.image.removeprefix("sha256:").startswith(value.removeprefix("sha256:")):
        return True
    return image_id(value) == c.config.image
