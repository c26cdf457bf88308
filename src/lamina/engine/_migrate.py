"""The micro-VM containers of a root made before the engine, moved into its store.

Before the engine, VM containers were rows of ``<root>/vms/vms.db`` (their own name
space, cross-checked by the CLI). On the first open of such a root, ``import_vms``
runs inside the container store's upgrade transaction (``_store``): every VM row
becomes a record of isolation ``vm`` — created, running, paused and stopped ones;
the ``--rm`` ones that ended and waited as tombstones become tombstones of the store.
Then ``retire`` renames ``vms.db`` (with its journal files) to ``vms.db.migrated``:
the store never reads it again.

A running VM keeps its supervisor: it goes on answering on ``vms/<id>/ctl.sock``
(exec, signals, attach) and writes its exit into the retired database when its
workload ends; the VM backend reads that one row once for that container (the
record's task says ``legacy``).

Safe against two processes opening the root at once (the upgrade is one ``BEGIN
IMMEDIATE`` transaction: the second sees it done) and against SIGKILL at any point:
killed before the commit, nothing happened; after it, the next open only finishes
``retire``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lamina._hooks import stop_point
from lamina.runtime._types import Status

VMS_DB = "vms.db"
RETIRED = "vms.db.migrated"
_STATUSES = {"created": Status.CREATED, "running": Status.RUNNING, "paused": Status.PAUSED,
             "exited": Status.EXITED, "failed": Status.FAILED}  # fmt: skip
_TASK_KEYS = ("uid", "gid", "groups", "vcpus", "memory_mib", "arch", "accel", "mac", "base",
              "shares", "tmpfs", "published")  # fmt: skip


def import_vms(
    db: sqlite3.Connection,
    vms_dir: Path,
    *,
    image_digest: Callable[[str], str],
    report: Callable[[str], None],
) -> list[str]:
    """Insert every container of ``vms_dir/vms.db`` into the store (``db``, in its
    upgrade transaction). ``image_digest(image_id)``: the digest of the image record a
    container holds. Returns the IDs of the ``--rm`` containers that had ended (their
    directories go with ``retire``)."""
    path = vms_dir / VMS_DB
    if not path.exists():
        return []
    src = sqlite3.connect(str(path), timeout=30)
    try:
        src.row_factory = sqlite3.Row
        rows = list(src.execute("SELECT * FROM vms ORDER BY created"))
    except sqlite3.OperationalError:  # a database without the table: nothing was made
        rows = []
    finally:
        src.close()
    ended: list[str] = []
    for row in rows:
        if row["status"] == "removed":
            db.execute(
                "INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?, 0, ?, ?, ?)",
                (row["id"], row["exit_code"], _reason(row), row["error"], row["finished_at"],
                 time.time()),
            )  # fmt: skip
            ended.append(row["id"])
            continue
        values = _record_values(row, image_digest)
        values["name"] = _free_name(db, values["name"], row["id"], report)
        cols = ",".join(values)
        db.execute(
            f"INSERT OR IGNORE INTO containers ({cols}) VALUES ({','.join('?' * len(values))})",
            tuple(values.values()),
        )
        stop_point("migrate:imported")
    return ended


def _record_values(row: sqlite3.Row, image_digest: Callable[[str], str]) -> dict[str, Any]:
    from lamina.runtime.common import process_start_time

    config = json.loads(row["config"])
    process = json.loads(row["process"])
    config["isolation"] = "vm"
    config["isolation_reason"] = row["reason"] or "--isolation vm"
    status = _STATUSES.get(row["status"], Status.EXITED)
    shares = process.get("shares") or []
    active = status in (Status.RUNNING, Status.PAUSED)
    task = {k: process[k] for k in _TASK_KEYS if k in process}
    task["legacy"] = True  # its supervisor, if it runs, writes its exit into the old database
    pid = int(row["pid"] or 0)
    started = process_start_time(pid) if active and _supervisor(pid, row["id"]) else 0
    image_id = str(process.get("image_id") or config.get("image") or "")
    extra = {
        "image_id": image_id,
        "stop_signal": "",  # the image's was copied into the config's
        "volumes": {s["target"]: s["volume"] for s in shares if "volume" in s},
        "anonymous_volumes": [s["volume"] for s in shares if s.get("anonymous")],
        "process": {
            "args": process.get("argv") or [],
            "env": process.get("env") or [],
            "cwd": process.get("cwd") or "/",
            "user": config.get("user") or "",
            "hostname": process.get("hostname") or "",
        },
    }
    finished = row["exit_code"] is not None and not active
    return {
        "id": row["id"],
        "name": row["name"],
        "created": row["created"],
        "image_digest": image_digest(image_id),
        "config": json.dumps(config, separators=(",", ":")),
        "isolation": "vm",
        "extra": json.dumps(extra, separators=(",", ":")),
        "task": json.dumps(task, separators=(",", ":")),
        "status": status.value,
        "pid": pid if active else 0,
        "pid_start": started,
        "monitor_pid": pid if active else 0,
        "monitor_start": started,
        "exit_code": row["exit_code"] if finished else None,
        "reason": _reason(row) if finished else "",
        "oom_killed": 0,
        "error": row["error"] or "",
        "started_at": row["started_at"],
        "finished_at": row["finished_at"] if finished else None,
        "exits": 1 if finished else 0,
    }


def _reason(row: sqlite3.Row) -> str:
    if row["status"] == "failed" or (row["error"] and row["exit_code"] in (125, 126, 127)):
        return "runtime_error"
    return "signal" if row["signaled"] else "exited"


def _supervisor(pid: int, cid: str) -> bool:
    """Whether ``pid`` is the VM supervisor of container ``cid``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"lamina.vm._backend" in argv and cid.encode() in argv


def _free_name(db: sqlite3.Connection, name: str, cid: str, report: Callable[[str], None]) -> str:
    """``name``, or another when a process container has it already (the CLI that made
    them checked names across both databases, but not on rename)."""
    taken = db.execute("SELECT 1 FROM containers WHERE name=? AND id!=?", (name, cid)).fetchone()
    if taken is None:
        return name
    new = f"{name}-vm-{cid[:8]}"
    report(f"container {cid[:12]}: its name {name!r} is a process container's too; now {new!r}")
    return new


def retire(vms_dir: Path, ended: list[str] | None = None) -> None:
    """Rename ``vms.db`` (and its WAL and shared-memory files, with which a supervisor
    that still runs writes on) out of the way; remove the directories of ended ``--rm``
    containers. Idempotent: a second process doing the same finds nothing to do."""
    path = vms_dir / VMS_DB
    for suffix in ("-shm", "-wal", ""):  # the database last: while it is there, retire again
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{vms_dir / RETIRED}{suffix}")
    for cid in ended or []:
        shutil.rmtree(vms_dir / cid, ignore_errors=True)
