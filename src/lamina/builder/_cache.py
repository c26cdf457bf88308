"""The build cache: step cache keys -> the image state each step produced.

Lives in ``<root>/build-cache.db`` (SQLite, WAL) and so survives processes. A key
is a sha256 over the parent step's key and everything that decides the step's
result (see the executor); the value is the resulting image state as JSON (the
image config and the layer descriptors). Layers themselves stay in the content
store, protected from garbage collection by the ``build-cache`` image records
(``_commit.stack_image``); a hit whose layer blobs are gone is a miss.

Cache mounts (``RUN --mount=type=cache``) persist under
``<root>/build-cache/mounts/<id hash>``. ``prune`` empties all of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from lamina._sqlite import connect, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,        -- JSON: {"config": ..., "layers": [...]}
    created REAL NOT NULL,
    used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,      -- absolute path of a context file
    sig TEXT NOT NULL,          -- size:mtime:ctime:inode:device when it was hashed
    digest TEXT NOT NULL
);
"""


def cache_key(parent: str, material: Any) -> str:
    """The key of a step from its parent's key and what decides its result."""
    blob = json.dumps([parent, material], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8", "surrogateescape")).hexdigest()


class BuildCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._db = connect(self.root / "build-cache.db", _SCHEMA)
        self._lock = threading.Lock()

    @property
    def mounts_dir(self) -> Path:
        return self.root / "build-cache" / "mounts"

    def close(self) -> None:
        self._db.close()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM steps WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        value: dict[str, Any] = json.loads(row[0])
        return value

    def put(self, key: str, state: dict[str, Any]) -> None:
        now = time.time()
        data = json.dumps(state, separators=(",", ":"))
        with self._lock:
            self._db.execute(
                "INSERT INTO steps VALUES (?,?,?,?) ON CONFLICT(key) DO UPDATE SET "
                "state=excluded.state, used=excluded.used",
                (key, data, now, now),
            )

    def touch(self, keys: list[str]) -> None:
        if not keys:
            return
        now = time.time()
        with self._lock, transaction(self._db) as db:
            db.executemany("UPDATE steps SET used=? WHERE key=?", [(now, k) for k in keys])

    def file_digests(self, under: Path) -> dict[str, tuple[str, str]]:
        """Known file digests below the directory ``under``: path -> (sig, digest)."""
        prefix = str(under).rstrip("/") + "/"
        with self._lock:
            rows = self._db.execute(
                "SELECT path, sig, digest FROM files WHERE path >= ? AND path < ?",
                (prefix, prefix[:-1] + "0"),  # "0" sorts right after "/"
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def save_file_digests(self, fresh: dict[str, tuple[str, str]]) -> None:
        if not fresh:
            return
        rows = [(p, sig, d) for p, (sig, d) in fresh.items()]
        with self._lock, transaction(self._db) as db:
            db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?)", rows)

    def count(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM steps").fetchone()
        return int(row[0])

    def clear(self) -> int:
        """Forget every step and cache mount; returns how many steps were known."""
        with self._lock:
            n = int(self._db.execute("SELECT COUNT(*) FROM steps").fetchone()[0])
            self._db.execute("DELETE FROM steps")
            self._db.execute("DELETE FROM files")
        shutil.rmtree(self.mounts_dir, ignore_errors=True)
        return n
