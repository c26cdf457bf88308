"""The build context: the directory COPY and ADD read from, minus .dockerignore.

``BuildContext`` lists the context once, on first use, the way BuildKit would send
it (``iter_context``: excluded entries are absent, ``!`` exceptions re-include), and
answers from that index: which entries a COPY source (with Go ``filepath.Match``
wildcards) selects, their subtrees, and a content digest of a selection (relative
names, types, modes, link targets and file contents; never owners or mtimes, which
COPY does not keep from the context anyway: files arrive as root:root). The digest
is what makes a COPY step's cache key.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from lamina.builder._dockerfile import BuildError
from lamina.builder._dockerignore import PatternMatcher, go_clean, iter_context

_WILDCARD = re.compile(r"[*?\[\\]")
_MAX_SYMLINKS = 40


def has_wildcard(path: str) -> bool:
    return _WILDCARD.search(path) is not None


@functools.lru_cache(maxsize=512)
def _component_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match for one path component, as a regex."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i >= n:
                raise BuildError(f"invalid pattern {pattern!r}: trailing backslash")
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            j = i
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            items: list[str] = []
            while j < n and (pattern[j] != "]" or not items):
                ch = pattern[j]
                if ch == "\\" and j + 1 < n:
                    j += 1
                    ch = pattern[j]
                if j + 2 < n and pattern[j + 1] == "-" and pattern[j + 2] != "]":
                    hi = pattern[j + 2]
                    items.append(f"{re.escape(ch)}-{re.escape(hi)}")
                    j += 3
                else:
                    items.append(re.escape(ch))
                    j += 1
            if j >= n:
                raise BuildError(f"invalid pattern {pattern!r}: unterminated [")
            out.append(("[^" if negate else "[") + "".join(items) + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
    return re.compile("".join(out))


def match_component(pattern: str, name: str) -> bool:
    return _component_regex(pattern).fullmatch(name) is not None


def clean_source(src: str) -> str:
    """A COPY source as a context-relative path ("" for the context root)."""
    cleaned = go_clean("/" + src).lstrip("/")
    return cleaned


def file_digest(path: str, size: int) -> str:
    with open(path, "rb", buffering=0) as f:
        if size <= 1 << 20:
            return hashlib.sha256(f.read()).hexdigest()
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
        return h.hexdigest()


def _signature(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


class FileDigests:
    """Content digests of files by path, trusted while the file's stat signature
    (size, mtime, ctime, inode) is unchanged, as git's index does. Kept in the build
    cache database between builds; files changed in the last seconds are not
    remembered (their mtime could still repeat)."""

    _RACY_SECONDS = 2

    def __init__(self, known: dict[str, tuple[str, str]] | None = None) -> None:
        self.known = known or {}
        self.fresh: dict[str, tuple[str, str]] = {}
        self._now = time.time()

    def digest(self, path: str, st: os.stat_result) -> str:
        sig = _signature(st)
        hit = self.known.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
        value = file_digest(path, st.st_size)
        if (
            self._now - st.st_mtime > self._RACY_SECONDS
            and self._now - st.st_ctime > self._RACY_SECONDS
        ):
            self.fresh[path] = (sig, value)
        return value


def tree_digest(
    entries: Iterator[tuple[str, str, os.stat_result]], files: FileDigests | None = None
) -> str:
    """Digest of (relative name, absolute path, lstat) entries: names, types, modes,
    link targets and contents."""
    h = hashlib.sha256()
    for rel, path, st in entries:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            body = files.digest(path, st) if files is not None else file_digest(path, st.st_size)
        elif stat.S_ISLNK(mode):
            body = os.readlink(path)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            body = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
        else:
            body = ""
        h.update(f"{rel}\0{mode:o}\0{body}\n".encode("utf-8", "surrogateescape"))
    return "sha256:" + h.hexdigest()


class BuildContext:
    """The context directory as the build sees it (indexed lazily, once)."""

    def __init__(self, root: Path, patterns: list[str], files: FileDigests | None = None) -> None:
        self.root = Path(root)
        self.files = files
        self.matcher = PatternMatcher(patterns) if patterns else None
        self._lock = threading.Lock()
        self._stats: dict[str, os.stat_result] = {}
        self._children: dict[str, list[str]] = {}
        self._indexed = False
        self._digests: dict[str, str] = {}

    def _index(self) -> None:
        with self._lock:
            if self._indexed:
                return
            stats: dict[str, os.stat_result] = {"": os.stat(self.root)}
            children: dict[str, list[str]] = {"": []}
            for item in iter_context(self.root, self.matcher):
                rel = item.path
                st = item.entry.stat(follow_symlinks=False)
                stats[rel] = st
                parent, _, name = rel.rpartition("/")
                children.setdefault(parent, []).append(name)
                if stat.S_ISDIR(st.st_mode):
                    children.setdefault(rel, [])
            self._stats, self._children, self._indexed = stats, children, True

    def stat(self, rel: str) -> os.stat_result | None:
        self._index()
        return self._stats.get(rel)

    def abspath(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else str(self.root)

    def _follow(self, rel: str) -> str | None:
        """Resolve symlinks in ``rel`` inside the context (COPY follows a source
        symlink, as BuildKit does); None when it leads nowhere in the context."""
        parts = [p for p in rel.split("/") if p]
        resolved: list[str] = []
        hops = 0
        while parts:
            comp = parts.pop(0)
            if comp == "..":
                if resolved:
                    resolved.pop()
                continue
            cand = "/".join([*resolved, comp])
            st = self._stats.get(cand)
            if st is None:
                return None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    return None
                target = os.readlink(self.abspath(cand))
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            resolved.append(comp)
        return "/".join(resolved)

    def select(self, src: str) -> list[tuple[str, str]]:
        """Context entries a COPY source names, as (entry, name it is copied as):
        wildcards expanded, a source symlink followed (the copy keeps the link's
        name); [] when nothing matches."""
        self._index()
        rel = clean_source(src)
        if not has_wildcard(rel):
            target = self._follow(rel)
            if target is None or target not in self._stats:
                return []
            return [(target, posixpath.basename(rel))]
        matches = [""]
        for comp in rel.split("/"):
            nxt = []
            for base in matches:
                for name in self._children.get(base, []):
                    if match_component(comp, name):
                        nxt.append(f"{base}/{name}" if base else name)
            matches = nxt
        out = []
        for m in matches:
            target = self._follow(m)
            if target is not None and target in self._stats:
                out.append((target, posixpath.basename(m)))
        return out

    def walk(self, rel: str) -> Iterator[tuple[str, os.stat_result]]:
        """``rel`` and, for a directory, everything below it, pre-order, sorted."""
        self._index()
        stack = [rel]
        while stack:
            cur = stack.pop()
            st = self._stats[cur]
            yield cur, st
            if stat.S_ISDIR(st.st_mode):
                names = self._children.get(cur, [])
                stack.extend(f"{cur}/{n}" if cur else n for n in reversed(names))

    def digest(self, rel: str) -> str:
        """Content digest of the entry ``rel`` and its subtree (memoised)."""
        with self._lock:
            known = self._digests.get(rel)
        if known is not None:
            return known

        def entries() -> Iterator[tuple[str, str, os.stat_result]]:
            for sub, st in self.walk(rel):
                name = sub[len(rel) :].lstrip("/") if rel else sub
                yield name, self.abspath(sub), st

        value = tree_digest(entries(), self.files)
        with self._lock:
            self._digests[rel] = value
        return value


def fs_walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative name, path, lstat) of ``root`` and everything below, sorted."""
    st = os.lstat(root)
    yield "", root, st
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        subdirs = []
        for e in entries:
            erel = f"{rel}/{e.name}" if rel else e.name
            est = e.stat(follow_symlinks=False)
            yield erel, e.path, est
            if stat.S_ISDIR(est.st_mode):
                subdirs.append((erel, e.path))
        stack.extend(reversed(subdirs))
