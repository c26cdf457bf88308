"""Signal names and numbers, spelled as Docker spells them.

Pure functions, no state. ``parse_signal`` accepts what ``docker kill -s`` does:
a name with or without ``SIG`` in any case (``KILL``, ``sigkill``), a number
(``9``), or a real-time offset (``SIGRTMIN+3``, ``RTMAX-1``). ``signal_name`` is
the inverse, with ``kill -l`` names for the real-time range.
``signal_from_exit_code`` reads a shell-style exit status (128 + n).
``stop_signal`` picks the signal that stops a container and never fails.
"""

from __future__ import annotations

from lamina.errors import LaminaError

# Linux numbers (x86 and arm share them). Written out rather than taken from the
# ``signal`` module so aliases (IOT, CLD, POLL) parse and names print canonically.
_SIGNALS: dict[str, int] = {
    "HUP": 1,
    "INT": 2,
    "QUIT": 3,
    "ILL": 4,
    "TRAP": 5,
    "ABRT": 6,
    "IOT": 6,
    "BUS": 7,
    "FPE": 8,
    "KILL": 9,
    "USR1": 10,
    "SEGV": 11,
    "USR2": 12,
    "PIPE": 13,
    "ALRM": 14,
    "TERM": 15,
    "STKFLT": 16,
    "CHLD": 17,
    "CLD": 17,
    "CONT": 18,
    "STOP": 19,
    "TSTP": 20,
    "TTIN": 21,
    "TTOU": 22,
    "URG": 23,
    "XCPU": 24,
    "XFSZ": 25,
    "VTALRM": 26,
    "PROF": 27,
    "WINCH": 28,
    "IO": 29,
    "POLL": 29,
    "PWR": 30,
    "SYS": 31,
}
_NAMES: dict[int, str] = {}
for _name, _num in _SIGNALS.items():
    _NAMES.setdefault(_num, "SIG" + _name)  # first spelling wins: ABRT over IOT

SIGRTMIN = 34  # as the C library reports it (glibc keeps 32 and 33 for itself)
SIGRTMAX = 64


def _invalid(s: str | int) -> LaminaError:
    return LaminaError(f"invalid signal: {s!r}")


def parse_signal(s: str | int) -> int:
    """The signal number for ``s``; LaminaError ``invalid signal: 'FOO'`` otherwise."""
    if isinstance(s, int) and not isinstance(s, bool):
        if 1 <= s <= SIGRTMAX:
            return s
        raise _invalid(s)
    if not isinstance(s, str):
        raise _invalid(s)
    text = s.strip()
    if text.isdigit():
        n = int(text)
        if 1 <= n <= SIGRTMAX:
            return n
        raise _invalid(s)
    name = text.upper()
    name = name.removeprefix("SIG")
    num = _SIGNALS.get(name)
    if num is not None:
        return num
    for base, origin, sign in (("RTMIN", SIGRTMIN, 1), ("RTMAX", SIGRTMAX, -1)):
        if name == base:
            return origin
        if name.startswith(base) and len(name) > len(base) + 1:
            op, offset = name[len(base)], name[len(base) + 1 :]
            if op == ("+" if sign > 0 else "-") and offset.isdigit():
                n = origin + sign * int(offset)
                if SIGRTMIN <= n <= SIGRTMAX:
                    return n
    raise _invalid(s)


def stop_signal(*candidates: str | None) -> int:
    """The signal that stops a container: the first of ``candidates`` (its
    ``--stop-signal``, then its image's ``StopSignal``) that is a signal, else SIGTERM.
    As in Docker, a bogus value (an image's, or one stored before it was validated)
    never makes a container impossible to stop or inspect."""
    for name in candidates:
        if name:
            try:
                return parse_signal(name)
            except LaminaError:
                continue
    return _SIGNALS["TERM"]


def signal_name(n: int) -> str:
    """``SIGTERM`` for 15; real-time signals as ``kill -l`` names them."""
    name = _NAMES.get(n)
    if name is not None:
        return name
    if n == SIGRTMIN:
        return "SIGRTMIN"
    if n == SIGRTMAX:
        return "SIGRTMAX"
    # kill -l: RTMIN+1..RTMIN+15, then RTMAX-14..RTMAX-1
    if SIGRTMIN < n <= SIGRTMIN + 15:
        return f"SIGRTMIN+{n - SIGRTMIN}"
    if SIGRTMIN + 15 < n < SIGRTMAX:
        return f"SIGRTMAX-{SIGRTMAX - n}"
    if 1 <= n < SIGRTMIN:  # 32, 33: reserved by the C library, nameless
        return f"SIG{n}"
    raise _invalid(n)


def signal_from_exit_code(code: int) -> str | None:
    """The signal a shell-style exit status reports (137 -> SIGKILL), or None."""
    if 128 < code <= 128 + SIGRTMAX:
        n = code - 128
        return signal_name(n)
    return None
