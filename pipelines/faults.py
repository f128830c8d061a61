"""Crash points for failure-injection tests.

``LOOKALIKE_FAULT=<point>`` (or ``<point>@<n>``: its n-th time) kills the process with SIGKILL when it reaches ``point`` — no
cleanup, no ``finally``, exactly like a lost worker. Tests use it to prove that a crash at the
worst moment (e.g. ``publish.before_commit``: every file written, the manifest not yet switched)
leaves what was published intact. Unset in production: :func:`point` is then a no-op.

The points: ``extract.mid_write`` (snapshot written, catalogue not), ``train.mid_checkpoint`` (a
checkpoint written but not renamed in), ``embed.mid_spark`` (the driver, while a Spark job of the
embedding runs), ``neighbors.mid_stream`` (the first block of lists written, the file not closed),
``neighbors.mid_spark`` (the driver, once a Spark task of the search wrote its part),
``neighbors.mid_update`` (the night's update of the kept lists, after its first block),
``handoff.postgres_mid_copy``, ``handoff.redis_mid_write``, ``handoff.before_check``,
``handoff.postgres_in_switch`` (inside the switch's transaction), ``handoff.before_switch``,
``handoff.after_switch`` (the online hand-off, tests/online/test_faults.py),
``publish.between_tables``, ``publish.before_commit``, ``publish.during_switch`` (local: the new
manifest written but not renamed in; S3: before the conditional PUT) and ``publish.after_switch``
(before the run record and the clean-up), the publish points in both publish tasks;
``intraday.before_lists`` (an hour's changes written, its lists not), ``intraday.before_marker`` (everything
of the hour written but ``hour.json``), ``intraday.before_publish`` (its files uploaded, the manifest not
switched), ``intraday.postgres_mid_patch`` (inside the patch's transaction) and
``intraday.redis_before_exec`` (the patch queued in MULTI, not executed): tests/intraday/test_faults.py.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable

FAULT_ENV = "LOOKALIKE_FAULT"
ONCE_ENV = "LOOKALIKE_FAULT_ONCE"  # a marker file: the point fires in the first process to reach it, then never
HOLD_ENV = "LOOKALIKE_HOLD"  # <point>:<file>: wait at the point until the file exists

log = logging.getLogger(__name__)


_reached: dict[str, int] = {}


def _target() -> tuple[str, int]:
    """The point ``LOOKALIKE_FAULT`` names and the time it fires at (``name`` or ``name@n``)."""
    target, _, nth = os.environ.get(FAULT_ENV, "").partition("@")
    return target, int(nth or 1)


def _armed(name: str) -> bool:
    """Whether this is the time ``LOOKALIKE_FAULT`` names for this point in this process."""
    target, nth = _target()
    if target != name:
        return False
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] != nth:
        return False
    once = os.environ.get(ONCE_ENV)
    if once:  # across processes: only the first to create the marker file is killed
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
    return True


def point(name: str) -> None:
    _hold(name)
    if _armed(name):
        log.error("%s=%s: killing this process", FAULT_ENV, os.environ[FAULT_ENV])
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def _hold(name: str, timeout: float = 600) -> None:
    """``LOOKALIKE_HOLD=<point>:<file>``: wait at ``point`` until ``file`` exists (a test makes another
    run land in between: two runs racing in the worst order, deterministically)."""
    target, _, release = os.environ.get(HOLD_ENV, "").partition(":")
    if target != name or not release:
        return
    log.warning("%s: holding at %s until %s exists", HOLD_ENV, name, release)
    deadline = time.monotonic() + timeout
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.2)


def point_when(name: str, ready: Callable[[], bool], every: float = 0.1) -> None:
    """Reach ``name`` from a watcher thread as soon as ``ready()`` is true (a crash in the middle of
    work this thread waits on, such as a Spark job)."""
    if _target()[0] != name:
        return

    def watch() -> None:
        while not ready():
            time.sleep(every)
        point(name)

    threading.Thread(target=watch, name=f"fault-{name}", daemon=True).start()
