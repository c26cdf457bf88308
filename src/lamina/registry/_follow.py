"""Read a blob while it downloads, so a layer unpacks as its bytes arrive.

Contract: the downloader writes into the content-store ingest through a ``TeeSink``,
which flushes each write and publishes how many bytes the file holds. Any number of
``Follow.reader()``s read the same file from the start, blocking at the end of what
is there until more arrives, and see end-of-file only once ``finish()`` is called
(after the digest was verified, so an unpacker never completes on unverified
bytes). ``abort(e)`` makes blocked and future reads raise ``e``. A download that has
to start over (the server ignored a Range request) calls ``restart()``: readers then
raise ``Restarted`` and the caller unpacks again from the finished file.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import BinaryIO, Protocol


class Restarted(Exception):
    """The download restarted from zero: what a reader already consumed is stale."""


class _Writer(Protocol):
    @property
    def offset(self) -> int: ...

    def write(self, data: bytes | memoryview) -> int: ...
    def truncate(self) -> None: ...
    def digest(self) -> str: ...
    def flush(self) -> None: ...


class Follow:
    """The shared state of one blob being downloaded into ``path``."""

    def __init__(self, path: Path, available: int = 0) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._available = available
        self._generation = 0
        self._done = False
        self._error: BaseException | None = None

    def published(self, available: int) -> None:
        with self._cond:
            self._available = available
            self._cond.notify_all()

    def restart(self) -> None:
        with self._cond:
            self._generation += 1
            self._available = 0
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    @property
    def error(self) -> BaseException | None:
        return self._error

    def abort(self, error: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def wait_finished(self) -> None:
        """Block until the download finished; raises what aborted it."""
        with self._cond:
            while not self._done and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def reader(self, buffer_size: int = 1 << 20) -> BinaryIO:
        return io.BufferedReader(_FollowReader(self), buffer_size)

    def _wait_for(self, pos: int, generation: int) -> int:
        """Bytes readable at ``pos`` (0 at the end of a finished download)."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if self._generation != generation:
                    raise Restarted("download restarted from the beginning")
                if self._available > pos:
                    return self._available - pos
                if self._done:
                    return 0
                self._cond.wait()


class _FollowReader(io.RawIOBase):
    def __init__(self, follow: Follow) -> None:
        self._follow = follow
        self._generation = follow._generation
        self._file = open(follow.path, "rb")  # noqa: SIM115 - closed in close()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._follow._wait_for(self._pos, self._generation)
        if n == 0:
            return 0
        view = memoryview(buffer).cast("B")
        got = self._file.readinto(view[: min(n, len(view))])
        self._pos += got or 0
        return got or 0

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class TeeSink:
    """A download sink that writes into the ingest and publishes progress to readers."""

    def __init__(self, writer: _Writer, follow: Follow) -> None:
        self._writer = writer
        self._follow = follow

    @property
    def offset(self) -> int:
        return self._writer.offset

    def write(self, data: bytes | memoryview) -> int:
        n = self._writer.write(data)
        self._writer.flush()
        self._follow.published(self._writer.offset)
        return n

    def truncate(self) -> None:
        self._writer.truncate()
        self._follow.restart()

    def digest(self) -> str:
        return self._writer.digest()
