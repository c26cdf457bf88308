"""Compose's variable interpolation and its ``.env`` format.

``$VAR``, ``${VAR}``; ``${VAR:-default}`` (unset or empty), ``${VAR-default}`` (unset);
``${VAR:?message}`` / ``${VAR?message}`` (an error); ``${VAR:+other}`` /
``${VAR+other}`` (other when set); ``$$`` is a ``$``. Defaults and messages may
interpolate in turn (``${A:-${B}}``). An unset variable without a default becomes
the empty string, as in Compose.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", "-", ":?", "?", ":+", "+")
MAX_NESTING = 16  # ${A:-${B:-...}} levels; each level scans the rest of the text again


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut short: a value may be megabytes."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


class InterpolationError(ValueError):
    """A template Compose cannot expand; the message says what, not where."""


def interpolate(text: str, lookup: Callable[[str], str | None], depth: int = 0) -> str:
    """``text`` with its variables expanded by ``lookup`` (None: unset)."""
    if depth > MAX_NESTING:
        raise InterpolationError(
            f"invalid interpolation format: nested more than {MAX_NESTING} levels deep"
        )
    out, pos = [], 0
    while True:
        dollar = text.find("$", pos)
        if dollar < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:dollar])
        value, pos = _expand_at(text, dollar, lookup, depth)
        out.append(value)


def _expand_at(
    text: str, dollar: int, lookup: Callable[[str], str | None], depth: int
) -> tuple[str, int]:
    """The expansion of the ``$...`` at ``dollar`` and the position after it."""
    rest = dollar + 1
    if text.startswith("$", rest):
        return "$", rest + 1
    if text.startswith("{", rest):
        end = _closing_brace(text, rest)
        return _expand_braced(text[rest + 1 : end], lookup, depth), end + 1
    m = _NAME.match(text, rest)
    if m is None:
        raise InterpolationError(
            f"invalid interpolation format in {_shown(text)}: a '$' starts a variable; "
            "write '$$' for a literal '$'"
        )
    return lookup(m.group()) or "", m.end()


def _closing_brace(text: str, opening: int) -> int:
    """The index of the ``}`` closing the ``{`` at ``opening`` (nested ``${`` counted)."""
    depth, i = 1, opening + 1
    while i < len(text):
        if text.startswith(("$$", "${"), i):
            depth += text[i + 1] == "{"
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InterpolationError(f"invalid interpolation format in {_shown(text)}: '${{' not closed")


def _expand_braced(inner: str, lookup: Callable[[str], str | None], depth: int) -> str:
    m = _NAME.match(inner)
    if m is None:
        raise InterpolationError(f"invalid interpolation format: {_shown('${' + inner + '}')}")
    name, tail = m.group(), inner[m.end() :]
    if not tail:
        return lookup(name) or ""
    operator = next((op for op in _OPERATORS if tail.startswith(op)), None)
    if operator is None:
        raise InterpolationError(f"invalid interpolation format: {_shown('${' + inner + '}')}")
    word = tail[len(operator) :]
    value = lookup(name)
    unset = value is None or (operator.startswith(":") and value == "")
    if operator in (":-", "-"):
        return interpolate(word, lookup, depth + 1) if unset else str(value)
    if operator in (":?", "?"):
        if unset:
            message = interpolate(word, lookup, depth + 1) or f"the variable {name} is required"
            raise InterpolationError(f"{name}: {message}")
        return str(value)
    return "" if unset else interpolate(word, lookup, depth + 1)  # :+ and +


MAX_EXPANDED_CHARS = 16 << 20  # all strings of a file once interpolated
MAX_VALUE_CHARS = 1 << 20  # one value of an env file (whose values may repeat earlier ones)


def interpolate_tree(
    data: Any, path: str, lookup: Callable[[str], str | None], errors: list[tuple[str, str]]
) -> Any:
    """The document with every string value interpolated (keys are not, as in
    Compose; ``x-`` extensions are left alone). Errors go to ``errors`` by path; a
    document growing beyond MAX_EXPANDED_CHARS stops with one error."""
    from lamina.deploy._spec import join

    budget = MAX_EXPANDED_CHARS

    def walk(node: Any, at: str) -> Any:
        nonlocal budget
        if isinstance(node, str):
            try:
                value = interpolate(node, lookup)
            except InterpolationError as exc:
                errors.append((at, str(exc)))
                return node
            budget -= len(value)
            if budget < 0:
                raise _TooLarge(at)
            return value
        if isinstance(node, dict):
            return {
                key: value
                if isinstance(key, str) and key.startswith("x-")
                else walk(value, join(at, str(key)))
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [walk(v, join(at, i)) for i, v in enumerate(node)]
        return node

    try:
        return walk(data, path)
    except _TooLarge as exc:
        errors.append(
            (exc.path, f"the file's values exceed {MAX_EXPANDED_CHARS} characters interpolated")
        )
        return data


class _TooLarge(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


# -- .env and env_file


def parse_env_file(
    text: str, lookup: Callable[[str], str | None]
) -> tuple[dict[str, str | None], list[tuple[int, str]]]:
    """Compose's env file: ``KEY=VALUE`` lines (``export`` allowed), ``#`` comments,
    single quotes literal, double quotes with escapes, unquoted values trimmed and cut
    at `` #``; unquoted and double-quoted values interpolate (earlier keys first, then
    ``lookup``). A bare ``KEY`` is None: its value is the environment's.
    Returns the variables and the (line number, problem) of lines it cannot read."""
    values: dict[str, str | None] = {}
    problems: list[tuple[int, str]] = []

    def scoped(name: str) -> str | None:
        return values[name] if values.get(name) is not None else lookup(name)

    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, eq, raw = line.partition("=")
        key = key.strip()
        if not _NAME.fullmatch(key):
            problems.append((number, f"{key!r} is not a variable name"))
            continue
        if not eq:
            values[key] = None
            continue
        raw = raw.strip()
        if raw[:1] in ("'", '"'):
            quote = raw[0]
            end, parts, scanned = _closing_quote(raw, quote, 1), [raw], len(raw)
            while end < 0 and i < len(lines):  # a quoted value may span lines
                chunk = "\n" + lines[i]  # scanned alone: a long value stays linear
                i += 1
                found = _closing_quote(chunk, quote, 0)
                end = scanned + found if found >= 0 else -1
                parts.append(chunk)
                scanned += len(chunk)
            raw = "".join(parts)
            if end < 0:
                problems.append((number, f"unterminated {quote} quote"))
                continue
            body = raw[1:end]
            if quote == "'":
                values[key] = body
                continue
            body = _unescape(body)
        else:
            body = re.split(r"\s+#", raw, maxsplit=1)[0].strip()
        try:
            values[key] = interpolate(body, scoped)
        except InterpolationError as exc:
            problems.append((number, str(exc)))
        if len(values.get(key) or "") > MAX_VALUE_CHARS:
            values.pop(key)
            problems.append((number, f"the value exceeds {MAX_VALUE_CHARS} characters"))
    return values, problems


def _closing_quote(raw: str, quote: str, start: int) -> int:
    """The index of the quote closing a value from ``start`` (a double-quoted value's
    backslash escapes the next character); -1 if there is none."""
    i = start
    while i < len(raw):
        if quote == '"' and raw[i] == "\\":
            i += 2
            continue
        if raw[i] == quote:
            return i
        i += 1
    return -1


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$$"}


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


def chain(*scopes: Mapping[str, str | None]) -> Callable[[str], str | None]:
    """A lookup trying each scope in turn; a None value in a scope counts as unset."""

    def lookup(name: str) -> str | None:
        for scope in scopes:
            value = scope.get(name)
            if value is not None:
                return value
        return None

    return lookup
