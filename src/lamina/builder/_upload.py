"""A build context sent to a daemon: the client's tar of what the build sees, the
daemon's scratch copy of it under a lease.

- ``pack_context`` (the client): the context as the local build would see it
  (``.dockerignore`` applied by ``iter_context``, the same walk the builder uses)
  under ``context/``, and the Dockerfile with its own ``<name>.dockerignore``, if
  there is one, under ``dockerfile/``: wherever ``-f`` points (inside the context,
  outside it, or ``-`` for stdin), the daemon finds it there and looks up the ignore
  file as the local build does. Applying the same patterns again on the daemon
  keeps the same entries (matching is by path), so the build sees what it sees
  in-process.
- ``receive_context`` (both daemon APIs, ``/v1/build`` and Docker's ``/build``):
  the body (plain, gzip or zstd) extracted into a scratch directory registered on a
  lease, so that a daemon killed mid-build leaves nothing the next sweep does not
  remove; ``Upload.drop`` removes it.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from lamina.errors import LaminaError

CONTEXT_DIR = "context"
DOCKERFILE_DIR = "dockerfile"
# The build's secrets (``--secret``): a 0700 directory of 0600 files, each named by
# its id in hex (any id is a file name); never part of the context.
SECRETS_DIR = "secrets"


@dataclass
class Upload:
    """An uploaded context: ``scratch`` holds what the tar held, ``lease`` answers
    for it."""

    scratch: Path
    lease: Any

    def drop(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.lease.discard(self.scratch)
        self.lease.release()


def receive_context(root: Path, body: BinaryIO, kind: str, into: str = "") -> Upload:
    """Extract ``body`` (a tar) into ``<scratch>/<into>``, confined to it, under a
    lease of ``kind``; nothing is left behind when it fails."""
    from lamina import _leases
    from lamina.runtime import _fsops

    lease = _leases.take(root, kind)
    upload = Upload(root / "tmp" / f"build-context-{os.urandom(8).hex()}", lease)
    try:
        lease.add_path(upload.scratch)
        target = upload.scratch / into if into else upload.scratch
        target.mkdir(parents=True)
        _fsops.copy_in(target, "/", body)
    except BaseException:
        upload.drop()
        raise
    return upload


def pack_context(context: Path, dockerfile: Path | None, dockerfile_text: str | None,
                 out: IO[bytes], secrets: Mapping[str, bytes] | None = None) -> str:  # fmt: skip
    """Write the tar ``receive_context`` takes to ``out``; returns the Dockerfile's
    name under ``dockerfile/``. Raises the local build's errors for a context that is
    not a directory or a Dockerfile that cannot be read. ``secrets`` (id -> value)
    go under ``secrets/`` (``received_secrets`` finds them)."""
    from lamina.builder._dockerfile import BuildError
    from lamina.builder._dockerignore import PatternMatcher, iter_context, read_dockerignore

    if not context.is_dir():
        raise BuildError(f"the build context {context} is not a directory")
    path = dockerfile or (context / "Dockerfile")
    name = "Dockerfile" if dockerfile_text is not None else path.name
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if dockerfile_text is not None:
            text = dockerfile_text.encode("utf-8", "surrogateescape")
            _add_bytes(tar, f"{DOCKERFILE_DIR}/{name}", text)
            patterns = read_dockerignore(context, None)
        else:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise BuildError(f"cannot read the Dockerfile: {path} does not exist") from None
            except OSError as e:
                raise BuildError(f"cannot read the Dockerfile {path}: {e.strerror}") from None
            _add_bytes(tar, f"{DOCKERFILE_DIR}/{name}", data)
            specific = path.parent / (name + ".dockerignore")
            if specific.is_file():
                tar.add(str(specific), f"{DOCKERFILE_DIR}/{specific.name}", recursive=False)
            patterns = read_dockerignore(context, path)
        if secrets:
            _add_secrets(tar, secrets)
        tar.add(str(context), CONTEXT_DIR, recursive=False)
        matcher = PatternMatcher(patterns) if patterns else None
        for item in iter_context(context, matcher):
            tar.add(item.entry.path, f"{CONTEXT_DIR}/{item.path}", recursive=False)
    return name


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def secret_bytes(
    sid: str, kind: str, value: str, error: type[LaminaError] = LaminaError
) -> bytes:
    """A ``--secret``'s value as a build reads it (``BuildOptions.secrets``: id ->
    (kind, value)): a file's bytes, or a variable's value; a file that cannot be read
    is one ``error`` line naming the secret."""
    if kind != "file":
        return value.encode("utf-8", "surrogateescape")
    try:
        return Path(value).read_bytes()
    except OSError as e:
        raise error(f"cannot read secret {sid!r} from {value}: {e.strerror}") from None


def _add_secrets(tar: tarfile.TarFile, secrets: Mapping[str, bytes]) -> None:
    directory = tarfile.TarInfo(SECRETS_DIR)
    directory.type = tarfile.DIRTYPE
    directory.mode = 0o700
    tar.addfile(directory)
    for sid, value in secrets.items():
        _add_bytes(tar, f"{SECRETS_DIR}/{sid.encode('utf-8', 'surrogateescape').hex()}",
                   value, 0o600)  # fmt: skip


def received_secrets(upload: Upload) -> dict[str, tuple[str, str]]:
    """The secrets an upload carried, as ``BuildOptions.secrets`` (id -> ("file",
    path)); their directory is made private (0700) first. Raises ValueError for a
    name that is not an id in hex."""
    directory = upload.scratch / SECRETS_DIR
    if not directory.is_dir() or directory.is_symlink():
        return {}
    directory.chmod(0o700)
    out: dict[str, tuple[str, str]] = {}
    for entry in directory.iterdir():
        try:
            sid = bytes.fromhex(entry.name).decode("utf-8", "surrogateescape")
        except ValueError:
            raise ValueError(f"{SECRETS_DIR}/{entry.name}: not a secret id in hex") from None
        if not sid or not entry.is_file() or entry.is_symlink():
            raise ValueError(f"{SECRETS_DIR}/{entry.name}: not a secret")
        out[sid] = ("file", str(entry))
    return out
