"""The one exception family lamina raises for expected failures.

Every error a user can cause (bad reference, unreachable registry, hostile layer,
missing image) is a LaminaError whose str() is a single line that names what is
wrong. The CLI prints that line and exits non-zero; anything else is a bug and
shows a traceback only under --debug.
"""

from __future__ import annotations

import errno

# The host refusing a write, whatever the file: said as "cannot write FILE: why".
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


class LaminaError(Exception):
    """An expected failure with a one-line, user-facing message."""

    exit_code: int = 1


class InvalidReference(LaminaError, ValueError):
    """An image reference does not follow the Docker reference grammar."""


class InvalidDigest(LaminaError, ValueError):
    """A digest string is malformed or uses an unsupported algorithm."""


class DigestMismatch(LaminaError):
    """Content did not hash to the digest it was announced with."""


class NotFound(LaminaError):
    """A blob, image, manifest or other named object does not exist."""

    exit_code = 1


class AlreadyExists(LaminaError):
    """An object that must be unique exists already."""


class InUse(LaminaError):
    """An object cannot be removed because something references it."""


class InvalidLayer(LaminaError):
    """A layer archive is malformed or tries to escape its target directory."""


class InvalidManifest(LaminaError):
    """A manifest or index is malformed or of an unsupported media type."""


class RegistryError(LaminaError):
    """A registry answered with an error or could not be reached."""


class AuthenticationRequired(RegistryError):
    """The registry refused the credentials (or their absence)."""


class InvalidPlatform(LaminaError, ValueError):
    """A platform string (os/arch[/variant]) is malformed or unknown."""


class StorageError(LaminaError):
    """The host could not store something (a full disk, an I/O error); the message
    names the file or step that could not be written, ``reason`` is why in strerror's
    words ("No space left on device")."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


def describe_os_error(e: OSError) -> str:
    """An OSError in words for a one-line message: the file it names (both of a
    rename or link) and, when the host refused a write (a full disk), that it could
    not be written: "cannot write FILE: No space left on device"."""
    why = e.strerror or str(e)
    if e.filename is None:
        return why
    where = str(e.filename)
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    if e.errno in _WRITE_ERRNOS:
        return f"cannot write {where}: {why}"
    return f"{where}: {why}"
