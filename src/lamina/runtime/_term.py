"""The caller's terminal during ``run -it``, ``start -ai``, ``attach`` and ``exec -it``.

``raw_terminal`` puts it in raw mode for the duration and always restores it (also
on errors and signals that raise); ``follow_window_size`` reports its size now and
on every SIGWINCH, so the container's terminal follows. Docker's detach keys:
``parse_detach_keys`` reads its notation (``--detach-keys``, the APIs' ``detachKeys``)
and ``DetachKeys`` watches a terminal's input for them, the one matcher every stdin
pump uses (the OCI backend's attach and exec, the remote client). Only the standard
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

from lamina.errors import LaminaError

DEFAULT_DETACH_KEYS = b"\x10\x11"  # Docker's: ctrl-p ctrl-q
DETACHED_MESSAGE = "read escape sequence"  # what the docker CLI says of a detach

# ctrl-@ .. ctrl-_ are the codes 0..31, in this order (moby/term's ToBytes).
_CTRL_KEYS = "@abcdefghijklmnopqrstuvwxyz[\\]^_"


def parse_detach_keys(spec: str) -> bytes:
    """Docker's notation of detach keys: comma-separated keys, each one character
    (itself), ``ctrl-@``, ``ctrl-a`` .. ``ctrl-z``, ``ctrl-[``, ``ctrl-\\``, ``ctrl-]``,
    ``ctrl-^``, ``ctrl-_`` or ``DEL``. Empty: Docker's default (ctrl-p,ctrl-q)."""
    if spec == "":
        return DEFAULT_DETACH_KEYS
    codes = bytearray()
    for key in spec.split(","):
        if len(key) == 1 and key.isascii():
            codes.append(ord(key))
        elif key.startswith("ctrl-") and len(key) == 6 and key[5] in _CTRL_KEYS:
            codes.append(_CTRL_KEYS.index(key[5]))
        elif key == "DEL":
            codes.append(127)
        else:
            shown = spec if spec.isprintable() else repr(spec)
            raise LaminaError(
                f"invalid detach keys ({shown}): unknown key {key!r}: a key is one character, "
                "ctrl-a..ctrl-z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_ or DEL"
            )
    return bytes(codes)


def format_detach_keys(keys: bytes) -> str:
    """``keys`` in Docker's notation (what ``parse_detach_keys`` reads back)."""
    names = []
    for code in keys:
        if code < len(_CTRL_KEYS):
            names.append("ctrl-" + _CTRL_KEYS[code])
        else:
            names.append("DEL" if code == 127 else chr(code))
    return ",".join(names)


class DetachKeys:
    """Watches a terminal's input for the detach keys. ``feed(data)`` returns what to
    pass on: the input before the keys, and nothing after them once they have all
    come (``detached``). A prefix of the keys is held until the next input shows
    whether the rest follows; if not, it is passed on as typed (ctrl-p then ``a``
    reaches the container as both bytes)."""

    def __init__(self, keys: bytes | None = None) -> None:
        self.keys = DEFAULT_DETACH_KEYS if keys is None else keys
        self.detached = False
        self._held = 0  # how many of the keys have come, in order, at the input's end

    def feed(self, data: bytes) -> bytes:
        if self.detached:
            return b""
        out = bytearray()
        for byte in data:
            if self._held and byte != self.keys[self._held]:
                out += self.keys[: self._held]  # not the keys after all: as typed
                self._held = 0
            if byte == self.keys[self._held]:
                self._held += 1
                if self._held == len(self.keys):
                    self.detached = True
                    return bytes(out)
            else:
                out.append(byte)
        return bytes(out)

    def flush(self) -> bytes:
        """What is held at the end of the input (passed on as typed)."""
        held, self._held = self.keys[: self._held], 0
        return held


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
