"""What every process Lookalike starts shares: it dies with its parent, so nothing outlives the
task that started it (the launcher's jobs, extract's decode processes)."""
from __future__ import annotations

import os
import signal


def die_with_parent(parent: int | None = None) -> None:
    """In a child process: SIGKILL when its parent dies (Linux; elsewhere a no-op). With the
    parent's pid, a parent already gone when this runs kills the child at once."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
