"""aardvark-dns's records of a running container, changed live (a container's network
aliases: ``Engine.networks.set_aliases``), the way netavark changes them: its config
file for the network edited under the root's netavark lock (and netavark's own
``aardvark.lock``), then SIGHUP to the aardvark-dns of the root, which reads every
file again.

The file (``<root>/networks/netavark/aardvark-dns/<network>``, netavark 1.4's
format): a first line with the gateway addresses, then one line per container,
``ID IPV4S IPV6S NAMES`` split by single spaces (a field may be empty), NAMES comma
separated: the container's name, its short ID and its aliases. aardvark-dns answers a
name with the addresses of every line that has it (several containers: all of theirs).

The edit replaces the file in one step (``rename``) from a scratch file kept *outside*
that directory (aardvark-dns reads every file in it as a network's, a leftover too),
registered on a lease before it is made: a killed edit's goes with the next
command's reap.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

from lamina import _leases
from lamina._fsutil import write_all
from lamina._hooks import stop_point
from lamina.network import _netavark
from lamina.network._ipam import InvalidNetwork

_PID_FILE = "aardvark.pid"
_NETAVARK_LOCK = "aardvark.lock"  # netavark 1.4's, beside aardvark-dns/
_LABEL = re.compile(r"^[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?$")


def check_names(names: Sequence[str]) -> list[str]:
    """``names`` as DNS names (labels of letters, digits, ``_`` and ``-``, 63 at
    most, 253 in all), without repeats (case aside: DNS ignores it), in order;
    InvalidNetwork for the first that is not one (aardvark-dns's file would break on
    a space or comma)."""
    out: list[str] = []
    for name in names:
        labels = name.split(".")
        if not (0 < len(name) <= 253 and all(_LABEL.match(label) for label in labels)):
            raise InvalidNetwork(
                f"invalid network alias {name!r}: a DNS name (letters, digits, '_', '-', "
                "labels of 1 to 63 characters split by '.')"
            )
        if name.lower() not in (n.lower() for n in out):
            out.append(name)
    return out


def dns_dir(root: Path) -> Path:
    return _netavark.config_dir(root) / "aardvark-dns"


def set_names(root: Path, network: str, cid: str, names: Sequence[str]) -> bool:
    """Give container ``cid``'s records on ``network`` exactly ``names`` (its name,
    short ID and aliases, checked by the caller), at once; False when aardvark-dns
    has no record of it there (the container's run has no DNS on that network)."""
    path = dns_dir(root) / network
    with _locked(root):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return False
        lines = text.split("\n")
        found = False
        for i, line in enumerate(lines[1:], start=1):
            fields = line.split(" ")
            if len(fields) >= 4 and fields[0] == cid:
                found = True
                fields[3] = ",".join(names)
                lines[i] = " ".join(fields)
        if not found:
            return False
        new = "\n".join(lines)
        if new != text:
            _replace(root, path, new.encode())
            _notify(root)
        return True


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """The root's netavark lock (lamina's calls of netavark take turns on it), then
    netavark's own lock of aardvark-dns's files."""
    fd = _netavark.take_lock(root)
    try:
        lock = os.open(
            _netavark.config_dir(root) / _NETAVARK_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o644,
        )  # fmt: skip
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)
    finally:
        os.close(fd)


def _replace(root: Path, path: Path, data: bytes) -> None:
    """``path`` replaced by ``data`` in one step, from a scratch file beside
    aardvark-dns's directory, registered on a lease first: a killed edit's is
    removed by the next command's reap."""
    with _leases.take(root, "aliases") as lease:
        scratch = _netavark.config_dir(root) / f".aardvark-edit-{lease.id}.tmp"
        lease.add_path(scratch)
        try:
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
            stop_point("network:aardvark")
            os.replace(scratch, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                scratch.unlink()
            raise
        lease.discard(scratch)


def _notify(root: Path) -> None:
    """SIGHUP to the root's aardvark-dns, if it runs: the pid file's process, only
    when it is aardvark-dns serving this root (a pid reused by another process must
    not get a signal that would end it)."""
    directory = dns_dir(root)
    try:
        pid = int((directory / _PID_FILE).read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        config = os.fsdecode(argv[argv.index(b"--config") + 1])
        serves = argv[0].endswith(b"aardvark-dns") and os.path.samefile(
            os.path.join(f"/proc/{pid}/cwd", config), directory
        )
    except (OSError, ValueError, IndexError):
        return
    if serves:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
