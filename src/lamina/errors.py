"""The one exception family lamina raises for expected failures.

Every error a user can cause (bad reference, unreachable registry, hostile layer,
missing image) is a LaminaError whose str() is a single line that names what is
wrong. The CLI prints that line and exits non-zero; anything else is a bug and
shows a traceback only under --debug.
"""

from __future__ import annotations


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
