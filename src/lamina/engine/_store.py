"""The container store: one SQLite database (WAL) for containers of every isolation,
``<root>/containers.db``.

One row per container, from ``create`` until ``remove``: its ``ContainerConfig`` (as
JSON), its ``isolation``, the engine's bookkeeping (``extra``: the image it holds,
its volumes and process, marks of work in flight), its backend's part (``task``), and
the state of its current or last run. One name space and one ID space: a name is
unique across isolations. The row is the single source of truth for "which
containers exist"; directories, mounts, monitors and runtime state are derived from
it and cleaned up against it.

Every process that touches containers (the CLI, the exit command, tests) opens its
own connection; writers take ``BEGIN IMMEDIATE`` so read-modify-write sequences never
interleave. ``synchronous=NORMAL``: a power cut may lose the last transition, never
corrupt the file, and the hot path pays no fsync per commit.

Schema versions (``PRAGMA user_version``): 0 and 1 are the process backend's own
store (before the engine; ``conmon_pid``, ``conmon_start``, runtime data in
``extra``); 2 adds ``isolation`` and ``task``, names the monitor generically, and
holds the micro-VM containers that ``vms/vms.db`` kept before (``_migrate``). The
upgrade runs in one transaction on the first open: two processes opening the root
at once, or one killed halfway, leave it upgraded once or not at all.

ID resolution follows Docker: full ID, then exact name, then unique ID prefix.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from lamina._sqlite import connect, transaction
from lamina.errors import AlreadyExists, LaminaError, NotFound
from lamina.runtime._types import (
    ContainerConfig,
    Mount,
    Record,
    Resources,
    Security,
    Status,
    Ulimit,
)

VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    image_digest TEXT NOT NULL,       -- the image record held for this container
    config TEXT NOT NULL,             -- ContainerConfig as JSON
    isolation TEXT NOT NULL DEFAULT 'process',
    extra TEXT NOT NULL DEFAULT '{}', -- the engine's: image, volumes, process, marks
    task TEXT NOT NULL DEFAULT '{}',  -- the backend's part
    status TEXT NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    pid_start INTEGER NOT NULL DEFAULT 0,       -- the workload's start time (pid reuse)
    monitor_pid INTEGER NOT NULL DEFAULT 0,     -- conmon, or a VM's supervisor
    monitor_start INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    oom_killed INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    started_at REAL,
    finished_at REAL,
    exits INTEGER NOT NULL DEFAULT 0  -- runs ended so far: next-exit waits for a change
);
CREATE INDEX IF NOT EXISTS containers_status ON containers(status);
-- The last exit of removed containers, for a while: ``wait`` on a --rm container that
-- finished (and was removed) before the caller got to wait still gets its exit code.
CREATE TABLE IF NOT EXISTS tombstones (
    id TEXT PRIMARY KEY,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    oom_killed INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    finished_at REAL,
    removed_at REAL NOT NULL
);
"""
_TOMBSTONE_SECONDS = 600
# Keys of ``extra`` that version 1 rows kept for the process backend: its ``task`` now
# (with the paths of its volumes, which its bundle is rebuilt with).
_V1_TASK_KEYS = ("lowerdirs", "oci_runtime")

_COLUMNS = [f.name for f in dataclasses.fields(Record)]
_SELECT = f"SELECT {','.join(_COLUMNS)} FROM containers"


class Summary(NamedTuple):
    """What reconciling needs of a row, read without parsing its config."""

    id: str
    isolation: str
    status: str  # a Status value
    monitor_pid: int
    monitor_start: int
    owner: str  # ContainerConfig.owner: a lease id, or ""


def config_to_json(config: ContainerConfig) -> str:
    return json.dumps(dataclasses.asdict(config), separators=(",", ":"))


def config_from_json(text: str) -> ContainerConfig:
    return config_from_dict(json.loads(text))


def config_from_dict(d: dict[str, Any]) -> ContainerConfig:
    known = {f.name for f in dataclasses.fields(ContainerConfig)}
    d = {k: v for k, v in d.items() if k in known}
    d["mounts"] = [Mount(**m) for m in d.get("mounts", [])]
    d["ulimits"] = [Ulimit(**u) for u in d.get("ulimits", [])]
    d["resources"] = Resources(**d.get("resources", {}))
    d["security"] = Security(**d.get("security", {}))
    return ContainerConfig(**d)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class ContainerStore:
    """Container rows on one root: ``<root>/containers.db``."""

    def __init__(self, db_path: Path, *, upgrade: Callable[[sqlite3.Connection], None]) -> None:
        """``upgrade(db)``: what the engine adds to an upgrade from version 1, in its
        transaction (the import of the micro-VM containers)."""
        # One connection per store, usable from any thread (a caller may wait in one
        # thread while it attaches in another); transactions are serialised by _lock.
        self._path = db_path
        from lamina.network._db import SCHEMA as NETWORK_SCHEMA

        self._db = connect(db_path, _SCHEMA + NETWORK_SCHEMA)  # networks and their leases
        self._lock = threading.RLock()
        self.upgraded = False  # whether this open did the upgrade
        if self._version() < VERSION:
            self._upgrade(upgrade)

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _upgrade(self, more: Callable[[sqlite3.Connection], None]) -> None:
        with self.tx() as db:
            if self._version() >= VERSION:
                return  # another process did it while this one waited
            have = {r[1] for r in db.execute("PRAGMA table_info(containers)")}
            if "pid_start" not in have:
                db.execute("ALTER TABLE containers ADD COLUMN pid_start INTEGER NOT NULL DEFAULT 0")
            for old, new in (("conmon_pid", "monitor_pid"), ("conmon_start", "monitor_start")):
                if old in have:
                    db.execute(f"ALTER TABLE containers RENAME COLUMN {old} TO {new}")
            if "isolation" not in have:
                db.execute(
                    "ALTER TABLE containers ADD COLUMN isolation TEXT NOT NULL DEFAULT 'process'"
                )
            if "task" not in have:
                db.execute("ALTER TABLE containers ADD COLUMN task TEXT NOT NULL DEFAULT '{}'")
                volumes_dir = self._path.parent / "volumes"
                for cid, extra_text in db.execute("SELECT id, extra FROM containers").fetchall():
                    extra = json.loads(extra_text)
                    task = {k: extra.pop(k) for k in _V1_TASK_KEYS if k in extra}
                    task["volume_paths"] = {
                        target: str(volumes_dir / name / "_data")
                        for target, name in (extra.get("volumes") or {}).items()
                    }
                    db.execute(
                        "UPDATE containers SET extra=?, task=? WHERE id=?",
                        (_json(extra), _json(task), cid),
                    )
            more(db)
            db.execute(f"PRAGMA user_version = {VERSION}")
            self.upgraded = True

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._db) as db:
            yield db

    # -- rows
    @staticmethod
    def to_row(rec: Record) -> tuple[Any, ...]:
        values: list[Any] = []
        for name in _COLUMNS:
            v = getattr(rec, name)
            if name == "config":
                v = config_to_json(v)
            elif name in ("extra", "task"):
                v = _json(v)
            elif name == "status":
                v = str(v.value)
            elif name == "oom_killed":
                v = int(v)
            values.append(v)
        return tuple(values)

    @staticmethod
    def _from_row(row: tuple[Any, ...]) -> Record:
        d = dict(zip(_COLUMNS, row, strict=True))
        d["config"] = config_from_json(d["config"])
        d["extra"] = json.loads(d["extra"])
        d["task"] = json.loads(d["task"])
        d["status"] = Status(d["status"])
        d["oom_killed"] = bool(d["oom_killed"])
        return Record(**d)

    def _all(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def insert(self, rec: Record) -> None:
        marks = ",".join("?" * len(_COLUMNS))
        try:
            self._all(
                f"INSERT INTO containers ({','.join(_COLUMNS)}) VALUES ({marks})",
                self.to_row(rec),
            )
        except sqlite3.IntegrityError:
            raise name_conflict(rec.name) from None

    def update(self, cid: str, **values: Any) -> None:
        if not values:
            return
        sets = []
        params: list[Any] = []
        for k, v in values.items():
            if k not in _COLUMNS or k == "id":
                raise KeyError(k)
            if k == "config":
                v = config_to_json(v)
            elif k in ("extra", "task"):
                v = _json(v)
            elif isinstance(v, Status):
                v = v.value
            elif isinstance(v, bool):
                v = int(v)
            sets.append(f"{k}=?")
            params.append(v)
        params.append(cid)
        self._all(f"UPDATE containers SET {','.join(sets)} WHERE id=?", params)

    def delete(self, cid: str) -> None:
        """Delete the row, keeping its last exit as a tombstone for a while."""
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO tombstones SELECT id, exit_code, reason, oom_killed, "
                "error, finished_at, ? FROM containers WHERE id=? AND exits > 0",
                (now, cid),
            )
            db.execute("DELETE FROM containers WHERE id=?", (cid,))
            db.execute("DELETE FROM tombstones WHERE removed_at < ?", (now - _TOMBSTONE_SECONDS,))

    def tombstone(self, cid: str) -> Record | None:
        """The last exit of a container removed recently (full ID, or a prefix of one
        with a single match), as a record with status ``removing``; None if unknown."""
        cid = cid.strip().lstrip("/")
        rows = []
        if re.fullmatch(r"[0-9a-f]{1,64}", cid):
            rows = self._all(
                "SELECT id, exit_code, reason, oom_killed, error, finished_at FROM tombstones "
                "WHERE id >= ? AND id < ? LIMIT 2",
                (cid, cid + "g"),
            )
        if len(rows) != 1:
            return None
        row = rows[0]
        return Record(
            id=row[0],
            name="",
            created=0.0,
            image_digest="",
            config=ContainerConfig(image=""),
            status=Status.REMOVING,
            exit_code=row[1],
            reason=row[2],
            oom_killed=bool(row[3]),
            error=row[4],
            finished_at=row[5],
            exits=1,
        )

    def rename(self, cid: str, new_name: str) -> None:
        try:
            self._all("UPDATE containers SET name=? WHERE id=?", (new_name, cid))
        except sqlite3.IntegrityError:
            raise name_conflict(new_name) from None

    # -- reading
    def get(self, cid: str) -> Record | None:
        row = self._one(f"{_SELECT} WHERE id=?", (cid,))
        return self._from_row(row) if row else None

    def list(self) -> list[Record]:
        rows = self._all(f"{_SELECT} ORDER BY created DESC")
        return [self._from_row(r) for r in rows]

    def summaries(self) -> builtins.list[Summary]:
        """Every row, as much as reconciling reads of it (cheap: no config parsing)."""
        rows = self._all(
            "SELECT id, isolation, status, monitor_pid, monitor_start, "
            "coalesce(json_extract(config, '$.owner'), '') FROM containers"
        )
        return [Summary(*r) for r in rows]

    def exited_with(self, key: str) -> builtins.list[Record]:
        """Exited containers whose ``extra`` holds ``key``: a mark of work in flight on
        them (few rows ever carry one, so every reconcile can afford to ask). A text
        match; the key is checked again on the parsed rows."""
        rows = self._all(
            f"{_SELECT} WHERE status=? AND extra LIKE ?",
            (Status.EXITED.value, f'%"{key}":%'),
        )
        return [rec for rec in map(self._from_row, rows) if key in rec.extra]

    def health_checked(self) -> builtins.list[str]:
        """IDs of running containers with a health check to run (``engine._health``): a
        CMD, CMD-SHELL, TCP or HTTP test with its argument."""
        rows = self._all(
            "SELECT id FROM containers WHERE status=? AND "
            "json_extract(config, '$.healthcheck.Test[0]') IN "
            "('CMD', 'CMD-SHELL', 'TCP', 'HTTP') AND "
            "json_extract(config, '$.healthcheck.Test[1]') IS NOT NULL",
            (Status.RUNNING.value,),
        )
        return [r[0] for r in rows]

    def name_taken(self, name: str) -> bool:
        return self._one("SELECT 1 FROM containers WHERE name=?", (name,)) is not None

    def resolve(self, ref: str) -> Record:
        """Full ID, then exact name, then unique ID prefix."""
        ref = ref.strip().lstrip("/")
        if not ref:
            raise NotFound("no such container: (empty name)")
        rec = self.get(ref) if len(ref) == 64 else None
        if rec is not None:
            return rec
        row = self._one(f"{_SELECT} WHERE name=?", (ref,))
        if row is not None:
            return self._from_row(row)
        if re.fullmatch(r"[0-9a-f]{1,64}", ref):
            ids = [
                r[0]
                for r in self._all(
                    "SELECT id FROM containers WHERE id >= ? AND id < ? LIMIT 2",
                    (ref, ref + "g"),
                )
            ]
            if len(ids) > 1:
                raise LaminaError(f"container ID prefix {ref!r} is ambiguous: use more characters")
            if ids:
                found = self.get(ids[0])
                if found is not None:
                    return found
        raise NotFound(f"no such container: {ref}")


def name_conflict(name: str) -> AlreadyExists:
    return AlreadyExists(
        f"the container name {name!r} is already in use; remove or rename that container"
    )
