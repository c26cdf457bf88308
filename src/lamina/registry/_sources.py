"""Where blobs are known to live remotely, for cross-repository mounts on push.

File: ``<lamina root>/registry-sources.json``::

    {"version": 1, "blobs": {"sha256:...": ["127.0.0.1:5000/busybox", ...]}}

Each digest maps to the repositories (``host/path``, most recent first, at most
``MAX_REPOS``) it was pulled from or pushed to. Push consults it: a blob already in
another repository of the destination registry is mounted instead of uploaded. The
record is only a hint: a failed mount falls back to an upload, so a stale entry
costs one request. Updates are read-modify-write under an ``flock`` and written
atomically; the file is capped at ``MAX_BLOBS`` digests (oldest dropped).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from lamina._fsutil import atomic_write

FILE_NAME = "registry-sources.json"
MAX_REPOS = 8
MAX_BLOBS = 20000


class BlobSources:
    def __init__(self, root: Path) -> None:
        self.path = Path(root) / FILE_NAME
        self._lock_path = Path(root) / (FILE_NAME + ".lock")

    def _load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        blobs = data.get("blobs") if isinstance(data, dict) else None
        if not isinstance(blobs, dict):
            return {}
        return {str(k): [str(r) for r in v] for k, v in blobs.items() if isinstance(v, list)}

    def repositories(self, digest: str) -> list[str]:
        """Known ``host/path`` repositories holding ``digest``, most recent first."""
        return self._load().get(digest, [])

    def candidates(self, digest: str, host: str, exclude: str) -> list[str]:
        """Repository paths on ``host`` (not ``exclude``) that hold ``digest``."""
        prefix = host + "/"
        return [
            r[len(prefix) :]
            for r in self.repositories(digest)
            if r.startswith(prefix) and r[len(prefix) :] != exclude
        ]

    def add(self, repository: str, digests: Iterable[str]) -> None:
        """Note that ``repository`` (``host/path``) holds ``digests``."""
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return
        with self._locked():
            blobs = self._load()
            for d in wanted:
                repos = [r for r in blobs.pop(d, []) if r != repository]
                # Re-inserting moves the digest to the end: newest entries last.
                blobs[d] = [repository, *repos][:MAX_REPOS]
            if len(blobs) > MAX_BLOBS:
                blobs = dict(list(blobs.items())[-MAX_BLOBS:])
            self._write(blobs)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, blobs: dict[str, list[str]]) -> None:
        data = json.dumps({"version": 1, "blobs": blobs}, separators=(",", ":")).encode()
        atomic_write(self.path, data)
