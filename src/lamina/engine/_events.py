"""The events journal: what happened to containers, images, volumes and networks, as
Docker reports it, persisted under the root and followed live across processes.

Format: ``<root>/events/events.log``, one event a line, each line Docker's JSON of an
event (``status``, ``id``, ``from``, ``Type``, ``Action``, ``Actor{ID, Attributes}``,
``scope``, ``time``, ``timeNano``, in that order: ``timeNano`` last, so a reader can
take an event's time from the end of its line without parsing it).

Bound: when the live file has passed ``MAX_FILE_BYTES`` (8 MiB) it is renamed to
``events.log.1`` (the older file it replaces is dropped) and the next event starts a
new live file. So the journal keeps between 8 and 16 MiB of events: 25,000 to 50,000
container events of ~340 bytes (Docker keeps 1,000, in memory).

Writers (``emit``, many processes at once): one ``write(2)`` of the whole line to the
live file opened with O_APPEND, under a shared ``flock`` of ``journal.lock``; no
fsync (an event is not worth a disk flush on ``run``'s path): ~25 us an event.
Appends to a local file are atomic (the kernel holds the inode's lock for the whole
write), so lines never interleave, however long. A writer killed mid-write (SIGKILL
cuts a write of more than a page) or refused by a full disk leaves a torn line
without its newline: the next writer, finding the file not ending in a newline,
starts its line with one, so the torn piece becomes a line of its own that readers
skip (it is not JSON), and no later event is glued to it. (A writer that looks while
another's long write is in flight adds a needless newline: an empty line, skipped.)
A writer that finds the live file full rotates it first, holding the lock
exclusively: the others finish their one write, and the rename is re-checked, so two
writers never rotate twice (which would drop the full file). No write lands in a
file after its rename, so a reader that moved on to the new file has missed nothing;
a file ends past the bound by at most a line per writer of that moment. ``emit``
never raises: an event the host refuses to store is dropped with one warning line
(the first such in a process), and the operation that reported it goes on.

Readers (``read``, ``follow``, ``Follower``) take no lock. A line is read once it
ends with a newline: a reader keeps a partial last line (a write in flight, or a
torn one) until it is complete, and skips lines that are not an event. A follower
looks at what ``events.log`` names, then reads the file it has open to its end; when
the name had moved on (a rotation, which waited for the file's writers) that read
was the file's last, and it goes on with ``events.log.1`` if that is a file it has
not read (two rotations between two looks), then the new live file from its start.
A follower more than two rotations behind (16 MiB of events between two looks)
misses the files dropped meanwhile. It sleeps in ``select`` on an inotify watch of
the directory (ctypes: no dependency): an event reaches a follower in another
process ~0.3 ms after it was stamped, and an idle follower costs nothing; where
inotify is unavailable it polls every 50 ms.

Filters are Docker's (``daemon/events/filter.go``): ``type``, ``event``, ``container``,
``image``, ``label``, ``network``, ``volume``, ``scope``; several values of one key
match any of them (``label``: all of them, as Docker's MatchKVList), keys must all
match. ``container``, ``network`` and ``volume`` take an ID or name or a prefix of one;
``image`` an image ID, a name as given, or a name without its tag.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina._fsutil import naming
from lamina._hooks import stop_point
from lamina.errors import LaminaError

MAX_FILE_BYTES = 8 * 1024 * 1024  # the live file is rotated once it has passed this

_DIR = "events"
_LIVE = "events.log"
_OLD = "events.log.1"
_LOCK = "journal.lock"

# Docker's object types (the engine API's EventMessage.Type), and lamina's deployments.
TYPES = (
    "builder", "config", "container", "daemon", "deployment", "image", "network", "node",
    "plugin", "secret", "service", "volume",
)  # fmt: skip
SCOPES = ("local", "swarm")
FILTER_KEYS = ("type", "event", "container", "image", "label", "network", "volume", "scope")

_READ_CHUNK = 1 << 20
_POLL_SECONDS = 0.05  # only without inotify
_warned = False


class InvalidFilter(LaminaError, ValueError):
    """A ``--filter`` events cannot take: one line."""

    exit_code = 125


@dataclass(frozen=True)
class Event:
    """One event, as Docker's ``events.Message`` has it."""

    type: str
    action: str
    actor_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    scope: str = "local"
    time_nano: int = 0

    @property
    def time(self) -> int:
        """Seconds since the epoch."""
        return self.time_nano // 1_000_000_000

    def message(self) -> dict[str, Any]:
        """Docker's JSON of this event (the engine API's EventMessage, with the legacy
        ``status``/``id``/``from`` Docker still sends for containers and images)."""
        out: dict[str, Any] = {}
        if self.type in ("container", "image"):
            out["status"] = self.action
            out["id"] = self.actor_id
            if self.type == "container" and self.attributes.get("image"):
                out["from"] = self.attributes["image"]
        out["Type"] = self.type
        out["Action"] = self.action
        out["Actor"] = {"ID": self.actor_id, "Attributes": dict(sorted(self.attributes.items()))}
        out["scope"] = self.scope
        out["time"] = self.time
        out["timeNano"] = self.time_nano
        return out


def journal_dir(root: Path) -> Path:
    return Path(root) / _DIR


# -- writing ---------------------------------------------------------------------------


def emit(
    root: Path,
    type: str,
    action: str,
    actor_id: str,
    attributes: Mapping[str, str],
    *,
    scope: str = "local",
) -> None:
    """Append one event to the journal of ``root``, stamped now. Never raises: an
    event that cannot be stored is dropped with a warning (the first in a process)."""
    try:
        event = Event(
            str(type),
            str(action),
            str(actor_id),
            {str(k): str(v) for k, v in attributes.items()},
            str(scope),
            time.time_ns(),
        )
        _append(journal_dir(root), json.dumps(event.message(), separators=(",", ":")))
    except Exception as e:  # an event must never fail the operation that reports it
        _warn(e)


def _append(directory: Path, line: str) -> None:
    data = line.encode() + b"\n"
    live = directory / _LIVE
    lock = _open_lock(directory)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)
        fd = _open_live(live)
        try:
            size = os.fstat(fd).st_size
            if size >= MAX_FILE_BYTES:
                os.close(fd)
                fd = -1
                _rotate(directory, lock)
                fd = _open_live(live)
                size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a torn line before: end it, so this one stands alone
            stop_point("events:append")
            with naming(live):  # a full disk's error names the file
                written = os.write(fd, data)  # one write: appends of whole lines do not mix
        finally:
            if fd >= 0:
                os.close(fd)
        if written < len(data):  # the host took only part of it: torn, readers skip it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(live))
    finally:
        os.close(lock)


def _open_live(live: Path) -> int:
    return os.open(live, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _open_lock(directory: Path) -> int:
    path = directory / _LOCK
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _rotate(directory: Path, lock: int) -> None:
    """The full live file becomes the older one. The exclusive lock waits for the
    writers of the moment (a few microseconds each), so no line is written to the
    file after its rename; then this writer goes back to sharing it."""
    fcntl.flock(lock, fcntl.LOCK_UN)  # as converting would: two rotating never deadlock
    stop_point("events:rotate")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        live = directory / _LIVE
        with contextlib.suppress(FileNotFoundError):
            if os.stat(live).st_size >= MAX_FILE_BYTES:  # not rotated meanwhile
                os.rename(live, directory / _OLD)
    finally:
        fcntl.flock(lock, fcntl.LOCK_SH)


def _warn(e: Exception) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    from lamina.errors import describe_os_error

    why = describe_os_error(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
    with contextlib.suppress(Exception):
        print(f"lamina: warning: event not recorded: {' '.join(why.split())}", file=sys.stderr)


# -- filters ---------------------------------------------------------------------------


class EventFilter:
    """Docker's event filters: ``values`` maps a key of ``FILTER_KEYS`` to the values
    given for it (InvalidFilter for an unknown key, type or scope)."""

    def __init__(self, values: Mapping[str, Iterable[str]] | None = None) -> None:
        self.values: dict[str, frozenset[str]] = {}
        for key, given in (values or {}).items():
            if key not in FILTER_KEYS:
                raise InvalidFilter(f"invalid filter {key!r} (supported: {', '.join(FILTER_KEYS)})")
            vals = frozenset(given)
            for value, allowed in ((v, _ALLOWED.get(key)) for v in vals):
                if allowed is not None and value not in allowed:
                    raise InvalidFilter(
                        f"invalid filter '{key}={value}' ({key} is one of {', '.join(allowed)})"
                    )
            if vals:
                self.values[key] = vals

    @classmethod
    def parse(cls, specs: Iterable[str]) -> EventFilter:
        """From ``KEY=VALUE`` strings (``--filter``), as Docker's CLI reads them."""
        values: dict[str, set[str]] = {}
        for spec in specs:
            key, sep, value = spec.partition("=")
            if not sep:
                raise InvalidFilter(f"bad filter {spec!r}: expected KEY=VALUE")
            values.setdefault(key.strip().lower(), set()).add(value.strip())
        return cls(values)

    def __bool__(self) -> bool:
        return bool(self.values)

    def matches(self, e: Event) -> bool:
        v = self.values
        if not v:
            return True
        name = e.attributes.get("name", "")
        return (
            _match_action(v.get("event"), e.action)
            and _exact(v.get("type"), e.type)
            and _exact(v.get("scope"), e.scope)
            and all(_prefix(v.get(k), e.actor_id, name) for k in ("container", "network", "volume"))
            and _match_image(v.get("image"), e)
            and _match_labels(v.get("label"), e.attributes)
        )


_ALLOWED = {"type": TYPES, "scope": SCOPES}
# lamina's own container actions, which Docker never sends (its API's /events leaves
# them out): "health_check: failing|passing" (engine/_health.py)
LAMINA_ACTIONS = frozenset({"health_check"})
# Docker's exec and health actions carry a detail ("exec_start: sh -c true"): given
# without one, these match by prefix (and lamina's health_check).
_PREFIX_ACTIONS = frozenset({"health_status", "exec_create", "exec_start", *LAMINA_ACTIONS})


LAMINA_TYPES = frozenset({"deployment"})


def docker_sends(e: Event) -> bool:
    """Whether Docker has such an event (lamina's own types and actions: no)."""
    return e.type not in LAMINA_TYPES and e.action.split(":", 1)[0] not in LAMINA_ACTIONS


def _exact(values: frozenset[str] | None, value: str) -> bool:
    return values is None or value in values


def _match_action(values: frozenset[str] | None, action: str) -> bool:
    if values is None or action in values:
        return True
    return bool(values & _PREFIX_ACTIONS) and any(action.startswith(v) for v in values)


def _prefix(values: frozenset[str] | None, actor_id: str, name: str) -> bool:
    """Docker's fuzzyMatchName: the ID or the name, whole or a prefix of it."""
    if values is None:
        return True
    return any(actor_id.startswith(v) or name.startswith(v) for v in values)


def _match_image(values: frozenset[str] | None, e: Event) -> bool:
    if values is None:
        return True
    name = e.attributes.get("name" if e.type == "image" else "image", "")
    if e.actor_id in values or name in values:
        return True
    return _without_tag(e.actor_id) in values or _without_tag(name) in values


def _without_tag(image: str) -> str:
    """Docker's stripTag: the familiar name without tag or digest (as given when it
    is no reference)."""
    from lamina.image._reference import parse_reference

    try:
        return parse_reference(image).familiar_name()
    except LaminaError:
        return image


def _match_labels(values: frozenset[str] | None, attributes: Mapping[str, str]) -> bool:
    """Docker's MatchKVList: every ``key`` or ``key=value`` given is in the attributes."""
    if values is None:
        return True
    for spec in values:
        key, sep, value = spec.partition("=")
        if key not in attributes or (sep and attributes[key] != value):
            return False
    return True


# -- reading ---------------------------------------------------------------------------


def read(
    root: Path,
    since_ns: int | None = None,
    until_ns: int | None = None,
    filters: EventFilter | None = None,
) -> Iterator[Event]:
    """The journal's events (both files, oldest first) whose time is within
    ``[since_ns, until_ns]`` (Unix nanoseconds; None: unbounded) and that match."""
    reader = Follower(root, from_start=True, since_ns=since_ns, until_ns=until_ns,
                      filters=filters, watch=False)  # fmt: skip
    try:
        yield from reader.events()
    finally:
        reader.close()


def follow(
    root: Path,
    since_ns: int | None = None,
    until_ns: int | None = None,
    filters: EventFilter | None = None,
    *,
    idle: Callable[[], None] | None = None,
) -> Iterator[Event]:
    """Events as they are appended, by this process or any other. With ``since_ns``
    the journal's events from then come first (without: only new ones); with
    ``until_ns`` it ends once that time has passed, otherwise never. ``idle`` is
    called whenever it has caught up and is about to sleep (to flush output)."""
    follower = Follower(root, from_start=since_ns is not None, since_ns=since_ns,
                        until_ns=until_ns, filters=filters)  # fmt: skip
    try:
        while True:
            over = until_ns is not None and time.time_ns() > until_ns
            yield from follower.events()
            if over:  # read once more after the end: what was stamped before it is in
                return
            if idle is not None:
                idle()
            if until_ns is None:
                follower.wait(None)
            else:
                follower.wait(max(0.0, (until_ns - time.time_ns()) / 1e9) + 0.001)
    finally:
        follower.close()


Key = tuple[int, int]  # (st_dev, st_ino): a file whatever its name


def _key(path: Path) -> Key | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Follower:
    """An incremental reader of the journal: ``events()`` yields the events (within
    the window, matching the filters) completed since its last call; ``wait`` sleeps
    until the journal may have changed; ``fileno`` is what it sleeps on (for a
    caller's own ``select``), None when it polls. ``from_start``: the journal's events
    first; otherwise only events appended after it was made."""

    def __init__(
        self,
        root: Path,
        *,
        from_start: bool,
        since_ns: int | None = None,
        until_ns: int | None = None,
        filters: EventFilter | None = None,
        watch: bool = True,
    ) -> None:
        self._dir = journal_dir(root)
        self._live = self._dir / _LIVE
        self._since = since_ns
        self._until = until_ns
        self._filters = filters if filters else None
        self._fd = -1
        self._cur: Key | None = None
        self._offset = 0
        self._rest = b""
        # The watch is set before anything is read: nothing appended after the
        # first read can go unnoticed.
        self._watch = _DirWatch.open(self._dir) if watch else None
        if from_start:
            self._open(self._dir / _OLD)
        elif self._open(self._live):
            self._offset = _after_last_line(self._fd)

    def fileno(self) -> int | None:
        return self._watch.fd if self._watch is not None else None

    def close(self) -> None:
        self._close_file()
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def wait(self, timeout: float | None) -> None:
        """Return once the journal may have changed, or after ``timeout`` seconds."""
        if self._watch is not None:
            self._watch.wait(timeout)
        else:
            time.sleep(_POLL_SECONDS if timeout is None else min(timeout, _POLL_SECONDS))

    def events(self) -> Iterator[Event]:
        """Consume it whole: lines of a chunk not taken are not offered again."""
        while True:
            if self._cur is None and not self._open(self._live):
                return
            # Looked at before reading: when the file has been rotated away by now,
            # this read finds all of it (rotation waits for the file's writers).
            rotated = _key(self._live) != self._cur
            yield from self._drain()
            if not rotated:
                return
            done = self._cur
            self._close_file()  # a partial line left in it is a torn one
            old = _key(self._dir / _OLD)
            if old is not None and old not in (done, _key(self._live)):
                self._open(self._dir / _OLD)  # rotated in between: not read yet

    def _open(self, path: Path) -> bool:
        self._close_file()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        self._fd, self._cur, self._offset, self._rest = fd, (st.st_dev, st.st_ino), 0, b""
        return True

    def _close_file(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._cur, self._rest = -1, None, b""

    def _drain(self) -> Iterator[Event]:
        while True:
            data = os.pread(self._fd, _READ_CHUNK, self._offset)
            if not data:
                return
            self._offset += len(data)
            lines = (self._rest + data).split(b"\n")
            self._rest = lines.pop()  # no newline yet: complete it later
            for line in lines:
                event = self._accept(line)
                if event is not None:
                    yield event

    def _accept(self, line: bytes) -> Event | None:
        if not line:
            return None
        if self._since is not None or self._until is not None:
            stamp = _line_time(line)
            if stamp is not None and not self._in_window(stamp):
                return None  # skipped without parsing: --since reads fast
        event = parse_line(line)
        if event is None or not self._in_window(event.time_nano):
            return None
        if self._filters is not None and not self._filters.matches(event):
            return None
        return event

    def _in_window(self, stamp: int) -> bool:
        if self._since is not None and stamp < self._since:
            return False
        return self._until is None or stamp <= self._until


def _after_last_line(fd: int) -> int:
    """The offset just past the last newline of the file (0 if it has none)."""
    end = os.fstat(fd).st_size
    while end > 0:
        start = max(0, end - 4096)
        i = os.pread(fd, end - start, start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0


_TIME_KEY = b'"timeNano":'


def _line_time(line: bytes) -> int | None:
    """``timeNano`` from the end of a line as ``emit`` writes it, None if it is not."""
    i = line.rfind(_TIME_KEY)
    if i < 0 or not line.endswith(b"}"):
        return None
    digits = line[i + len(_TIME_KEY) : -1]
    return int(digits) if digits.isdigit() else None


def parse_line(line: bytes) -> Event | None:
    """The event of one journal line; None for anything else (a torn line)."""
    try:
        msg = json.loads(line)
        actor = msg["Actor"]
        attributes = actor.get("Attributes") or {}
        event = Event(
            msg["Type"], msg["Action"], actor["ID"], attributes, msg.get("scope", "local"),
            msg["timeNano"],
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    ok = all(isinstance(x, str) for x in (event.type, event.action, event.actor_id, event.scope))
    ok = ok and isinstance(event.time_nano, int) and isinstance(attributes, dict)
    if not ok or not all(isinstance(v, str) for v in attributes.values()):
        return None
    return event


# -- waiting ---------------------------------------------------------------------------

_IN_MODIFY = 0x2
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_WATCH_MASK = _IN_MODIFY | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE


class _DirWatch:
    """An inotify watch of the journal's directory, through libc (ctypes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, directory: Path) -> _DirWatch | None:
        """The watch, or None where inotify is unavailable (then callers poll). The
        directory is made if it is missing, so that it can be watched."""
        try:
            import ctypes

            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return None
            if libc.inotify_add_watch(fd, os.fsencode(directory), _WATCH_MASK) < 0:
                os.close(fd)
                return None
        except (OSError, AttributeError):
            return None
        return cls(fd)

    def wait(self, timeout: float | None) -> None:
        import select

        select.select([self.fd], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):  # what happened does not matter: drain it
                pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
