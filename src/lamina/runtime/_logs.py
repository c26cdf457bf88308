"""Container logs: their settings, their files, reading them and rotating them.

Format: conmon's k8s-file, which the VM supervisor writes too. One record a line,
``<RFC3339Nano> <stdout|stderr> <P|F> <bytes>``; ``P`` marks a partial line that the
next record of the same stream continues. Readers join the pieces: an entry is
emitted where its ``F`` record is, with the time of its first piece.

Settings (``log_settings``): ``--log-driver`` json-file, k8s-file (the default) and
local all mean lamina's file log (Docker's formats are not written; the name is
kept for ``inspect``); ``none`` keeps no log. ``--log-opt max-size`` (decimal units,
as Docker's ``10m``) and ``max-file`` (default 1; the local driver's defaults are
20 MiB and 5 files, as Docker's).

Files: ``ctr.log`` is the live file; rotated files are ``ctr.log.1`` (the newest)
to ``ctr.log.<max-file - 1>`` (the oldest), Docker's naming. With max-file 1 nothing
is kept: the live file is cut before a record would take it past max-size, as
Docker's json-file cuts it. For process containers conmon does that itself
(``--log-size-max``; it counts only what it wrote since it started, so a log left by
an earlier run is cut at start when it has reached max-size, and otherwise may grow
to its size then plus max-size).

Rotation that keeps files is one protocol for every writer (``rotate`` does 1 and 2):

1. shift ``ctr.log.k`` to ``ctr.log.k+1``, the oldest dropped;
2. hard-link the live file as ``ctr.log.1``;
3. the writer starts a new live file: it creates ``ctr.log.tmp`` and renames it
   over ``ctr.log``.

From step 2 on, the file being written has two names, so at every moment each byte
is in exactly one file that has a name: nothing is lost or repeated at a boundary,
whenever a reader looks. A rotation cut short after step 2 is finished by the next
one (``rotate`` sees ``.1`` is already the live file and only step 3 remains).

Why not conmon's ``--log-size-max`` for that: conmon 2.1.6 at the limit does step 3
alone (``ctr.log.tmp`` opened with O_TRUNC and renamed over ``ctr.log``), so the old
file's lines are gone: a cut, not a rotation. Keeping them needs something that acts
at every rotation, before the rename, and conmon has no hook for it; doing it lazily
from lamina's commands would lose every file rotated twice between two commands. So
a process container with max-size and max-file 2 or more gets a tiny C helper beside
conmon (``_logrotate``): when the live file reaches max-size it does steps 1 and 2
and asks conmon for step 3 (conmon's log reopen request on its ``ctl`` FIFO is
exactly that). No Python process per container: a static binary, ~0.7 MB resident,
asleep in poll(2) on inotify and conmon's pidfd. A rotated file ends past max-size by
what conmon wrote while the helper reacted (Docker's, by the message that crossed
it); nothing is lost when the helper is slow or gone, the live file only grows. The
VM supervisor writes its log itself and rotates in-process (``RotatingLog``), before
the record that would take the file past max-size.

Reading: ``open_files`` opens every file of the log in one consistent snapshot
(taken again if the live file changed meanwhile; the same file under two names is
read once). ``LogReader`` reads forward across the files and, following, across
rotations (a new file at ``ctr.log``: the old one is read to its end, then the newer
ones). A tail (``-n``) or ``--since`` reads backward from the end in blocks only as
far as needed, then reads forward from there with the same joiner a full read uses
(``_start_for``): the output is exactly the end of the full output, and the time is
proportional to what is shown. The start is moved back over a partial line whose
pieces began earlier: for each stream the last record before the start is found
with a byte search, which goes further back only when a stream was silent there
(about 30 ms through 55 MB).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from lamina.errors import LaminaError
from lamina.runtime._types import ContainerConfig, LogEntry

DEFAULT_DRIVER = "k8s-file"
FILE_DRIVERS = ("k8s-file", "json-file", "local")
# Docker's local driver: 20 MiB files, 5 of them, unless the options say otherwise.
_LOCAL_MAX_SIZE = 20 * 1024 * 1024
_LOCAL_MAX_FILES = 5
# Options Docker's file drivers take that lamina's file log has no use for.
_UNSUPPORTED_OPTS = ("tag", "labels", "labels-regex", "env", "env-regex", "mode", "max-buffer-size")
_SIZE_RE = r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$"
_DECIMAL = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4, "p": 1000**5}

_TAIL_BLOCK = 8 * 1024  # the first backward read of a tail; grows 4x while more is needed
_SEARCH_BLOCK = 1024 * 1024  # the largest read of a search for a stream's last record


# -- settings ------------------------------------------------------------------------


class InvalidLogConfig(LaminaError, ValueError):
    """A log driver or option Docker refuses, or lamina's file log cannot honour."""

    exit_code = 125


@dataclass(frozen=True)
class LogSettings:
    """What a container's log is: its driver, and when it rotates."""

    driver: str = DEFAULT_DRIVER
    max_size: int | None = None  # bytes; None: never rotated
    max_files: int = 1  # files kept in all, the live one included

    @property
    def enabled(self) -> bool:
        return self.driver != "none"

    @property
    def keeps_rotated(self) -> bool:
        """Rotated files are kept (max-file 2 or more), not just the log cut."""
        return self.enabled and self.max_size is not None and self.max_files > 1


def log_settings(driver: str, options: Mapping[str, str]) -> LogSettings:
    """The settings of ``--log-driver`` and ``--log-opt KEY=VALUE``s; InvalidLogConfig
    (one line) for what Docker refuses or lamina's file log cannot do."""
    if driver == "none":
        if options:
            raise InvalidLogConfig("--log-opt is not valid with --log-driver none: there is no log")
        return LogSettings("none")
    if driver not in FILE_DRIVERS:
        raise InvalidLogConfig(
            f"unknown log driver {driver!r}: lamina writes its own file log (json-file, "
            "k8s-file or local) or none"
        )
    for key in options:
        if key in _UNSUPPORTED_OPTS:
            raise InvalidLogConfig(
                f"log opt {key!r} is not supported: lamina's file log takes max-size and max-file"
            )
        if key not in ("max-size", "max-file", "compress"):
            raise InvalidLogConfig(f"unknown log opt {key!r} for the {driver} log driver")
    if options.get("compress", "false").strip().lower() not in ("false", "0", "no"):
        raise InvalidLogConfig("log opt compress is not supported: rotated files stay uncompressed")
    local = driver == "local"
    max_size: int | None = _LOCAL_MAX_SIZE if local else None
    max_files = _LOCAL_MAX_FILES if local else 1
    if "max-size" in options:
        max_size = _parse_size(options["max-size"])
    if "max-file" in options:
        text = options["max-file"].strip()
        if not text.lstrip("-").isdigit():
            raise InvalidLogConfig(f"invalid max-file {options['max-file']!r}: expected a number")
        max_files = int(text)
        if max_files < 1:
            raise InvalidLogConfig("max-file cannot be less than 1")
        if max_size is None:
            raise InvalidLogConfig("max-file needs max-size: without it the log never rotates")
    return LogSettings(driver, max_size, max_files)


def settings_of(config: ContainerConfig) -> LogSettings:
    return log_settings(config.log_driver, config.log_options)


def _parse_size(value: str) -> int:
    """Docker's max-size: a number with an optional decimal unit (``10m``: 10,000,000)."""
    import re

    m = re.match(_SIZE_RE, value.strip().lower())
    if not m:
        raise InvalidLogConfig(f"invalid max-size {value!r}: expected a size like 10m or 500k")
    size = int(float(m.group(1)) * _DECIMAL[m.group(2) or ""])
    if size <= 0:
        raise InvalidLogConfig("max-size must be a positive number")
    return size


# -- records -------------------------------------------------------------------------


def parse_timestamp(text: bytes) -> float:
    """RFC 3339 with nanoseconds (conmon's) to epoch seconds; ValueError if it is not."""
    return datetime.fromisoformat(text.decode()).timestamp()


class _Parser:
    """Records to (time, stream, partial, bytes); one timestamp parsed once for the
    records that share it (conmon stamps every line of one read alike)."""

    def __init__(self) -> None:
        self._raw = b""
        self._ts = 0.0

    def parse(self, line: bytes) -> tuple[float, str, bool, bytes] | None:
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            return None
        raw, stream = parts[0], parts[1]
        if stream == b"stdout":
            name = "stdout"
        elif stream == b"stderr":
            name = "stderr"
        else:
            return None
        if raw != self._raw:
            try:
                self._ts = parse_timestamp(raw)
            except ValueError:
                return None
            self._raw = raw
        msg = parts[3] if len(parts) == 4 else b""
        return self._ts, name, parts[2] == b"P", msg


# -- files ---------------------------------------------------------------------------


@dataclass
class LogFile:
    """One open file of a log, identified by its inode."""

    f: BinaryIO
    key: tuple[int, int]  # (st_dev, st_ino)

    def size(self) -> int:
        return os.fstat(self.f.fileno()).st_size

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.f.fileno(), n, offset)


def _key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def rotated_paths(path: Path) -> list[Path]:
    """The rotated files of the log at ``path``, newest first (``.1``, ``.2``, ...)."""
    prefix = path.name + "."
    found: list[tuple[int, Path]] = []
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    for name in names:
        suffix = name[len(prefix) :] if name.startswith(prefix) else ""
        if suffix.isdigit() and not suffix.startswith("0"):
            found.append((int(suffix), path.parent / name))
    return [p for _, p in sorted(found)]


def open_files(path: Path) -> list[LogFile]:
    """Every file of the log at ``path``, oldest first, open. A snapshot is taken
    again when the live file changed while it was taken (a rotation renames the
    others meanwhile); the same file under two names is opened once."""
    files: list[LogFile] = []
    for _attempt in range(20):
        _close(files)
        files = []
        seen: set[tuple[int, int]] = set()
        live = _key(path)
        for p in [path, *rotated_paths(path)]:  # newest first: names only move older
            try:
                f = open(p, "rb", buffering=0)  # noqa: SIM115 - returned open
            except FileNotFoundError:
                continue
            st = os.fstat(f.fileno())
            key = (st.st_dev, st.st_ino)
            if key in seen:
                f.close()
                continue
            seen.add(key)
            files.append(LogFile(f, key))
        if _key(path) == live and (live is None or (files and files[0].key == live)):
            break
    files.reverse()
    return files


def _close(files: list[LogFile]) -> None:
    for lf in files:
        lf.f.close()


def rotate(path: Path, max_files: int) -> None:
    """Steps 1 and 2 of a rotation (see the module's docstring): afterwards the writer
    renames a new live file over ``path``. Idempotent until that rename: when
    ``.1`` already is the live file (a rotation cut short), nothing moves."""
    if max_files < 2:
        return
    live = _key(path)
    first = path.with_name(f"{path.name}.1")
    if live is None or _key(first) == live:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path.with_name(f"{path.name}.{max_files - 1}"))
    for k in range(max_files - 2, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.rename(path.with_name(f"{path.name}.{k}"), path.with_name(f"{path.name}.{k + 1}"))
    os.link(path, first)


class RotatingLog:
    """An append-only log file that rotates itself at ``max_size``, for writers lamina
    runs (the VM supervisor). A record goes to a new file when the live one has
    reached max-size, so a file ends past it by one record at most, as Docker's do."""

    def __init__(self, path: Path, settings: LogSettings) -> None:
        self.path = path
        self.settings = settings
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, records: list[bytes]) -> None:
        """Append whole records (each a line of the format)."""
        limit = self.settings.max_size
        batch: list[bytes] = []
        for record in records:
            if limit is not None and self._size >= limit:
                self._append(batch)
                self._switch()
                batch = []
            batch.append(record)
            self._size += len(record)
        self._append(batch)

    def _append(self, batch: list[bytes]) -> None:
        view = memoryview(b"".join(batch))
        while view:
            view = view[os.write(self._fd, view) :]

    def _switch(self) -> None:
        rotate(self.path, self.settings.max_files)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.rename(tmp, self.path)
        os.close(self._fd)
        self._fd = fd
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- reading forward -----------------------------------------------------------------


class LogReader:
    """Incremental reader of a container's log, every file of it, oldest first:
    ``read()`` returns the complete entries written since the last call, across
    rotations (partial lines joined; an unterminated last record kept for later).
    With ``pieces``, an unterminated line's pieces (P records) come at once: what an
    attached terminal shows (a shell's prompt never ends its line)."""

    def __init__(self, path: Path, *, pieces: bool = False) -> None:
        self.path = path
        self.pieces = pieces
        self._files: list[LogFile] = []  # the current file first, then newer ones
        self._owned: list[LogFile] = []  # closed by close()
        self._offset = 0  # in the current file
        self._opened = False
        self._rest = b""
        self._partial: dict[str, tuple[float, bytes]] = {}
        self._parser = _Parser()

    def _start(self, files: list[LogFile], at: Pos) -> None:
        """Read ``files`` (oldest first, open: the caller closes them) from ``at``, a
        record's start, on."""
        self._files, self._offset, self._opened = files[at[0] :], at[1], True

    def read(self) -> list[LogEntry]:
        out: list[LogEntry] = []
        if not self._opened:
            self._files = open_files(self.path)
            self._owned = list(self._files)
            self._opened = bool(self._files)
        while self._files:
            cur = self._files[0]
            self._read_to_end(cur, out)
            if len(self._files) > 1:
                self._next_file(out)
                continue
            newer = self._newer_files(cur)
            if not newer:
                break
            self._read_to_end(cur, out)  # what was written before the writer switched
            self._files += newer
            self._owned += newer
        return out

    def _read_to_end(self, lf: LogFile, out: list[LogEntry]) -> None:
        while True:
            data = lf.pread(1 << 20, self._offset)
            if not data:
                return
            self._offset += len(data)
            self._feed(data, out)

    def _next_file(self, out: list[LogEntry]) -> None:
        if self._rest:  # a file that ends mid-record: its rest is a record of its own
            self._feed(b"\n", out)
        self._files.pop(0)
        self._offset = 0

    def _newer_files(self, cur: LogFile) -> list[LogFile]:
        """Files written after ``cur``, once the writer has moved on from it."""
        if _key(self.path) in (None, cur.key):
            return []
        files = open_files(self.path)
        keys = [lf.key for lf in files]
        at = keys.index(cur.key) + 1 if cur.key in keys else 0  # cur dropped: all are newer
        _close(files[:at])
        return files[at:]

    def _feed(self, data: bytes, out: list[LogEntry]) -> None:
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        parse = self._parser.parse
        partial = self._partial
        for line in lines:
            parsed = parse(line)
            if parsed is None:
                continue
            ts, stream, is_partial, msg = parsed
            if is_partial and self.pieces:
                out.append(LogEntry(stream, ts, msg))
            elif is_partial:
                first_ts, buf = partial.get(stream, (ts, b""))
                partial[stream] = (first_ts, buf + msg)
            elif stream in partial:
                first_ts, buf = partial.pop(stream)
                out.append(LogEntry(stream, first_ts, buf + msg + b"\n"))
            else:
                out.append(LogEntry(stream, ts, msg + b"\n"))

    def pending_streams(self) -> set[str]:
        return set(self._partial)

    def flush(self) -> list[LogEntry]:
        """Partial lines still pending (the container stopped mid-line)."""
        out = [LogEntry(s, ts, buf) for s, (ts, buf) in self._partial.items() if buf]
        self._partial.clear()
        return sorted(out, key=lambda e: e.timestamp)

    def close(self) -> None:
        _close(self._owned)
        self._files, self._owned = [], []


# -- reading backward ----------------------------------------------------------------


Pos = tuple[int, int]  # (index of a file, oldest first; offset of a record's start)


def _last_record_end(lf: LogFile) -> int:
    """Where the last complete record of ``lf`` ends (a writer may be mid-record)."""
    pos = lf.size()
    size = 4096
    while pos > 0:
        start = max(0, pos - size)
        nl = lf.pread(pos - start, start).rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos, size = start, min(size * 2, _SEARCH_BLOCK)
    return 0


def _blocks_before(
    files: list[LogFile], at: Pos, size: int, largest: int = 0
) -> Iterator[tuple[Pos, bytearray, int]]:
    """Whole records before ``at``, newest first, in blocks of about ``size`` bytes,
    each twice the last up to ``largest``: (position of the block's first record, a
    buffer, where that record starts in it). The records are ``buffer[start:]``; read
    into the buffer without copies, as a search may go through a whole log."""
    index, pos = at
    while index >= 0:
        fd = files[index].f.fileno()
        carry = b""  # the end of a record that began before ``pos``
        while pos > 0:
            start = max(0, pos - size)
            n = pos - start
            buf = bytearray(n + len(carry))
            n = os.preadv(fd, [memoryview(buf)[:n]], start)
            buf[n:] = carry
            pos = start
            lo = 0
            if start > 0:
                lo = buf.find(b"\n") + 1
                carry = bytes(buf[:lo]) if lo else bytes(buf)
                if not lo:
                    continue  # one record longer than the block: read on
            if lo < len(buf):
                yield (index, start + lo), buf, lo
            size = min(size * 2, max(largest, size))
        index -= 1
        if index >= 0:
            pos = files[index].size()


def _previous_record(files: list[LogFile], at: Pos, stream: str) -> tuple[Pos, bool] | None:
    """The last record of ``stream`` before ``at``: (its position, whether it is P)."""
    needle = f" {stream} ".encode()
    for (index, start), buf, lo in _blocks_before(files, at, 4096, _SEARCH_BLOCK):
        hi = len(buf)
        while (hit := buf.rfind(needle, lo, hi)) >= 0:
            line_start = max(lo, buf.rfind(b"\n", lo, hit) + 1)
            flag = bytes(buf[hit + len(needle) : hit + len(needle) + 1])
            if b" " not in buf[line_start:hit] and flag in (b"P", b"F"):
                return (index, start + line_start - lo), flag == b"P"
            hi = hit  # the words were in a message, not a record's stream field
    return None


def _chain_start(files: list[LogFile], at: Pos, stream: str) -> Pos:
    """Where the partial line of ``stream`` that is still open at ``at`` began: the
    first of the P records before ``at`` that no F record of the stream follows."""
    start = at
    while (prev := _previous_record(files, start, stream)) is not None and prev[1]:
        start = prev[0]
    return start


def _back(files: list[LogFile], at: Pos, amount: int) -> tuple[Pos, bool]:
    """A record's start about ``amount`` bytes before ``at``, and whether that is the
    log's first record (nothing is left before it)."""
    moved = 0
    found = at
    for found, buf, lo in _blocks_before(files, at, min(amount, _SEARCH_BLOCK)):
        moved += len(buf) - lo
        if moved >= amount:
            return found, False
    return found, True


def _start_for(
    path: Path,
    *,
    tail: int | None,
    since: float | None,
    streams: frozenset[str],
    keep: Callable[[LogEntry], bool],
) -> tuple[LogReader, list[LogEntry]]:
    """A reader started as late in the log as ``tail`` and ``since`` allow, and the
    entries it has read: from there on, the same entries as a full read gives."""
    files = open_files(path)
    if not files:
        return LogReader(path), []
    last = len(files) - 1
    end: Pos = (last, _last_record_end(files[last]))
    amount = _TAIL_BLOCK
    try:
        while True:
            start, at_first = _back(files, end, amount)
            reader, entries = _read_from(path, files, start)
            # A stream whose first record here continues a line begun earlier: start
            # where that line began, and look at the streams again from there.
            for _ in range(8):
                moved = start
                for stream in streams & _streams_of(entries, reader):
                    prev = _previous_record(files, start, stream)
                    if prev is not None and prev[1]:
                        moved = min(moved, _chain_start(files, prev[0], stream))
                if moved == start:
                    break
                start = moved
                reader, entries = _read_from(path, files, start)
            if at_first:
                break
            if tail is not None and sum(1 for e in entries if keep(e)) >= tail:
                break
            if since is not None and entries and entries[0].timestamp < since:
                break  # entries come in time order: every earlier one is older still
            amount *= 4
    except BaseException:
        _close(files)
        raise
    reader._owned += files  # the reader that is returned closes them
    return reader, entries


def _read_from(path: Path, files: list[LogFile], start: Pos) -> tuple[LogReader, list[LogEntry]]:
    reader = LogReader(path)
    reader._start(files, start)
    return reader, reader.read()


def _streams_of(entries: list[LogEntry], reader: LogReader) -> set[str]:
    return {e.stream for e in entries} | reader.pending_streams()


# -- reading for ``logs`` --------------------------------------------------------------


def read_logs(
    path: Path,
    *,
    follow: bool,
    running: object,
    tail: int | None = None,
    since: float | None = None,
    until: float | None = None,
    streams: frozenset[str] = frozenset({"stdout", "stderr"}),
) -> Iterator[LogEntry]:
    """Entries of the log; with ``follow``, keep polling while ``running()`` is true
    and until the files are read to their end after that. ``tail`` and ``since`` read
    only the end of the log that they show."""

    def keep(e: LogEntry) -> bool:
        if e.stream not in streams:
            return False
        if since is not None and e.timestamp < since:
            return False
        return not (until is not None and e.timestamp > until)

    if tail == 0 and not follow:
        return
    if tail is not None or since is not None:
        reader, read = _start_for(path, tail=tail, since=since, streams=streams, keep=keep)
    else:
        reader = LogReader(path)
        read = reader.read()
    try:
        first = [e for e in read if keep(e)]
        if not follow:
            first += [e for e in reader.flush() if keep(e)]
        if tail is not None:
            first = first[-tail:] if tail > 0 else []
        yield from first
        if not follow:
            return
        yield from _follow(reader, keep, running, until)
    finally:
        reader.close()


def _follow(
    reader: LogReader, keep: Callable[[LogEntry], bool], running: object, until: float | None
) -> Iterator[LogEntry]:
    delay = 0.01
    is_running = running if callable(running) else (lambda: False)
    while True:
        still = bool(is_running())
        batch = [e for e in reader.read() if keep(e)]
        yield from batch
        if until is not None and time.time() > until:
            return
        if not still:
            # The writer has stopped: one last read, then what is pending.
            yield from (e for e in reader.read() if keep(e))
            yield from (e for e in reader.flush() if keep(e))
            return
        delay = 0.01 if batch else min(delay * 2, 0.2)
        time.sleep(delay)
