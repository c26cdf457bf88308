"""Progress reporting for pull and push, without any UI dependency.

Contract: pull/push emit ``ProgressEvent``s to a ``ProgressSink`` (anything with an
``event(ev)`` method). Events come from worker threads, so sinks must be
thread-safe; they must also be cheap (``advance`` fires about once per MiB).

Per blob (``digest``, ``size``) the sequence is ``started`` -> ``advance``* ->
``verifying`` -> (``extracting`` -> ``extracted``)? -> ``done``; or a single
``exists`` (already there: local store on pull, registry on push) or ``mounted``
(cross-repository mount on push). ``resolved`` and ``finished`` frame the whole
operation (``message`` names the reference / final digest); ``failed`` (``message``
is the error line) ends one that raised, so a live display can stop cleanly.

``PlainProgress`` writes one line per event (no ``advance``) for logs and
non-terminals; ``RichProgress`` draws per-layer bars and imports rich lazily.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TextIO

EventKind = Literal[
    "resolved",
    "started",
    "advance",
    "verifying",
    "extracting",
    "extracted",
    "done",
    "exists",
    "mounted",
    "finished",
    "failed",
]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    kind: EventKind
    digest: str = ""
    size: int = 0  # total size of the blob, when known
    advance: int = 0  # bytes moved since the last "advance" (may be negative on restart)
    # "started": the verb ("downloading", "uploading"); "mounted": the source repository;
    # "resolved"/"finished": a whole line for the user.
    message: str = ""
    what: str = "layer"  # layer | config | manifest | index


class ProgressSink(Protocol):
    def event(self, ev: ProgressEvent) -> None: ...


class NullProgress:
    def event(self, ev: ProgressEvent) -> None:
        pass


def short(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}GB"


_PLAIN_TEXT = {
    "started": "{what} {d}: downloading {size}",
    "verifying": "{what} {d}: verifying checksum",
    "extracting": "{what} {d}: extracting",
    "extracted": "{what} {d}: extracted",
    "done": "{what} {d}: done",
    "exists": "{what} {d}: already exists",
    "mounted": "{what} {d}: mounted from {msg}",
}


class PlainProgress:
    """One line per blob event to a text stream (default stderr)."""

    def __init__(self, stream: TextIO | None = None, *, verb: str = "downloading") -> None:
        self.stream = stream or sys.stderr
        self.verb = verb
        self._lock = threading.Lock()

    def event(self, ev: ProgressEvent) -> None:
        if ev.kind in ("advance", "failed"):  # the caller prints the error itself
            return
        if ev.kind in ("resolved", "finished"):
            line = ev.message
        else:
            template = _PLAIN_TEXT[ev.kind]
            if ev.kind == "started":
                template = template.replace("downloading", ev.message or self.verb)
            line = template.format(
                what=ev.what, d=short(ev.digest), size=human_size(ev.size), msg=ev.message
            )
        if not line:
            return
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class RichProgress:
    """Per-blob bars (bytes, speed, then verifying / extracting / done) with rich, on
    stderr by default. The live display starts with the first blob event and stops at
    ``finished`` or ``failed`` (or when used as a context manager, at its end)."""

    def __init__(self, console: Any = None, *, verb: str = "Downloading") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.verb = verb
        self._progress = Progress(
            TextColumn("{task.fields[name]}"),
            TextColumn("{task.fields[status]:<12}"),
            BarColumn(bar_width=30),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._live = False

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self._live:
            self._progress.stop()
            self._live = False

    def _task(self, ev: ProgressEvent) -> Any:
        if not self._live:
            self._progress.start()
            self._live = True
        task = self._tasks.get(ev.digest)
        if task is None:
            task = self._progress.add_task(
                "", total=ev.size or None, name=short(ev.digest), status="waiting"
            )
            self._tasks[ev.digest] = task
        return task

    def event(self, ev: ProgressEvent) -> None:
        p = self._progress
        with self._lock:
            if ev.kind in ("resolved", "finished", "failed"):
                if ev.kind != "resolved":
                    self._stop()
                if ev.message and ev.kind != "failed":  # the caller reports failures
                    p.console.print(ev.message)
                return
            task = self._task(ev)
            if ev.kind == "started":
                verb = ev.message.capitalize() if ev.message else self.verb
                p.update(task, status=verb, total=ev.size or None)
            elif ev.kind == "advance":
                p.advance(task, ev.advance)
            elif ev.kind == "verifying":
                p.update(task, status="Verifying")
            elif ev.kind == "extracting":
                p.update(task, status="Extracting")
            elif ev.kind == "extracted":
                p.update(task, status="Extracted")
            elif ev.kind == "done":
                if ev.size:
                    p.update(task, status="Done", total=ev.size, completed=ev.size)
                else:
                    p.update(task, status="Done")
            elif ev.kind == "exists":
                p.update(task, status="Exists", total=ev.size or 1, completed=ev.size or 1)
            elif ev.kind == "mounted":
                p.update(task, status="Mounted", total=ev.size or 1, completed=ev.size or 1)
