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
        import threading

        # To this thread, not the process: a signal to the process is taken by its main
        # thread, and this one ran on (a controller's thread went into the next step)
        # until the main thread stopped them all.
        signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
