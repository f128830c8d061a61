"""Crash points for failure-injection tests.

``LOOKALIKE_FAULT=<point>`` kills the process with SIGKILL when it reaches ``point`` — no
cleanup, no ``finally``, exactly like a lost worker. Tests use it to prove that a crash at the
worst moment (e.g. ``publish.before_commit``: every file written, the manifest not yet switched)
leaves what was published intact. Unset in production: :func:`point` is then a no-op.

The points: ``extract.mid_write`` (snapshot written, catalogue not), ``publish.between_tables``,
``publish.before_commit``, ``publish.during_switch`` (local: the new manifest written but not
renamed in; S3: before the conditional PUT) and ``publish.after_switch`` (before the run record and
the clean-up), the publish points in both publish tasks.
"""
from __future__ import annotations

import logging
import os
import signal

FAULT_ENV = "LOOKALIKE_FAULT"

log = logging.getLogger(__name__)


def point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        log.error("%s=%s: killing this process", FAULT_ENV, name)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
