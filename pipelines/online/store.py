"""The contract every online store keeps (``OnlineStore``), and what it speaks in: generations,
switches and the writer's lease. The hand-off (``pipelines/online/handoff.py``, where a store is
chosen from the config: ``open_store(cfg, name)``) and the tests use nothing else.

A store keeps *generations*: each is one published run of a feed (``items``: item_neighbors and
the experiment arms, from lookalike_nightly; ``users``: user_recommendations, from
lookalike_user_recs), written completely and checked while invisible, then made live in one atomic
step; the site reads the live one (docs/serving.md). Between nights, each intraday hour rewrites
the lists it changed inside the live generation (``patch``).

Promises:

- **One writer per feed.** Whatever writes (``begin`` … ``switch``, ``patch``, ``drop``) runs inside
  ``lease(feed)``: a second writer waits up to ``serving.lock_timeout`` seconds and then fails as
  transient, naming the holder and since when. The lease is checked (fenced) in the same atomic
  step that switches or patches, so a writer that lost it changes nothing live.
- **Ordering.** ``generations`` and ``history`` come back newest first.
- **Atomic switch.** ``switch`` makes a generation live only if it is complete (``ready``, or kept
  after being live); the pointer, the states and a history entry change together or not at all.
- **Atomic patch.** ``patch`` reads the live generation and its ``as_of`` inside the step that
  writes, so an hour never overwrites a newer one.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import socket
from dataclasses import asdict, dataclass
from typing import Callable, ContextManager, Protocol, runtime_checkable

import pyarrow as pa

from lookalike.online.lists import ListTable

WRITING, READY, LIVE, RETIRED = "writing", "ready", "live", "retired"
HISTORY_KEPT = 200  # switches each store remembers per feed


@dataclass(frozen=True)
class Generation:
    number: int
    feed: str
    ds: str
    run_id: str
    state: str  # writing (or its writer died), ready (checked, not yet switched), live, retired (was live)
    lists: dict  # table → lists written
    created_at: str | None = None
    switched_at: str | None = None
    as_of: str | None = None  # the newest intraday hour applied to it (``patch``), None: the night as published

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Switch:
    """One entry of a store's switch history: ``generation`` went live, replacing ``previous``."""
    feed: str
    generation: int
    ds: str
    run_id: str
    as_of: str | None  # the hour the generation held when it went live
    at: str  # when (UTC)
    by: str  # the DAG run and task, or the CLI's user, host and process
    previous: int | None  # the generation live before; ``serving rollback`` makes it live again

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class OnlineStore(Protocol):
    name: str

    def display(self) -> str: ...
    def init(self, grant_to: str | None = None) -> None: ...
    def close(self) -> None: ...
    def lease(self, feed: str) -> ContextManager[None]: ...
    def generations(self, feed: str) -> list[Generation]: ...
    def history(self, feed: str) -> list[Switch]: ...
    def begin(self, feed: str, ds: str, run_id: str) -> int: ...
    def write(self, generation: int, spec: ListTable, lists: pa.Table) -> None: ...
    def finish(self, generation: int, lists: dict[str, int]) -> None: ...
    def count(self, generation: int, spec: ListTable) -> tuple[int, int | None]: ...
    def read(self, generation: int, spec: ListTable, keys: list[tuple]) -> dict[tuple, tuple[list, list]]: ...
    def switch(self, feed: str, generation: int, tables: tuple[ListTable, ...]) -> float: ...
    def patch(self, feed: str, spec: ListTable, *, expect: Callable, changes: Callable,
              as_of: str) -> tuple[Generation | None, str]: ...
    def drop(self, generation: int, tables: tuple[ListTable, ...]) -> None: ...
    def lookup(self, spec: ListTable, key: tuple) -> tuple[int, list, list] | None: ...


def writer() -> str:
    """Who is writing, for the lease and the switch history: the DAG run and task inside Airflow,
    else the CLI's user, host and process."""
    dag, run, task = (os.environ.get(f"AIRFLOW_CTX_{part}") for part in ("DAG_ID", "DAG_RUN_ID", "TASK_ID"))
    if dag and run:
        return f"{dag} {run} {task or ''}".strip()
    with contextlib.suppress(Exception):
        return f"cli {getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"
    return f"cli pid {os.getpid()}"


def required_url(sink: str, url: str, conn_id: str, example: str) -> str:
    """``url``, or a clear error naming the sink and the two places its URL may come from."""
    if not url:
        from lookalike.errors import ConfigError

        raise ConfigError(f"serving sink {sink}: no URL; set serving.{sink}.url ({example}) or define the "
                          f"Airflow Connection {conn_id!r}")
    return url
