"""Opening lamina's SQLite databases the one way (WAL, NORMAL sync, any thread) and
the one way to write to them: ``transaction`` (BEGIN IMMEDIATE ... COMMIT, rolled
back on any exception)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect(db_path: Path, schema: str) -> sqlite3.Connection:
    """A connection in autocommit mode (callers use BEGIN IMMEDIATE), WAL journal,
    usable from any thread (callers serialise their own transactions).

    Two processes opening a brand-new database at once can see SQLITE_BUSY from the
    journal-mode switch, which does not go through the busy handler: retry it.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
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


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on ``db`` (a ``connect`` connection): BEGIN IMMEDIATE, so
    read-modify-write sequences do not interleave; COMMIT on success, ROLLBACK (and
    re-raise) on any exception. Threads sharing ``db`` serialise around it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
