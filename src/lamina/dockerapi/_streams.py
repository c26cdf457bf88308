"""Docker Engine API: see lamina.dockerapi's docstring for what this module serves."""

from __future__ import annotations

from lamina.dockerapi._router import route  # noqa: F401 - handlers register on it
