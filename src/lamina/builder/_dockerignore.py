""".dockerignore reading, moby's ``patternmatcher`` and the build-context walk.

Contract:

* :func:`read_dockerignore` finds the ignore file the way BuildKit does
  (``<Dockerfile name>.dockerignore`` next to the Dockerfile first, else
  ``<context>/.dockerignore``) and parses it like ``patternmatcher/ignorefile``
  (:func:`parse_dockerignore`).
* :class:`PatternMatcher` is a port of ``github.com/moby/patternmatcher``:
  patterns are Go ``filepath.Match`` globs plus ``**``; the last matching pattern
  wins; ``!`` patterns are exceptions; a pattern that matches a directory matches
  everything below it. Patterns compile once (to plain string tests where moby
  has fast paths, else to one regex), so matching is cheap per path.
* :func:`walk_context` / :func:`iter_context` list what BuildKit (fsutil) would
  send as the build context: every entry not excluded, in lexical depth-first
  order; an excluded directory appears only if something below it is
  re-included, and is not even read when no exception pattern can match below
  it.

Paths are relative, slash-separated, without a leading ``./`` (e.g. ``src/a.py``).
Deliberate differences from moby, all in patterns moby mishandles: inside
``[...]`` the characters ``*``, ``?``, ``.`` are literal (moby turns them into
regex fragments), and ``\\d``-style escapes match the letter, as ``filepath.Match``
documents (moby hands them to the regex engine).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import LaminaError

__all__ = [
    "BuildContextError",
    "ContextEntry",
    "MatchInfo",
    "PatternMatcher",
    "go_clean",
    "iter_context",
    "parse_dockerignore",
    "read_dockerignore",
    "walk_context",
]


class BuildContextError(LaminaError, ValueError):
    """A .dockerignore pattern is malformed or the context cannot be read."""


# --- reading -----------------------------------------------------------------

_BOM = "\ufeff"


def go_clean(path: str) -> str:
    """Go's ``filepath.Clean`` on a slash-separated path."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    out = "/".join(parts)
    if rooted:
        return "/" + out
    return out or "."


def parse_dockerignore(data: bytes | str) -> list[str]:
    """Parse ignore-file content like ``ignorefile.ReadAll``.

    A BOM is dropped; lines starting with ``#`` (before any trimming) are
    comments; the rest is trimmed, cleaned, its leading ``/`` removed, and a
    ``!`` prefix kept in front of the cleaned pattern.
    """
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    text = text.removeprefix(_BOM)
    patterns: list[str] = []
    for line in text.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern[0] == "!"
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern[0] == "/":
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


def dockerignore_path(context_dir: Path, dockerfile: Path | None = None) -> Path | None:
    """The ignore file BuildKit would use, or None when there is none."""
    if dockerfile is not None:
        specific = dockerfile.parent / (dockerfile.name + ".dockerignore")
        if specific.is_file():
            return specific
    default = context_dir / ".dockerignore"
    return default if default.is_file() else None


def read_dockerignore(context_dir: Path, dockerfile: Path | None = None) -> list[str]:
    """The exclude patterns for a build of ``context_dir`` with ``dockerfile``."""
    path = dockerignore_path(context_dir, dockerfile)
    if path is None:
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BuildContextError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_dockerignore(data)


# --- patterns ----------------------------------------------------------------

# Match kinds: moby's fast paths, then the general regex.
_EXACT, _PREFIX, _SUFFIX, _REGEX = range(4)


@dataclass(slots=True)
class _Pattern:
    text: str  # cleaned, without the "!"
    exclusion: bool
    dirs: int  # number of path components, for the legacy Matches()
    kind: int
    literal: str  # the exact path, the prefix or the suffix for the fast paths
    regex: re.Pattern[str] | None
    fixed_prefix: str  # text before the first wildcard: used to prune the walk

    def match(self, path: str) -> bool:
        kind = self.kind
        if kind == _EXACT:
            return path == self.literal
        if kind == _PREFIX:
            return path.startswith(self.literal)
        if kind == _SUFFIX:
            suffix = self.literal
            if path.endswith(suffix):
                return True
            # "**/foo" matches "foo"
            return suffix[:1] == "/" and path == suffix[1:]
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None


def _bad(pattern: str, why: str = "syntax error in pattern") -> BuildContextError:
    return BuildContextError(f"invalid .dockerignore pattern {pattern!r}: {why}")


def _class_char(p: str, i: int, whole: str) -> tuple[str, int]:
    """filepath.Match's getEsc: one (possibly escaped) character of a [...] class."""
    if i >= len(p) or p[i] in "-]":
        raise _bad(whole)
    if p[i] == "\\":
        i += 1
        if i >= len(p):
            raise _bad(whole)
    ch = p[i]
    i += 1
    if i >= len(p):  # the class is never closed
        raise _bad(whole)
    return ch, i


def _parse_class(p: str, i: int, whole: str) -> tuple[str, int]:
    """Parse a class starting after ``[`` at ``i``; return its regex and the next index."""
    negated = i < len(p) and p[i] == "^"
    if negated:
        i += 1
    items: list[str] = []
    while True:
        if i < len(p) and p[i] == "]" and items:
            i += 1
            break
        lo, i = _class_char(p, i, whole)
        hi = lo
        if p[i] == "-":
            hi, i = _class_char(p, i + 1, whole)
        if lo > hi:
            raise _bad(whole, f"invalid character class range {lo}-{hi}")
        items.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    return ("[^" if negated else "[") + "".join(items) + "]", i


def _compile(text: str, exclusion: bool) -> _Pattern:
    """moby's Pattern.compile: pick a fast path or build the regex."""
    out: list[str] = []
    kind = _EXACT
    fixed_end = -1
    i, n, step = 0, len(text), 0
    while i < n:
        ch = text[i]
        start = i
        i += 1
        if ch in "*?[\\" and fixed_end < 0:
            fixed_end = start
        if ch == "*":
            if i < n and text[i] == "*":
                i += 1
                if i < n and text[i] == "/":  # treat **/ as **
                    i += 1
                if i >= n:
                    # trailing **: everything, like .gitignore
                    if kind == _EXACT:
                        kind = _PREFIX
                    else:
                        out.append(".*")
                        kind = _REGEX
                else:
                    out.append("(?:.*/)?")  # any number of directories, even none
                    kind = _REGEX
                if step == 0:
                    kind = _SUFFIX
            else:
                out.append("[^/]*")
                kind = _REGEX
        elif ch == "?":
            out.append("[^/]")
            kind = _REGEX
        elif ch == "\\":
            if i >= n:
                raise _bad(text)
            out.append(re.escape(text[i]))
            i += 1
            kind = _REGEX
        elif ch == "[":
            cls, i = _parse_class(text, i, text)
            out.append(cls)
            kind = _REGEX
        else:
            out.append(re.escape(ch))
        step += 1

    fixed_prefix = text if fixed_end < 0 else text[:fixed_end]
    dirs = len(text.split("/"))
    if kind == _EXACT:
        return _Pattern(text, exclusion, dirs, kind, text, None, fixed_prefix)
    if kind == _PREFIX:
        return _Pattern(text, exclusion, dirs, kind, text[:-2], None, fixed_prefix)
    if kind == _SUFFIX:
        return _Pattern(text, exclusion, dirs, kind, text[2:], None, fixed_prefix)
    regex = re.compile("".join(out))
    return _Pattern(text, exclusion, dirs, kind, "", regex, fixed_prefix)


def _go_dir(path: str) -> str:
    """filepath.Dir for slash paths."""
    i = path.rfind("/")
    return go_clean(path[: i + 1])


@dataclass(frozen=True, slots=True)
class MatchInfo:
    """Per-pattern results for a directory, handed to its children's matching."""

    parent_matched: tuple[bool, ...] = ()


_NO_INFO = MatchInfo()


class PatternMatcher:
    """A compiled list of .dockerignore patterns (moby's ``PatternMatcher``)."""

    __slots__ = ("_patterns", "exclusions")

    def __init__(self, patterns: Iterable[str]) -> None:
        compiled: list[_Pattern] = []
        self.exclusions = False
        for raw in patterns:
            p = raw.strip()
            if not p:
                continue
            p = go_clean(p)
            exclusion = p[0] == "!"
            if exclusion:
                if len(p) == 1:
                    raise BuildContextError('illegal exclusion pattern: "!"')
                p = p[1:]
                self.exclusions = True
            compiled.append(_compile(p, exclusion))
        self._patterns = compiled

    @property
    def patterns(self) -> list[str]:
        """The cleaned patterns, exceptions with their ``!``."""
        return [("!" if p.exclusion else "") + p.text for p in self._patterns]

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def matches(self, path: str) -> bool:
        """moby's deprecated ``Matches``: checks a single parent dir only.

        Kept for parity; prefer :meth:`matches_or_parent_matches`.
        """
        matched = False
        parent = _go_dir(path)
        parent_dirs = parent.split("/")
        for pat in self._patterns:
            if pat.exclusion != matched:
                continue  # cannot change the outcome
            hit = pat.match(path)
            if not hit and parent != "." and pat.dirs <= len(parent_dirs):
                hit = pat.match("/".join(parent_dirs[: pat.dirs]))
            if hit:
                matched = not pat.exclusion
        return matched

    def matches_or_parent_matches(self, path: str) -> bool:
        """True when ``path`` or one of its parent directories is excluded."""
        matched = False
        parent = _go_dir(path)
        parent_dirs = parent.split("/") if parent != "." else []
        for pat in self._patterns:
            if pat.exclusion != matched:
                continue
            hit = pat.match(path)
            if not hit:
                for i in range(1, len(parent_dirs) + 1):
                    if pat.match("/".join(parent_dirs[:i])):
                        hit = True
                        break
            if hit:
                matched = not pat.exclusion
        return matched

    def matches_using_parent_results(
        self, path: str, parent: MatchInfo = _NO_INFO
    ) -> tuple[bool, MatchInfo]:
        """``MatchesUsingParentResults``: what BuildKit's context walk uses.

        ``parent`` is the MatchInfo returned for the parent directory (empty for
        a top-level entry, or when unknown: then parents are checked directly).
        """
        parent_matched = parent.parent_matched
        patterns = self._patterns
        if parent_matched and len(parent_matched) != len(patterns):
            raise ValueError("MatchInfo comes from another PatternMatcher")
        matched = False
        results = [False] * len(patterns)
        for i, pat in enumerate(patterns):
            hit = bool(parent_matched) and parent_matched[i]
            if not hit:
                if pat.exclusion != matched:
                    continue
                hit = pat.match(path)
                if not hit and not parent_matched:
                    parent_path = _go_dir(path)
                    if parent_path != ".":
                        dirs = parent_path.split("/")
                        for j in range(1, len(dirs) + 1):
                            if pat.match("/".join(dirs[:j])):
                                hit = True
                                break
            results[i] = hit
            if hit:
                matched = not pat.exclusion
        return matched, MatchInfo(tuple(results))

    def exception_may_match_below(self, directory: str) -> bool:
        """Whether some ``!`` pattern could re-include a path under ``directory``.

        Only the text before a pattern's first wildcard is compared, so a True
        may be a false alarm but a False is certain: a directory that gives
        False can be skipped without reading it.
        """
        prefix = directory + "/"
        for pat in self._patterns:
            if pat.exclusion:
                fixed = pat.fixed_prefix
                if fixed.startswith(prefix) or prefix.startswith(fixed):
                    return True
        return False


# --- walking -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """One entry of the build context: its relative path and its scandir entry."""

    path: str
    entry: os.DirEntry[str]

    def is_dir(self) -> bool:
        return self.entry.is_dir(follow_symlinks=False)


def iter_context(
    context_dir: Path, matcher: PatternMatcher | None = None
) -> Iterator[ContextEntry]:
    """Every entry of ``context_dir`` the build sees, directories before their content.

    Symlinks are listed, never followed. Raises BuildContextError when a
    directory cannot be read.
    """
    active = matcher if matcher else None
    pending: list[ContextEntry] = []  # excluded dirs shown only if something below is kept
    yield from _walk(os.fspath(context_dir), "", active, _NO_INFO, pending)


def walk_context(context_dir: Path, matcher: PatternMatcher | None = None) -> Iterator[str]:
    """The relative paths of :func:`iter_context`."""
    for item in iter_context(context_dir, matcher):
        yield item.path


def _scan(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError as exc:
        raise BuildContextError(
            f"cannot read build context directory {directory}: {exc.strerror or exc}"
        ) from None
    entries.sort(key=lambda e: e.name)  # Go's WalkDir order (bytewise == code point)
    return entries


def _walk(
    directory: str,
    rel_dir: str,
    matcher: PatternMatcher | None,
    info: MatchInfo,
    pending: list[ContextEntry],
) -> Iterator[ContextEntry]:
    for entry in _scan(directory):
        rel = rel_dir + entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        item = ContextEntry(rel, entry)
        if matcher is None:
            yield item
            if is_dir:
                yield from _walk(entry.path, rel + "/", None, info, pending)
            continue

        excluded, child_info = matcher.matches_using_parent_results(rel, info)
        if not excluded:
            if pending:
                yield from pending
                pending.clear()
            yield item
            if is_dir:
                yield from _walk(entry.path, rel + "/", matcher, child_info, pending)
            continue
        if not is_dir or not matcher.exclusions or not matcher.exception_may_match_below(rel):
            continue
        # Excluded, but an exception may re-include something below: look inside,
        # and show the directory only if that happens.
        depth = len(pending)
        pending.append(item)
        yield from _walk(entry.path, rel + "/", matcher, child_info, pending)
        del pending[depth:]
