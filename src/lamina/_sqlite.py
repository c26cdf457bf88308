"""Opening lamina's SQLite databases the one way (WAL, NORMAL sync, any thread) and
the one way to write to them: ``transaction`` (BEGIN IMMEDIATE ... COMMIT, rolled
back on any exception).

A full disk must not stop reads. Opening a WAL database maps its shared-memory
index (``<db>-shm``), which SQLite first grows on disk: with no space left that
fails ("disk I/O error") before any query runs. ``connect`` then opens the file
read-only as immutable (no index, no locks, no journal): every read works, and the
first write fails with a ``StorageError`` naming the database. A WAL left with
content by a process that died cannot be read that way (its frames need the index
to be rebuilt), so that case is an error naming the database too. Any write that
fails for lack of space or an I/O error is a one-line ``StorageError`` naming the
database, never sqlite's bare "database or disk is full".
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from lamina.errors import StorageError

# sqlite's codes for "the disk refused": full, an I/O error (its sub-codes
# SQLITE_IOERR_*), and a write on the read-only connection of a full disk.
_FULL = "SQLITE_FULL"
_IOERR = "SQLITE_IOERR"
_READONLY = "SQLITE_READONLY"
_NEARLY_FULL = 1 << 20  # bytes: below this an I/O error on write is taken for a full disk


class Database(sqlite3.Connection):
    """A connection that knows its file, so that a write the disk refuses is an
    error naming it. ``read_only_because`` is why it was opened read-only (a full
    disk), empty for a normal connection."""

    path: Path
    read_only_because: str = ""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.OperationalError as e:
            self._raise_refused(e)
            raise

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.OperationalError as e:
            self._raise_refused(e)
            raise

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(sql_script)
        except sqlite3.OperationalError as e:
            self._raise_refused(e)
            raise

    def _raise_refused(self, e: sqlite3.OperationalError) -> None:
        """Raise the StorageError for a write the disk refused; return for other errors."""
        why = _refusal(self.path, e)
        readonly = getattr(e, "sqlite_errorname", "").startswith(_READONLY)
        if why is None and readonly and self.read_only_because:
            why = self.read_only_because
        if why is not None:
            raise StorageError(f"cannot write {self.path}: {why}", reason=why) from e


def _refusal(db_path: Path, e: sqlite3.Error) -> str | None:
    """Why the disk refused a write of ``db_path`` (full, or an I/O error), as
    strerror says it; None when sqlite failed for another reason."""
    name = getattr(e, "sqlite_errorname", "")
    if name == _FULL or (name.startswith(_IOERR) and _nearly_full(db_path)):
        return os.strerror(errno.ENOSPC)
    if name.startswith(_IOERR):
        return os.strerror(errno.EIO)
    return None


def _nearly_full(path: Path) -> bool:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < _NEARLY_FULL


def connect(db_path: Path, schema: str) -> Database:
    """A connection in autocommit mode (callers use BEGIN IMMEDIATE), WAL journal,
    usable from any thread (callers serialise their own transactions).

    Two processes opening a brand-new database at once can see SQLITE_BUSY from the
    journal-mode switch, which does not go through the busy handler: retry it.
    On a full disk an existing database opens read-only (see the module docstring).
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    existed = db_path.exists()
    try:
        return _open_shared(db_path, schema)
    except StorageError as e:
        if not existed:
            _remove_empty(db_path)
            raise
        why = e.reason
    return _open_immutable(db_path, schema, why)


def _remove_empty(db_path: Path) -> None:
    """Remove the files of a database this open created but could not initialise:
    while the database file is empty, its -wal and -shm hold nothing either."""
    with suppress(FileNotFoundError):
        if db_path.stat().st_size != 0:
            return
        for suffix in ("-wal", "-shm", ""):
            with suppress(FileNotFoundError):
                os.unlink(db_path.with_name(db_path.name + suffix))


def _open_shared(db_path: Path, schema: str) -> Database:
    db = _connect(str(db_path), db_path, uri=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(schema)
            return db
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.01)
        except StorageError:
            db.close()
            raise


def _open_immutable(db_path: Path, schema: str, why: str) -> Database:
    """``db_path`` read-only, for a disk that refused the shared open for ``why``."""
    wal = db_path.with_name(db_path.name + "-wal")
    with suppress(FileNotFoundError):
        if wal.stat().st_size > 0:
            raise StorageError(
                f"cannot open {db_path}: its journal {wal} needs recovery: {why}", reason=why
            )
    uri = "file:" + _uri_path(db_path) + "?mode=ro&immutable=1"
    db = _connect(uri, db_path, uri=True)
    db.read_only_because = why
    try:
        db.executescript(schema)  # a no-op unless a table is missing: then a clear error
    except BaseException:
        db.close()
        raise
    return db


def _connect(target: str, db_path: Path, *, uri: bool) -> Database:
    db = sqlite3.connect(
        target,
        timeout=30,
        isolation_level=None,
        check_same_thread=False,
        uri=uri,
        factory=Database,
    )
    assert isinstance(db, Database)
    db.path = db_path
    return db


def _uri_path(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path.absolute()), safe="/")


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on ``db`` (a ``connect`` connection): BEGIN IMMEDIATE, so
    read-modify-write sequences do not interleave; COMMIT on success, ROLLBACK (and
    re-raise) on any exception, a failed COMMIT included (a full disk). Threads
    sharing ``db`` serialise around it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # sqlite may have rolled back already (a failed COMMIT): then ROLLBACK fails.
        with suppress(sqlite3.Error, StorageError):
            db.execute("ROLLBACK")
        raise
