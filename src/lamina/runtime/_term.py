"""The caller's terminal during ``run -it``, ``start -ai`` and ``exec -it``.

``raw_terminal`` puts it in raw mode for the duration and always restores it (also
on errors and signals that raise); ``follow_window_size`` reports its size now and
on every SIGWINCH, so the container's terminal follows. Only the standard
library's terminal modules: this is imported by the CLI and the attach path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import termios
import threading
import tty as ttymod
from collections.abc import Callable, Iterator


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, cols) of the terminal on ``fd``, None if it is no terminal."""
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None
    rows, cols, _, _ = struct.unpack("HHHH", packed)
    return (rows, cols) if rows and cols else None


def set_window_size(fd: int, rows: int, cols: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode for the duration (no-op if no tty)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        ttymod.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def follow_window_size(source_fd: int, apply: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``apply(rows, cols)`` now and on every SIGWINCH (main thread only)."""
    size = window_size(source_fd)
    if size:
        apply(*size)
    if threading.current_thread() is not threading.main_thread() or not os.isatty(source_fd):
        yield
        return

    def on_winch(_sig: int, _frame: object) -> None:
        new = window_size(source_fd)
        if new:
            apply(*new)

    previous = signal.signal(signal.SIGWINCH, on_winch)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)
