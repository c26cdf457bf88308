"""Network records and address leases, in the engine's ``containers.db`` (its store
runs ``SCHEMA`` when it opens the database). Every function takes the caller's
connection: a lease is written in the same transaction as the container record that
names it (``create``, ``connect``), so an address is never given twice and never
outlives its container, however the writer ends.

``ip_leases`` has one row per address in use: the primary key (network, address) is
what makes two racing ``run``s unable to get one address; a row whose container has
no record is an orphan any command may delete (``release_orphans``)."""

from __future__ import annotations

import re
import sqlite3

from lamina.errors import AlreadyExists, LaminaError, NotFound
from lamina.network._model import Network

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL              -- Network as JSON
);
CREATE TABLE IF NOT EXISTS ip_leases (
    network_id TEXT NOT NULL,
    address TEXT NOT NULL,
    container_id TEXT NOT NULL,
    PRIMARY KEY (network_id, address)
);
CREATE INDEX IF NOT EXISTS ip_leases_container ON ip_leases(container_id);
"""


def get(db: sqlite3.Connection, ref: str) -> Network:
    """A network by full ID, name, or unique ID prefix (Docker's order)."""
    ref = ref.strip()
    if not ref:
        raise NotFound("network name is empty")
    row = db.execute("SELECT config FROM networks WHERE id=?", (ref,)).fetchone()
    if row is None:
        row = db.execute("SELECT config FROM networks WHERE name=?", (ref,)).fetchone()
    if row is None and re.fullmatch(r"[0-9a-f]{1,64}", ref):
        rows = db.execute(
            "SELECT config FROM networks WHERE id >= ? AND id < ? LIMIT 2", (ref, ref + "g")
        ).fetchall()
        if len(rows) > 1:
            raise LaminaError(f"network ID prefix {ref!r} is ambiguous: use more characters")
        row = rows[0] if rows else None
    if row is None:
        raise NotFound(f"network {ref} not found")
    return Network.from_json(row[0])


def find(db: sqlite3.Connection, ref: str) -> Network | None:
    try:
        return get(db, ref)
    except NotFound:
        return None


def list_all(db: sqlite3.Connection) -> list[Network]:
    rows = db.execute("SELECT config FROM networks ORDER BY name").fetchall()
    return [Network.from_json(r[0]) for r in rows]


def insert(db: sqlite3.Connection, net: Network) -> None:
    try:
        db.execute(
            "INSERT INTO networks (id, name, config) VALUES (?, ?, ?)",
            (net.id, net.name, net.to_json()),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"network with name {net.name} already exists") from None


def delete(db: sqlite3.Connection, net_id: str) -> None:
    db.execute("DELETE FROM networks WHERE id=?", (net_id,))
    db.execute("DELETE FROM ip_leases WHERE network_id=?", (net_id,))


def taken(db: sqlite3.Connection, net_id: str) -> set[str]:
    """The addresses of ``net_id`` leased now."""
    rows = db.execute("SELECT address FROM ip_leases WHERE network_id=?", (net_id,))
    return {r[0] for r in rows}


def lease(db: sqlite3.Connection, net_id: str, address: str, cid: str) -> None:
    try:
        db.execute(
            "INSERT INTO ip_leases (network_id, address, container_id) VALUES (?, ?, ?)",
            (net_id, address, cid),
        )
    except sqlite3.IntegrityError:
        raise AlreadyExists(f"address {address} is already in use") from None


def release(db: sqlite3.Connection, cid: str, net_id: str | None = None) -> None:
    """The leases of container ``cid`` (on ``net_id`` only, when given)."""
    if net_id is None:
        db.execute("DELETE FROM ip_leases WHERE container_id=?", (cid,))
    else:
        db.execute("DELETE FROM ip_leases WHERE container_id=? AND network_id=?", (cid, net_id))


def release_orphans(db: sqlite3.Connection) -> int:
    """Leases whose container has no record (a removal killed between the two)."""
    cur = db.execute("DELETE FROM ip_leases WHERE container_id NOT IN (SELECT id FROM containers)")
    return cur.rowcount


def users(db: sqlite3.Connection, net_id: str) -> list[str]:
    """IDs of the containers holding a lease on ``net_id``."""
    rows = db.execute(
        "SELECT DISTINCT container_id FROM ip_leases WHERE network_id=?", (net_id,)
    ).fetchall()
    return [r[0] for r in rows]


def release_done(db_path: str, cid: str, done: str) -> None:
    """``python -m lamina.network._db DB CID DONE``: a finished pending teardown's
    leases released (run by its worker, a fresh process: SQLite does not survive a
    fork), then its ``.done`` file removed. Killed first, reconcile does it."""
    import contextlib
    import os

    from lamina._sqlite import transaction

    db = sqlite3.connect(db_path, timeout=60, isolation_level=None)
    try:
        with transaction(db):
            release(db, cid)
    finally:
        db.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(done)


if __name__ == "__main__":
    import sys

    release_done(*sys.argv[1:4])
