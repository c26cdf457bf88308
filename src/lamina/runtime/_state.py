"""Container records of the OCI backend, in SQLite (WAL) under the lamina root.

One row per container, from ``create`` until ``remove``: its ``ContainerConfig``
(as JSON), backend data the runtime needs again later (volume paths, anonymous
volumes, the image it holds), and the state of its current or last run. The row
is the single source of truth for "which containers exist"; directories, mounts
and runc state are derived from it and cleaned up against it.

Every process that touches containers (the CLI, conmon's exit command, tests)
opens its own connection; writers take ``BEGIN IMMEDIATE`` so read-modify-write
sequences never interleave. ``synchronous=NORMAL``: a power cut may lose the last
transition, never corrupt the file, and the hot path pays no fsync per commit.

ID resolution follows Docker: full ID, then exact name, then unique ID prefix.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from lamina._sqlite import connect, transaction
from lamina.errors import AlreadyExists, LaminaError, NotFound
from lamina.runtime._types import (
    ContainerConfig,
    ContainerState,
    ExitReason,
    Mount,
    Resources,
    Security,
    Status,
    Ulimit,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    image_digest TEXT NOT NULL,       -- the image record held for this container
    config TEXT NOT NULL,             -- ContainerConfig as JSON
    extra TEXT NOT NULL DEFAULT '{}', -- backend data (volume paths, anonymous volumes...)
    status TEXT NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    pid_start INTEGER NOT NULL DEFAULT 0,     -- the container init's start time (pid reuse)
    conmon_pid INTEGER NOT NULL DEFAULT 0,
    conmon_start INTEGER NOT NULL DEFAULT 0,  -- /proc/<pid>/stat starttime: guards pid reuse
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

_NAME_RE = r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$"  # compiled by re when first used


@dataclass
class Record:
    """A container row."""

    id: str
    name: str
    created: float
    image_digest: str
    config: ContainerConfig
    extra: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.CREATED
    pid: int = 0
    pid_start: int = 0
    conmon_pid: int = 0
    conmon_start: int = 0
    exit_code: int | None = None
    reason: str = ""
    oom_killed: bool = False
    error: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    exits: int = 0

    @property
    def state(self) -> ContainerState:
        return ContainerState(
            status=self.status,
            pid=self.pid if self.status in (Status.RUNNING, Status.PAUSED) else 0,
            exit_code=self.exit_code,
            oom_killed=self.oom_killed,
            error=self.error,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )

    @property
    def exit_reason(self) -> ExitReason:
        try:
            return ExitReason(self.reason)
        except ValueError:
            return ExitReason.EXITED


_COLUMNS = [f.name for f in dataclasses.fields(Record)]
# Columns added after the first release: (name, definition) for ALTER TABLE.
_ADDED_COLUMNS = (("pid_start", "INTEGER NOT NULL DEFAULT 0"),)


class Summary(NamedTuple):
    """What reconciling needs of a row, read without parsing its config."""

    id: str
    status: str  # a Status value
    conmon_pid: int
    conmon_start: int
    owner: str  # ContainerConfig.owner: a lease id, or ""


def config_to_json(config: ContainerConfig) -> str:
    return json.dumps(dataclasses.asdict(config), separators=(",", ":"))


def config_from_json(text: str) -> ContainerConfig:
    d: dict[str, Any] = json.loads(text)
    known = {f.name for f in dataclasses.fields(ContainerConfig)}
    d = {k: v for k, v in d.items() if k in known}
    d["mounts"] = [Mount(**m) for m in d.get("mounts", [])]
    d["ulimits"] = [Ulimit(**u) for u in d.get("ulimits", [])]
    d["resources"] = Resources(**d.get("resources", {}))
    d["security"] = Security(**d.get("security", {}))
    return ContainerConfig(**d)


def new_id() -> str:
    return os.urandom(32).hex()


def validate_name(name: str) -> str:
    if not re.match(_NAME_RE, name):
        raise LaminaError(
            f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )
    return name.lstrip("/")


class StateStore:
    """Container rows on one root: ``<root>/containers.db``."""

    def __init__(self, db_path: Path) -> None:
        # One connection per store, usable from any thread (a caller may wait in one
        # thread while it attaches in another); transactions are serialised by _lock.
        self._db = connect(db_path, _SCHEMA)
        self._lock = threading.RLock()
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns a database made by an older lamina lacks."""
        have = {r[1] for r in self._db.execute("PRAGMA table_info(containers)")}
        for name, definition in _ADDED_COLUMNS:
            if name not in have:
                with contextlib.suppress(sqlite3.OperationalError):  # another process did
                    self._db.execute(f"ALTER TABLE containers ADD COLUMN {name} {definition}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, transaction(self._db) as db:
            yield db

    # -- rows
    @staticmethod
    def _to_row(rec: Record) -> tuple[Any, ...]:
        values: list[Any] = []
        for name in _COLUMNS:
            v = getattr(rec, name)
            if name == "config":
                v = config_to_json(v)
            elif name == "extra":
                v = json.dumps(v, separators=(",", ":"))
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
                self._to_row(rec),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"container name {rec.name!r} is already in use; remove or rename that "
                f"container first"
            ) from None

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
            elif k == "extra":
                v = json.dumps(v, separators=(",", ":"))
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
        """The last exit of a container removed recently (full ID only), as a record
        with status ``removing``; None if unknown."""
        row = self._one(
            "SELECT exit_code, reason, oom_killed, error, finished_at FROM tombstones WHERE id=?",
            (cid,),
        )
        if row is None:
            return None
        return Record(
            id=cid,
            name="",
            created=0.0,
            image_digest="",
            config=ContainerConfig(image=""),
            status=Status.REMOVING,
            exit_code=row[0],
            reason=row[1],
            oom_killed=bool(row[2]),
            error=row[3],
            finished_at=row[4],
            exits=1,
        )

    def rename(self, cid: str, new_name: str) -> None:
        try:
            self._all("UPDATE containers SET name=? WHERE id=?", (new_name, cid))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"container name {new_name!r} is already in use") from None

    # -- reading
    def get(self, cid: str) -> Record | None:
        row = self._one(f"SELECT {','.join(_COLUMNS)} FROM containers WHERE id=?", (cid,))
        return self._from_row(row) if row else None

    def list(self) -> list[Record]:
        rows = self._all(f"SELECT {','.join(_COLUMNS)} FROM containers ORDER BY created DESC")
        return [self._from_row(r) for r in rows]

    def summaries(self) -> builtins.list[Summary]:
        """Every row, as much as reconciling reads of it (cheap: no config parsing)."""
        rows = self._all(
            "SELECT id, status, conmon_pid, conmon_start, "
            "coalesce(json_extract(config, '$.owner'), '') FROM containers"
        )
        return [Summary(*r) for r in rows]

    def exited_with(self, key: str) -> builtins.list[Record]:
        """Exited containers whose ``extra`` holds ``key``: a mark of work in flight on
        them (few rows ever carry one, so every reconcile can afford to ask). A text
        match (no JSON1 needed); the key is checked again on the parsed rows."""
        rows = self._all(
            f"SELECT {','.join(_COLUMNS)} FROM containers WHERE status=? AND extra LIKE ?",
            (Status.EXITED.value, f'%"{key}":%'),
        )
        return [rec for rec in map(self._from_row, rows) if key in rec.extra]

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
        row = self._one(f"SELECT {','.join(_COLUMNS)} FROM containers WHERE name=?", (ref,))
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


# Docker-style random names: adjective_noun, with a number on collision.
_ADJECTIVE_WORDS = (
    "admiring adoring affectionate agitated amazing angry awesome beautiful blissful bold "
    "boring brave busy charming clever compassionate competent condescending confident cool "
    "cranky crazy dazzling determined distracted dreamy eager ecstatic elastic elated elegant "
    "eloquent epic exciting fervent festive flamboyant focused friendly frosty funny gallant "
    "gifted goofy gracious great happy hardcore heuristic hopeful hungry infallible inspiring "
    "intelligent interesting jolly jovial keen kind laughing loving lucid magical modest "
    "musing mystifying naughty nervous nice nifty nostalgic objective optimistic peaceful "
    "pedantic pensive practical priceless quirky quizzical recursing relaxed reverent romantic "
    "sad serene sharp silly sleepy stoic strange stupefied suspicious sweet tender thirsty "
    "trusting unruffled upbeat vibrant vigilant vigorous wizardly wonderful xenodochial "
    "youthful zealous zen"
)
_NOUN_WORDS = (
    "agnesi albattani allen almeida antonelli archimedes ardinghelli aryabhata austin babbage "
    "banach bardeen bartik bassi beaver bell benz bhabha bhaskara black blackburn blackwell "
    "bohr booth borg bose bouman boyd brahmagupta brattain brown buck burnell cannon carson "
    "cartwright carver cerf chandrasekhar chaplygin chatelet chatterjee chaum chebyshev "
    "clarke cohen colden cori cray curie darwin davinci dewdney dhawan diffie dijkstra dirac "
    "driscoll dubinsky easley edison einstein elbakyan elgamal elion ellis engelbart euclid "
    "euler faraday feistel fermat fermi feynman franklin gagarin galileo galois ganguly gates "
    "gauss germain goldberg goldstine goldwasser golick goodall gould greider grothendieck "
    "haibt hamilton haslett hawking heisenberg hellman hermann herschel hertz heyrovsky "
    "hodgkin hofstadter hoover hopper hugle hypatia jackson jang jemison jennings jepsen "
    "johnson joliot jones kalam kapitsa kare keldysh keller kepler khayyam khorana kilby "
    "kirch knuth kowalevski lalande lamarr lamport leakey leavitt lederberg lehmann lewin "
    "lichterman liskov lovelace lumiere mahavira margulis matsumoto maxwell mayer mccarthy "
    "mcclintock mclaren mclean mcnulty meitner mendel mendeleev meninsky merkle mestorf "
    "mirzakhani montalcini moore morse moser murdock napier nash neumann newton nightingale "
    "nobel noether northcutt noyce panini pare pascal pasteur payne perlman pike poincare "
    "poitras proskuriakova ptolemy raman ramanujan rhodes ride ritchie robinson roentgen "
    "rosalind rubin saha sammet sanderson satoshi shamir shannon shaw shirley shockley shtern "
    "sinoussi snyder solomon spence stonebraker sutherland swanson swartz swirles taussig "
    "tesla tharp thompson torvalds tu turing varahamihira vaughan villani visvesvaraya "
    "volhard wescoff wilbur wiles williams williamson wilson wing wozniak wright wu yalow "
    "yonath zhukovsky"
)
_ADJECTIVES = _ADJECTIVE_WORDS.split()
_NOUNS = _NOUN_WORDS.split()
# Not the secrets module: it costs an OpenSSL import on the run hot path.
_rng = random.SystemRandom()


def random_name(taken: Any) -> str:
    """A free adjective_noun name; ``taken(name) -> bool`` says whether one is in use."""
    for attempt in range(50):
        name = f"{_rng.choice(_ADJECTIVES)}_{_rng.choice(_NOUNS)}"
        if attempt >= 10:
            name += str(_rng.randrange(100))
        if not taken(name):
            return name
    return f"lamina_{os.urandom(6).hex()}"
