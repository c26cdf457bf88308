"""The daemon's JSON back into the engine's plain data classes (``Container``,
``WaitOutcome``, ...), so the CLI prints from the same objects in both modes. The
daemon writes them with ``plain()``: dataclasses as objects, enums as values."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")
_HINTS: dict[type, dict[str, Any]] = {}


def decode(kind: type[T], data: Any) -> T:
    """``data`` (JSON) as an instance of the dataclass ``kind``; unknown keys (a newer
    daemon's fields) are left out."""
    return typing.cast(T, _value(kind, data))


def _hints(kind: type) -> dict[str, Any]:
    hints = _HINTS.get(kind)
    if hints is None:
        hints = _HINTS[kind] = typing.get_type_hints(kind)
    return hints


def _value(hint: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _value(options[0], data) if len(options) == 1 else data
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_value(item, v) for v in data]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        args = typing.get_args(hint)
        value_hint = args[1] if len(args) == 2 else Any
        return {k: _value(value_hint, v) for k, v in data.items()}
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            hints = _hints(hint)
            fields = {f.name for f in dataclasses.fields(hint) if f.init}
            return hint(**{k: _value(hints[k], v) for k, v in data.items() if k in fields})
        if issubclass(hint, enum.Enum):
            return hint(data)
        if hint is bytes and isinstance(data, str):
            return data.encode()
        if hint is float and isinstance(data, int):
            return float(data)
    return data
