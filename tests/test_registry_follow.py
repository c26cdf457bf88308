"""Reading a blob while it downloads (the streaming unpack's plumbing)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lamina.registry._follow import Follow, Restarted


def test_reader_waits_for_bytes_and_sees_eof_only_after_finish(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    follow = Follow(path)
    got: list[bytes] = []

    def read() -> None:
        with follow.reader() as r:
            got.append(r.read())

    t = threading.Thread(target=read)
    t.start()
    with open(path, "ab") as f:
        for part in (b"hello ", b"world"):
            f.write(part)
            f.flush()
            follow.published(f.tell())
            time.sleep(0.02)
    time.sleep(0.05)
    assert t.is_alive()  # everything written is read, but no end-of-file yet
    follow.finish()
    t.join(5)
    assert got == [b"hello world"]


def test_abort_and_restart_reach_blocked_readers(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"abc")
    follow = Follow(path, 3)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with follow.reader() as r:
                r.read()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=read)
    t.start()
    time.sleep(0.05)
    follow.restart()
    t.join(5)
    assert isinstance(errors[0], Restarted)

    follow2 = Follow(path, 3)
    t = threading.Thread(target=lambda: errors.append(_read_error(follow2)))
    t.start()
    time.sleep(0.05)
    follow2.abort(ValueError("digest mismatch"))
    t.join(5)
    assert isinstance(errors[1], ValueError)
    with pytest.raises(ValueError):
        follow2.wait_finished()


def _read_error(follow: Follow) -> BaseException | None:
    try:
        with follow.reader() as r:
            r.read()
    except BaseException as e:
        return e
    return None
