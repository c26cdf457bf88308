"""COPY and ADD: sources (context, other stage or image, heredoc, URL) written into
the mounted stage root with Docker's rules.

- A directory source copies its *contents*; several sources (or a wildcard) need a
  destination ending in ``/``; a single file goes to the destination path, or
  into it when that is an existing directory. Relative destinations start at the
  working directory; symlinks on the way are resolved inside the image root.
- From the context files arrive as root:root (``--chown`` aside), with their modes
  and times; from a stage or image they keep their owners and extended attributes.
- New parent directories are 0755, owned by ``--chown``'s user or root.
- ``--chmod`` (octal or symbolic) applies to everything copied; ``--exclude``
  patterns (.dockerignore syntax) are matched against source-relative paths.
- ADD unpacks local tar archives (plain, gzip, bzip2, xz, zstd) into the
  destination directory and downloads URLs (mode 0600, ``--checksum`` checked).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.builder import _fileops as fops
from lamina.builder._context import BuildContext, fs_walk, has_wildcard, match_component
from lamina.builder._dockerfile import BuildError
from lamina.builder._dockerignore import PatternMatcher
from lamina.builder._stages import expand


def heredoc_name(raw: str) -> str | None:
    m = re.fullmatch(r"<<-?([\"']?)([^\s\"']+)\1", raw)
    return m.group(2) if m else None


def is_url(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def is_git(src: str) -> bool:
    return src.startswith("git@") or (src.startswith(("git://",)))


def expand_heredoc(data: str, env: dict[str, str], escape: str, where: str) -> str:
    """Variables in an unquoted heredoc: ``$VAR`` and ``${...}`` are replaced, quotes
    and everything else stay as written (BuildKit expands heredocs this way)."""
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == escape and i + 1 < n and data[i + 1] in ("$", escape):
            out.append(data[i + 1])
            i += 2
            continue
        if c == "$" and i + 1 < n:
            if data[i + 1] == "{":
                depth, j = 0, i + 1
                while j < n:
                    if data[j] == "{":
                        depth += 1
                    elif data[j] == "}":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                if j < n:
                    out.append(expand(data[i : j + 1], env, escape, where))
                    i = j + 1
                    continue
            else:
                m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", data[i + 1 :])
                if m:
                    out.append(env.get(m.group(0), ""))
                    i += 1 + m.end()
                    continue
        out.append(c)
        i += 1
    return "".join(out)


@dataclass
class Source:
    kind: str  # context | stage | heredoc | url
    path: str  # context rel path, path in the stage, heredoc name, URL file name
    name: str = ""  # the name a context file is copied as (a followed link keeps its own)
    data: bytes = b""
    digest: str = ""
    mtime: float | None = None


@dataclass
class CopyJob:
    """One COPY/ADD into the mounted stage root ``merged``."""

    merged: Path
    dest: str
    dest_is_dir: bool
    owner: fops.Owner | None
    chmod: str | None
    exclude: PatternMatcher | None
    where: str
    add: bool
    context: BuildContext
    view: Path | None

    def _opts(self, default_root: bool) -> fops.CopyOptions:
        owner = self.owner or (fops.Owner(0, 0) if default_root else None)
        return fops.CopyOptions(owner=owner, chmod=self.chmod, keep_xattrs=not default_root)

    def _dest_file(self, name: str) -> Path:
        """Where a single file lands: into the destination directory, or the
        destination path itself."""
        dest = self.dest.rstrip("/") or "/"
        resolved = fops.resolve_in(self.merged, dest)
        if self.dest_is_dir or resolved.is_dir():
            if not resolved.is_dir():
                fops.make_parents(resolved / ".x", self.merged, self.owner)
            return resolved / name
        parent = fops.resolve_in(self.merged, posixpath.dirname(dest) or "/")
        target = parent / posixpath.basename(dest)
        fops.make_parents(target, self.merged, self.owner)
        return target

    def _dest_dir(self) -> Path:
        dest = self.dest.rstrip("/") or "/"
        resolved = fops.resolve_in(self.merged, dest)
        if not resolved.is_dir():
            if os.path.lexists(resolved):
                os.unlink(resolved)
            fops.make_parents(resolved / ".x", self.merged, self.owner)
        return resolved

    def copy(self, src: Source) -> None:
        if src.kind == "heredoc":
            target = self._dest_file(src.path)
            owner = self.owner or fops.Owner(0, 0)
            mode = fops.apply_chmod(self.chmod, 0o644, False) if self.chmod else 0o644
            fops.write_file(str(target), src.data, mode, owner, None)
        elif src.kind == "url":
            target = self._dest_file(src.path)
            owner = self.owner or fops.Owner(0, 0)
            mode = fops.apply_chmod(self.chmod, 0o600, False) if self.chmod else 0o600
            mtime = int(src.mtime * 1e9) if src.mtime is not None else None
            fops.write_file(str(target), src.data, mode, owner, mtime)
        elif src.kind == "context":
            self._copy_context(src.path, src.name or posixpath.basename(src.path))
        else:
            self._copy_stage(src.path)

    def _excluded(self, rel: str) -> bool:
        return self.exclude is not None and self.exclude.matches_or_parent_matches(rel)

    def _copy_context(self, rel: str, as_name: str) -> None:
        ctx = self.context
        st = ctx.stat(rel)
        assert st is not None
        opts = self._opts(default_root=True)
        if stat.S_ISDIR(st.st_mode):
            target = self._dest_dir()

            def entries() -> Iterator[tuple[str, str, os.stat_result]]:
                for sub, sst in ctx.walk(rel):
                    if sub == rel:
                        continue
                    name = sub[len(rel) :].lstrip("/") if rel else sub
                    if not self._excluded(name):
                        yield name, ctx.abspath(sub), sst

            fops.copy_entries(entries(), str(target), opts)
            return
        name = as_name
        if self._excluded(name):
            return
        path = ctx.abspath(rel)
        if self.add and stat.S_ISREG(st.st_mode) and _archive_kind(path):
            self._extract(path)
            return
        fops.copy_entry(path, str(self._dest_file(name)), st, opts)

    def _copy_stage(self, src: str) -> None:
        assert self.view is not None
        view = self.view
        matches = _glob_in(view, src) if has_wildcard(src) else [src]
        if len(matches) > 1:
            self.dest_is_dir = True  # several files can only go into a directory
        found = False
        opts = self._opts(default_root=False)
        for m in matches:
            host = fops.resolve_in(view, m)
            try:
                st = os.lstat(host)
            except (FileNotFoundError, NotADirectoryError):
                continue
            found = True
            if stat.S_ISDIR(st.st_mode):
                target = self._dest_dir()
                self._copy_tree(str(host), str(target), opts)
            else:
                name = posixpath.basename(host.as_posix())
                if self._excluded(name):
                    continue
                fops.copy_entry(str(host), str(self._dest_file(name)), st, opts)
        if not found:
            raise BuildError(f"{self.where}: COPY --from failed: {src} not found")

    def _copy_tree(self, src: str, dst: str, opts: fops.CopyOptions) -> None:
        if self.exclude is None:
            fops.copy_tree(src, dst, opts)
            return
        entries = (e for e in fs_walk(src) if e[0] and not self._excluded(e[0]))
        fops.copy_entries(entries, dst, opts)

    def _extract(self, path: str) -> None:
        """ADD of a local archive: unpack it into the destination directory."""
        from lamina.image._layers import apply_layer

        target = self._dest_dir()
        tmp = Path(tempfile.mkdtemp(prefix="add-", dir=self.merged.parent))
        try:
            with open(path, "rb") as f, _decompress(f) as stream:
                apply_layer(stream, tmp)
            opts = self._opts(default_root=False)
            self._copy_tree(str(tmp), str(target), opts)
            root = _root_entry(path)
            if root is not None:
                # The archive's own "./" entry describes the destination directory.
                uid, gid = (opts.owner.uid, opts.owner.gid) if opts.owner else (root.uid, root.gid)
                os.lchown(target, uid, gid)
                mode = fops.apply_chmod(self.chmod, root.mode, True) if self.chmod else root.mode
                os.chmod(target, mode & 0o7777)
                os.utime(target, (root.mtime, root.mtime))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _root_entry(path: str) -> Any:
    """The archive's entry for its root directory ("." or "./"), when it starts with one."""
    import tarfile

    with open(path, "rb") as f, _decompress(f) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                first = tar.next()
        except tarfile.TarError:
            return None
    if first is None or not first.isdir() or first.name.strip("/") not in ("", "."):
        return None
    return first


def _glob_in(root: Path, pattern: str) -> list[str]:
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    matches = [""]
    for comp in parts:
        nxt = []
        for base in matches:
            d = fops.resolve_in(root, base or "/")
            if not has_wildcard(comp):
                nxt.append(f"{base}/{comp}")
                continue
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            nxt += [f"{base}/{n}" for n in names if match_component(comp, n)]
        matches = nxt
    return matches


def _archive_kind(path: str) -> str | None:
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


@contextlib.contextmanager
def _decompress(f: Any) -> Iterator[Any]:
    import bz2
    import lzma

    from lamina.image._layers import open_decompressed

    kind = _archive_kind(f.name)
    if kind == "bzip2":
        with bz2.open(f) as b:
            yield b
    elif kind == "xz":
        with lzma.open(f) as x:
            yield x
    else:
        s = open_decompressed(f)
        try:
            yield s
        finally:
            s.close()


def fetch_url(url: str, checksum: str | None, where: str) -> Source:
    """ADD <url>: download it (whole, in memory: ADD is for small files), check
    ``--checksum``, keep the Last-Modified time."""
    import hashlib

    from lamina.registry._httpx import httpx

    if checksum is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
        raise BuildError(f"{where}: invalid --checksum {checksum!r}: want sha256:<64 hex>")
    try:
        with httpx.Client(follow_redirects=True, timeout=60) as client:
            resp = client.get(url)
    except httpx.HTTPError as e:
        raise BuildError(f"{where}: cannot download {url}: {e}") from None
    if resp.status_code != 200:
        raise BuildError(f"{where}: cannot download {url}: HTTP {resp.status_code}")
    data = resp.content
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if checksum is not None and digest != checksum:
        raise BuildError(f"{where}: checksum of {url} is {digest}, not {checksum}")
    mtime: float | None = None
    lm = resp.headers.get("last-modified")
    if lm:
        from email.utils import parsedate_to_datetime

        with contextlib.suppress(TypeError, ValueError):
            mtime = parsedate_to_datetime(lm).timestamp()
    name = posixpath.basename(httpx.URL(url).path.rstrip("/")) or "index.html"
    return Source("url", name, data=data, digest=digest, mtime=mtime)
