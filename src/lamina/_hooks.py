"""Named points where tests stop a lamina command, to kill or race it there.

``LAMINA_TEST_STOP_AT=<point>``: the process sends itself SIGSTOP on reaching that
point (e.g. ``create:held``), so a test can wait until it is stopped, act (``rmi``,
SIGKILL), and know exactly which step the command had reached. Read only by tests;
unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os

ENV = "LAMINA_TEST_STOP_AT"


def stop_point(name: str) -> None:
    """SIGSTOP this process when the tests asked to stop at ``name``."""
    if os.environ.get(ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)
