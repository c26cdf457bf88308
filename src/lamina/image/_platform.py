"""Platforms ("linux/arm64/v8"): the host's, parsing, matching, index selection.

Contract: names are normalised like containerd's ``platforms.Normalize``
(aarch64 -> arm64, x86_64 -> amd64, bare arm -> arm/v7, arm64 gets variant v8).
``matches``/``select_manifest`` follow containerd's ``platforms.Only`` ordering
within one architecture: the exact variant first, then older variants the host
can also run (arm/v7 runs v6 and v5, amd64/v3 runs v2 and v1). Cross-architecture
fallbacks (amd64 -> 386, arm64 -> arm) are not offered: they need kernel and
libc support a host may not have. Pure logic; the only I/O is ``os.uname()``.
"""

from __future__ import annotations

import functools
import os
import re

from lamina.errors import InvalidPlatform, NotFound
from lamina.image._digest import quote
from lamina.image._manifest import Descriptor, Index, Platform

_COMPONENT_RE = re.compile(r"[A-Za-z0-9_.-]+")
_VARIANT_NUM_RE = re.compile(r"v(\d+)(?:\.(\d+))?")
_HOST_ARM_RE = re.compile(r"armv(\d+)")

_KNOWN_OS = frozenset({"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris"})
_KNOWN_ARCH = frozenset(
    {"386", "amd64", "arm", "arm64", "ppc64le", "s390x", "riscv64", "mips64le", "loong64"}
)
# uname -m spellings containerd/Go do not use.
_MACHINE_ARCH = {"loongarch64": "loong64"}
# Variant families where an older variant runs on a newer one.
_ORDERED_VARIANTS = frozenset({"amd64", "arm", "arm64"})
_DEFAULT_VARIANT = {"arm": "v7", "arm64": "v8", "amd64": "v1"}
_ATTESTATION = ("vnd.docker.reference.type", "attestation-manifest")


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch in ("i386", "i486", "i586", "i686", "386"):
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("", "8", "v8", "v8.0"):
            return "arm64", "v8"
        if variant in ("9", "9.0", "v9.0"):
            return "arm64", "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


def normalize_platform(p: Platform) -> Platform:
    """``p`` with containerd's spellings (keeps os_version and os_features)."""
    os_name = p.os.lower()
    if os_name == "macos":
        os_name = "darwin"
    arch, variant = _normalize_arch(p.architecture, p.variant or "")
    return Platform(os_name, arch, variant or None, p.os_version, p.os_features)


@functools.cache
def host_platform() -> Platform:
    """The platform of this machine, in Go/OCI names (x86_64 -> linux/amd64)."""
    u = os.uname()
    machine = u.machine.lower()
    m = _HOST_ARM_RE.match(machine)
    if m:
        arch, variant = "arm", "v" + m.group(1)
    else:
        arch, variant = _normalize_arch(_MACHINE_ARCH.get(machine, machine), "")
    return Platform(u.sysname.lower(), arch, variant or None)


def parse_platform(s: str) -> Platform:
    """Parse "os/arch[/variant]"; a lone arch or os is completed from the host."""
    parts = s.split("/")
    if not s or len(parts) > 3 or not all(_COMPONENT_RE.fullmatch(p) for p in parts):
        raise InvalidPlatform(
            f"invalid platform {quote(s)}: want os/arch[/variant], e.g. linux/arm64/v8"
        )
    if len(parts) == 1:
        one = parts[0].lower()
        arch, variant = _normalize_arch(_MACHINE_ARCH.get(one, one), "")
        if arch in _KNOWN_ARCH:
            return Platform(host_platform().os, arch, variant or None)
        if one in _KNOWN_OS or one == "macos":
            host = host_platform()
            return normalize_platform(Platform(one, host.architecture, host.variant))
        raise InvalidPlatform(f"invalid platform {quote(s)}: unknown os or architecture")
    return normalize_platform(Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None))


def platform_str(p: Platform) -> str:
    """Format as "os/arch" or "os/arch/variant"."""
    return str(p)


def _key(p: Platform) -> tuple[str, str, str]:
    n = normalize_platform(p)
    return n.os, n.architecture, n.variant or _DEFAULT_VARIANT.get(n.architecture, "")


def _variant_num(variant: str) -> tuple[int, int] | None:
    m = _VARIANT_NUM_RE.fullmatch(variant)
    return None if m is None else (int(m.group(1)), int(m.group(2) or 0))


def _rank(want: tuple[str, str, str], have: tuple[str, str, str]) -> tuple[int, ...] | None:
    """None if ``have`` cannot run on ``want``; else a sort key, best first."""
    if want[:2] != have[:2]:
        return None
    if want[2] == have[2]:
        return (0,)
    if want[1] not in _ORDERED_VARIANTS:
        return None
    w, h = _variant_num(want[2]), _variant_num(have[2])
    if w is None or h is None or h > w:
        return None
    return (1, -h[0], -h[1])  # the newest variant the host can run comes first


def matches(want: Platform, have: Platform) -> bool:
    """True when an image built for ``have`` runs on ``want``."""
    return _rank(_key(want), _key(have)) is not None


def _selectable(d: Descriptor) -> Platform | None:
    """The entry's platform, or None for entries that are not runnable images."""
    p = d.platform
    if p is None or p.os == "unknown" or p.architecture == "unknown":
        return None
    if d.annotations.get(_ATTESTATION[0]) == _ATTESTATION[1]:
        return None
    return p


def select_manifest(index: Index, want: Platform) -> Descriptor:
    """The index entry that best matches ``want``; NotFound lists what there is."""
    want_key = _key(want)
    best: tuple[tuple[int, ...], Descriptor] | None = None
    available: list[str] = []
    for d in index.manifests:
        p = _selectable(d)
        if p is None:
            continue
        rank = _rank(want_key, _key(p))
        # Strict "<": on a tie the first entry in the index wins, as in containerd.
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, d)
        name = platform_str(p)
        if name not in available:
            available.append(name)
    if best is None:
        listed = ", ".join(available) or "none"
        raise NotFound(
            f"no manifest for platform {platform_str(want)} in index (available: {listed})"
        )
    return best[1]
