"""Compiling lamina's small C programs (the VM guest agent, the log rotation helper):
once, into a path of the caller's choosing (keyed by what the program is built
from), published by a rename so that a reader sees the whole binary or none, with the
temporary file leased (``_leases``): a killed build leaves nothing behind.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lamina.errors import LaminaError


def compile_c(
    root: Path, cc: str, flags: Sequence[str], source: Path, out: Path, what: str
) -> None:
    """``cc flags -o out source``; ``what`` names the program in the one-line error."""
    from lamina import _leases

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    with _leases.take(root, "compile") as lease:
        lease.add_path(tmp)
        try:
            proc = subprocess.run(
                [cc, *flags, "-o", str(tmp), str(source)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                lines = proc.stderr.strip().splitlines()
                raise LaminaError(f"compiling {what} failed: {lines[-1] if lines else '?'}")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
            lease.discard(tmp)
