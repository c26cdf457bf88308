"""The log rotation helper of process containers (``logrotate.c``).

Why a helper at all, and why this one (not conmon's own ``--log-size-max``, not
lamina's commands, not a Python process per container): see ``_logs``. It is built on
first use with ``gcc -static -Os`` into ``<root>/runtime/logrotate/<key>/lamina-logrotate``
(the key hashes the source, the flags and the compiler), as the VM agent is, and
``start`` runs it right after conmon, before the container is released, in a session
of its own: it outlives the lamina command that started it and exits with conmon.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import subprocess
from pathlib import Path

from lamina._cbuild import compile_c
from lamina.errors import LaminaError
from lamina.runtime._logs import LogSettings

SOURCE = Path(__file__).with_name("logrotate.c")
CFLAGS = ("-static", "-Os", "-s", "-Wall")
_CC = "gcc"
_READY_TIMEOUT = 5.0  # seconds; it is ready in about a millisecond


def helper_path(root: Path) -> Path:
    """Where ``build`` keeps the helper for today's source, flags and compiler."""
    cc = shutil.which(_CC)
    compiler = os.path.realpath(cc) if cc else _CC
    ident = f"{' '.join(CFLAGS)}\n{compiler}".encode()
    key = hashlib.sha256(SOURCE.read_bytes() + ident).hexdigest()[:16]
    return Path(root) / "runtime" / "logrotate" / key / "lamina-logrotate"


def build(root: Path) -> Path:
    """The helper binary, compiled once per source, flags and compiler (``root``: the
    lamina root)."""
    out = helper_path(root)
    if out.is_file():
        return out
    cc = shutil.which(_CC)
    if cc is None:
        raise LaminaError(
            "--log-opt max-file (2 or more) needs gcc and static glibc to build lamina's log "
            "rotation helper (apt-get install gcc libc6-dev)"
        )
    compile_c(root, cc, CFLAGS, SOURCE, out, "lamina's log rotation helper")
    return out


def start(helper: Path, log: Path, settings: LogSettings, conmon_pid: int) -> None:
    """Rotate ``log`` (in its container's bundle) for as long as conmon runs."""
    assert settings.max_size is not None
    # Started through a shell that exits at once: the helper is nobody's child (no
    # zombie in a long-lived caller), in a session of its own (no terminal's hangup or
    # ^C reaches it); it lives as long as the container and exits with conmon. Its
    # first word says it watches the log: from then on the container's output counts.
    argv = [
        "/bin/sh", "-c", '"$@" &', "lamina-logrotate",
        str(helper), str(log.parent), log.name,
        str(settings.max_size), str(settings.max_files), str(conmon_pid),
    ]  # fmt: skip
    with open(log.parent / "logrotate.err", "ab") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            cwd="/",
        )
    assert proc.stdout is not None
    with proc.stdout:
        proc.wait()
        if select.select([proc.stdout], [], [], _READY_TIMEOUT)[0]:
            proc.stdout.readline()  # "ready", or nothing if it failed (logrotate.err)
