"""Crash points for the tests that prove interrupted work can be repaired.

When ``COZYD_CRASH_AT`` names a checkpoint, the process kills itself with
SIGKILL when it reaches it, exactly as an operator's ``kill -9`` would. It
is read once at start; production never sets it.
"""

from __future__ import annotations

import os
import signal

_CRASH_AT = os.environ.get("COZYD_CRASH_AT", "")


def checkpoint(name: str) -> None:
    if _CRASH_AT and name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
