"""The image store: names -> image records, in SQLite (WAL), over the content store.

An *image* is a record keyed by the digest of its target (a manifest or an index)
with the facts a listing needs (config digest, platform, sizes, created). *Names*
point at images: tags (``docker.io/library/busybox:latest``) and digest names
(``docker.io/library/busybox@sha256:...``). An image with no names is *dangling*
and shows as ``<none>``. *Holds* let higher layers (containers, the build cache)
pin an image so that ``rmi`` refuses and ``prune`` skips it, without this layer
knowing what they are.

Blobs and snapshots are never reference-counted by hand: the garbage collector
(``_gc``) marks everything reachable from the remaining images (target, child
manifests, configs, layers, chain IDs) and from the refs of leases in flight
(``lease_refs``: what a pull, build, import... relies on before any record names it),
and sweeps the rest, as containerd's GC does. So a blob shared by two images survives
the removal of one of them, and a layer a pull found present survives an ``rmi``.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lamina._sqlite import connect, transaction
from lamina.errors import InUse, InvalidReference, NotFound
from lamina.image._content import ContentStore
from lamina.image._reference import Reference, parse_reference

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    digest TEXT PRIMARY KEY,          -- target: manifest or index digest
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,            -- size of the target blob
    manifest_digest TEXT NOT NULL,    -- the platform manifest chosen for this host
    config_digest TEXT NOT NULL,      -- the image ID
    platform TEXT NOT NULL,
    image_size INTEGER NOT NULL,      -- compressed layers + config of manifest_digest
    created TEXT,                     -- from the image config
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,            -- canonical reference, tag or digest form
    digest TEXT NOT NULL REFERENCES images(digest)
);
CREATE INDEX IF NOT EXISTS names_digest ON names(digest);
CREATE TABLE IF NOT EXISTS holds (
    holder TEXT NOT NULL,             -- e.g. "container:<id>"
    digest TEXT NOT NULL,
    PRIMARY KEY (holder, digest)
);
CREATE TABLE IF NOT EXISTS lease_refs (
    lease TEXT NOT NULL,              -- a lamina._leases lease id: work in flight
    kind TEXT NOT NULL,               -- blob | snapshot | image (a target and its closure)
    ref TEXT NOT NULL,                -- digest, chain ID, or image target digest
    PRIMARY KEY (lease, kind, ref)
);
"""

# Kinds of lease refs (what a lease protects from the garbage collector).
BLOB, SNAPSHOT, IMAGE = "blob", "snapshot", "image"


@dataclass(frozen=True)
class GcRoots:
    """What the garbage collector starts from, read in one transaction."""

    images: builtins.list[str]  # target digests of every record, and of every hold
    leased: builtins.list[tuple[str, str, str]]  # (lease id, kind, ref)


@dataclass
class ImageRecord:
    digest: str
    media_type: str
    size: int
    manifest_digest: str
    config_digest: str
    platform: str
    image_size: int
    created: str | None
    added: float
    names: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.config_digest

    @property
    def tags(self) -> list[str]:
        return [n for n in self.names if "@" not in n]

    @property
    def repo_digests(self) -> list[str]:
        return [n for n in self.names if "@" in n]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["id"] = self.id
        d["tags"] = self.tags
        d["repo_digests"] = self.repo_digests
        return d


class ImageStore:
    def __init__(self, db_path: Path, content: ContentStore) -> None:
        self.content = content
        self._db = connect(db_path, _SCHEMA)
        self._db.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db)

    # -- writing
    def put(
        self,
        record: ImageRecord,
        names: Sequence[str | Reference] = (),
        *,
        holder: str | None = None,
    ) -> ImageRecord:
        """Insert or refresh an image record and point ``names`` at it. A name moving
        from another image leaves that image dangling (as ``docker pull`` does).
        ``holder`` holds the record in the same transaction (no prune in between)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(digest) DO UPDATE SET "
                "media_type=excluded.media_type, size=excluded.size, "
                "manifest_digest=excluded.manifest_digest, config_digest=excluded.config_digest, "
                "platform=excluded.platform, image_size=excluded.image_size, "
                "created=excluded.created",
                (
                    record.digest,
                    record.media_type,
                    record.size,
                    record.manifest_digest,
                    record.config_digest,
                    record.platform,
                    record.image_size,
                    record.created,
                    record.added or time.time(),
                ),
            )
            for name in names:
                # Canonical form, so that "busybox" and docker.io/library/busybox:latest
                # are one name (lookups parse what the user typed the same way).
                canonical = str(parse_reference(name) if isinstance(name, str) else name)
                db.execute(
                    "INSERT INTO names VALUES (?,?) ON CONFLICT(name) DO UPDATE SET "
                    "digest=excluded.digest",
                    (canonical, record.digest),
                )
            if holder is not None:
                db.execute("INSERT OR IGNORE INTO holds VALUES (?,?)", (holder, record.digest))
        return self.get_by_digest(record.digest)

    def tag(self, source: str, target: str) -> ImageRecord:
        image = self.resolve(source)
        ref = parse_reference(target)
        if ref.digest:
            raise InvalidReference(f"cannot tag with a digest reference: {target}")
        return self.put(image, [str(ref)])

    def untag(self, name: str) -> ImageRecord:
        """Remove one name; returns the image it pointed at."""
        canonical = str(parse_reference(name))
        image = self._by_name(canonical)
        if image is None:
            raise NotFound(f"no such image name: {name}")
        self._db.execute("DELETE FROM names WHERE name=?", (canonical,))
        return image

    def delete(self, digest: str) -> None:
        """Delete an image record and all its names (no GC: the caller collects)."""
        self.delete_records([digest])

    def delete_records(self, digests: Sequence[str]) -> builtins.list[str]:
        """Delete these records and their names, all or none (InUse while any is
        held); returns the names removed."""
        with self._tx() as db:
            for digest in digests:
                held = db.execute("SELECT holder FROM holds WHERE digest=?", (digest,)).fetchone()
                if held:
                    raise InUse(f"image {digest} is in use by {held[0]}")
            names: builtins.list[str] = []
            for digest in digests:
                rows = db.execute("SELECT name FROM names WHERE digest=? ORDER BY name", (digest,))
                names.extend(r[0] for r in rows)
                db.execute("DELETE FROM names WHERE digest=?", (digest,))
                db.execute("DELETE FROM images WHERE digest=?", (digest,))
        return names

    def delete_if_unused(self, digest: str) -> bool:
        """Delete the record if no name points at it and nothing holds it (checked in
        the same transaction); True when it went."""
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM names WHERE digest=? UNION ALL SELECT 1 FROM holds WHERE digest=?",
                (digest, digest),
            ).fetchone():
                return False
            return db.execute("DELETE FROM images WHERE digest=?", (digest,)).rowcount > 0

    def hold(self, holder: str, digest: str) -> None:
        """Pin the record ``digest`` for ``holder``; NotFound when it is gone (checked in
        the same transaction as the hold, so a racing rmi either sees the hold and
        refuses, or has removed the record and the hold fails)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM images WHERE digest=?", (digest,)).fetchone() is None:
                raise NotFound(f"image {digest} not found")
            db.execute("INSERT OR IGNORE INTO holds VALUES (?,?)", (holder, digest))

    def release(self, holder: str) -> None:
        self._db.execute("DELETE FROM holds WHERE holder=?", (holder,))

    def holders(self, digest: str) -> builtins.list[str]:
        rows = self._db.execute("SELECT holder FROM holds WHERE digest=?", (digest,))
        return [r[0] for r in rows]

    # -- reading
    def _row_to_record(self, row: tuple[object, ...]) -> ImageRecord:
        rec = ImageRecord(*row)  # type: ignore[arg-type]
        rec.names = [
            r[0]
            for r in self._db.execute(
                "SELECT name FROM names WHERE digest=? ORDER BY name", (rec.digest,)
            )
        ]
        return rec

    def exists(self, digest: str) -> bool:
        """Whether a record with this target digest exists."""
        row = self._db.execute("SELECT 1 FROM images WHERE digest=?", (digest,)).fetchone()
        return row is not None

    def get_by_digest(self, digest: str) -> ImageRecord:
        row = self._db.execute("SELECT * FROM images WHERE digest=?", (digest,)).fetchone()
        if row is None:
            raise NotFound(f"image {digest} not found")
        return self._row_to_record(row)

    def _by_name(self, canonical: str) -> ImageRecord | None:
        row = self._db.execute("SELECT digest FROM names WHERE name=?", (canonical,)).fetchone()
        return self.get_by_digest(row[0]) if row else None

    def list(self) -> builtins.list[ImageRecord]:
        rows = self._db.execute("SELECT * FROM images ORDER BY added DESC").fetchall()
        return [self._row_to_record(r) for r in rows]

    def with_id(self, image_id: str) -> builtins.list[ImageRecord]:
        """Every record whose image ID (config digest) is ``image_id``."""
        rows = self._db.execute("SELECT * FROM images WHERE config_digest=?", (image_id,))
        return [self._row_to_record(r) for r in rows.fetchall()]

    def lookup(self, name: str) -> ImageRecord | None:
        """Find an image by reference only (no ID prefixes); None when absent."""
        ref = parse_reference(name)
        if ref.digest:
            row = self._db.execute(
                "SELECT * FROM images WHERE digest=? OR manifest_digest=?",
                (ref.digest, ref.digest),
            ).fetchone()
            return self._row_to_record(row) if row else None
        return self._by_name(str(ref))

    def resolve(self, name_or_id: str) -> ImageRecord:
        """Resolve what a user typed: a reference, a full or short image ID, or a digest."""
        s = name_or_id.strip()
        hexpart = s.removeprefix("sha256:")
        if 3 <= len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart):
            rows = self._db.execute(
                "SELECT * FROM images WHERE config_digest LIKE ? OR digest LIKE ?",
                (f"sha256:{hexpart}%", f"sha256:{hexpart}%"),
            ).fetchall()
            ids = {r[4] for r in rows}
            if len(ids) == 1:
                return self._row_to_record(rows[0])
            if len(ids) > 1:
                raise InvalidReference(f"short image ID {s!r} is ambiguous")
            if len(hexpart) == 64:
                raise NotFound(f"no such image: {s}")
        try:
            found = self.lookup(s)
        except InvalidReference:
            if 3 <= len(hexpart) <= 64 and all(c in "0123456789abcdef" for c in hexpart):
                raise NotFound(f"no such image: {s}") from None
            raise
        if found is None:
            raise NotFound(f"no such image: {s}")
        return found

    # -- what protects content from the garbage collector
    def add_lease_refs(self, lease: str, refs: Sequence[tuple[str, str]]) -> None:
        """Record that the work of ``lease`` relies on ``refs`` ((kind, ref) pairs)."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO lease_refs VALUES (?,?,?)",
                [(lease, kind, ref) for kind, ref in refs],
            )

    def drop_lease_refs(
        self, leases: Sequence[str], refs: Sequence[tuple[str, str]] | None = None
    ) -> None:
        """Forget what ``leases`` protect: everything, or only ``refs``."""
        with self._tx() as db:
            for lease in leases:
                if refs is None:
                    db.execute("DELETE FROM lease_refs WHERE lease=?", (lease,))
                else:
                    db.executemany(
                        "DELETE FROM lease_refs WHERE lease=? AND kind=? AND ref=?",
                        [(lease, kind, ref) for kind, ref in refs],
                    )

    def gc_roots(self) -> GcRoots:
        """Every record's (and hold's) target and every lease ref, as of one moment: a
        record put and its lease's refs dropped just after cannot both be missed."""
        self._db.execute("BEGIN")
        try:
            # A hold outlives its record only in a database written before hold() checked
            # the record; what the holder runs on stays all the same.
            images = [
                r[0]
                for r in self._db.execute(
                    "SELECT digest FROM images UNION SELECT digest FROM holds"
                )
            ]
            leased = [
                (str(r[0]), str(r[1]), str(r[2]))
                for r in self._db.execute("SELECT lease, kind, ref FROM lease_refs")
            ]
        finally:
            self._db.execute("COMMIT")
        return GcRoots(images, leased)

    def dangling(self) -> builtins.list[ImageRecord]:
        rows = self._db.execute(
            "SELECT * FROM images WHERE digest NOT IN (SELECT digest FROM names)"
        ).fetchall()
        return [self._row_to_record(r) for r in rows]
