"""Pieces of an image config that the builder and ``--change`` both write.

Pure functions over values, no I/O: the order docker writes a container config's
keys in, merging ``ENV`` pairs, ``EXPOSE`` port specs, ``STOPSIGNAL`` names,
``HEALTHCHECK`` durations and Go's RFC 3339 timestamps. The parsers raise
ValueError with the bare reason; callers add where it came from (a Dockerfile
line, a ``--change``) and raise their own LaminaError subclass.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Docker's container-config key order, so configs read as docker's do.
CONFIG_ORDER = (
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Healthcheck",
    "Volumes",
    "WorkingDir",
    "OnBuild",
    "Labels",
    "StopSignal",
)
# HEALTHCHECK flags that take a duration -> their config key.
HEALTHCHECK_DURATIONS = {
    "interval": "Interval",
    "timeout": "Timeout",
    "start-period": "StartPeriod",
    "start-interval": "StartInterval",
}

_PORT = re.compile(r"(\d+)(?:-(\d+))?(?:/([A-Za-z]+))?")
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


def ordered_config(cfg: Mapping[str, Any], order: Sequence[str] = CONFIG_ORDER) -> dict[str, Any]:
    """``cfg`` with the keys of ``order`` first, in that order, then the others as they were."""
    out = {k: cfg[k] for k in order if k in cfg}
    out.update((k, v) for k, v in cfg.items() if k not in out)
    return out


def merge_env(env: Iterable[Any], pairs: Iterable[tuple[str, str]]) -> list[str]:
    """``env`` (``K=V`` items) with each pair replacing the item of its name, in
    place, or appended when new (as ENV does)."""
    out = [str(item) for item in env]
    for key, value in pairs:
        item = f"{key}={value}"
        for i, old in enumerate(out):
            if old.partition("=")[0] == key:
                out[i] = item
                break
        else:
            out.append(item)
    return out


def expose_ports(word: str) -> list[str]:
    """``PORT[-END][/PROTO]`` as the ``port/proto`` keys of ExposedPorts."""
    m = _PORT.fullmatch(word)
    if m is None:
        raise ValueError(f"invalid port {word!r} (want PORT[-END][/PROTO])")
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else start
    proto = (m.group(3) or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise ValueError(f"invalid protocol {proto!r} in {word!r}")
    if not 0 <= start <= end <= 65535:
        raise ValueError(f"invalid port range {word!r}")
    return [f"{port}/{proto}" for port in range(start, end + 1)]


def valid_signal(sig: str) -> bool:
    """A STOPSIGNAL value: a number 1-64, a signal name (SIG optional) or RTMIN+n/RTMAX-n."""
    if sig.isdigit():
        return 0 < int(sig) <= 64
    name = sig.upper().removeprefix("SIG")
    if re.fullmatch(r"RTMIN\+\d+|RTMAX-\d+|RTMIN|RTMAX", name):
        return True
    return ("SIG" + name) in signal.Signals.__members__


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration, non-negative only; returns nanoseconds."""
    if text == "0":
        return 0
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION.match(text, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    return int(total)


def rfc3339(ns: int) -> str:
    """Go's RFC3339Nano in UTC for ``ns`` since the epoch: trailing zeros of the
    fraction dropped."""
    secs, frac = divmod(ns, 1_000_000_000)
    out = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    return out + "Z"
