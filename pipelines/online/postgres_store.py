"""The PostgreSQL online store (psycopg 3).

Layout, in the schema ``serving.postgres.schema`` (``lookalike``), documented for the site in
docs/serving.md::

    generations(generation, feed, ds, run_id, state, lists, created_at, switched_at)
    live(feed primary key, generation)             the pointer: which generation each feed serves
    item_neighbors_g<N>(item_id primary key, ids text[], scores real[])
    item_neighbors_variants_g<N>(experiment, variant, item_id, ids, scores)   primary key (experiment, variant, item_id)
    user_recommendations_g<N>(user_id primary key, ids, scores)
    item_neighbors, item_neighbors_variants, user_recommendations   views of the live generation's tables

A generation's tables are loaded with COPY, indexed, analysed and checked while invisible; one
transaction then updates the ``live`` row and replaces the feed's views. A reader's statement
sees the views before or after that transaction, never a mixture, and every key on sale in both
nights is in both tables.
"""
from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from lookalike import faults
from lookalike.config import PostgresSinkConfig, redact_url
from lookalike.errors import ConfigError, LookalikeError, TransientError
from lookalike.online.lists import ListTable, list_text, plain_ids
from lookalike.online.store import HISTORY_KEPT, LIVE, READY, RETIRED, Generation, Switch, required_url, writer

log = logging.getLogger(__name__)

COPY_BATCH = 50_000  # lists rendered and sent per COPY write


# SQLSTATE classes a retry can fix: connection exception, transaction rollback (serialization failure,
# deadlock), insufficient resources, operator intervention (admin shutdown, crash, cannot connect now,
# statement cancelled), system error.
TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
NO_GRANT = ("42501",)  # insufficient_privilege
NO_LAYOUT = ("3F000", "42P01", "42703")  # invalid schema, undefined table, undefined column
NO_LOGIN = ("28000", "28P01", "3D000")  # invalid authorization, wrong password, unknown database


def failure(exc: Exception, where: str) -> Exception | None:
    """The error a psycopg failure is reported as, by its SQLSTATE (never its text, which the server's
    ``lc_messages`` translates): transient, a configuration error naming what to grant or create, or
    None: not a store condition, a bug (raised as it is, traceback kept)."""
    import psycopg

    code = getattr(exc, "sqlstate", None) or ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if code[:2] in TRANSIENT_CLASSES or (not code and isinstance(exc, psycopg.OperationalError)):
        return TransientError(f"{where}: {message}" + (f" (SQLSTATE {code})" if code else ""))
    if code in NO_GRANT:
        return ConfigError(f"{where}: {message} (SQLSTATE {code}): the role lacks a grant; docs/serving.md, "
                           "\"Roles and grants\", lists what the writer and the site's readers need")
    if code in NO_LAYOUT:
        return ConfigError(f"{where}: {message} (SQLSTATE {code}): the store has no Lookalike layout yet, or an "
                           "older one; the first hand-off or `lookalike serving init` creates it")
    if code in NO_LOGIN:
        return ConfigError(f"{where}: {message} (SQLSTATE {code})")
    return None


class PostgresStore:
    name = "postgres"

    def __init__(self, cfg: PostgresSinkConfig, url: str, *, lock_timeout: int = 120):
        url = required_url("postgres", url, cfg.conn_id, "postgresql://…")
        self.url = url.replace("postgresql+psycopg://", "postgresql://")
        self.schema, self.timeout, self.lock_timeout = cfg.schema, cfg.connect_timeout, lock_timeout
        self._conn, self._leased = None, None

    def display(self) -> str:
        return f"postgres {redact_url(self.url)} (schema {self.schema})"

    # ---- connection ----
    def connect(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            if self._leased is not None:  # the lease was the lost session's: nothing more may be written
                raise TransientError(f"serving sink postgres at {redact_url(self.url)}: the connection holding "
                                     f"the {self._leased} lease was lost; the writer stops here and is retried")
            try:
                self._conn = psycopg.connect(self.url, connect_timeout=self.timeout, autocommit=True,
                                             application_name="lookalike")
            except psycopg.Error as exc:
                raise (failure(exc, f"serving sink postgres at {redact_url(self.url)}") or exc) from None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _cursor(self, *, transaction: bool = False):
        """A cursor on the connection (in one transaction when asked); a store failure is raised as what
        its SQLSTATE says (``failure``), the sink named; a lost connection is closed."""
        import psycopg

        try:
            conn = self.connect()
            with (conn.transaction() if transaction else contextlib.nullcontext()), conn.cursor() as cur:
                yield cur
        except psycopg.Error as exc:
            if self._conn is not None and self._conn.broken:
                self.close()
            mapped = failure(exc, f"serving sink postgres at {redact_url(self.url)}")
            if mapped is None:
                raise
            raise mapped from exc

    def _execute(self, sql: str, params=(), *, fetch: bool = False):
        with self._cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if fetch else None

    def init(self, grant_to: str | None = None) -> None:
        """Create the schema and the bookkeeping tables (idempotent, no lock on what exists); with
        ``grant_to``, let that role read what the site reads, now and in every later generation."""
        s = self.schema
        with self._cursor() as cur:
            cur.execute(f"create schema if not exists {s}")
            cur.execute(f"""create table if not exists {s}.generations (
                generation bigserial primary key,
                feed text not null,
                ds date not null,
                run_id text not null,
                state text not null,
                lists jsonb,
                created_at timestamptz not null default now(),
                switched_at timestamptz,
                as_of text)""")
            cur.execute("select 1 from information_schema.columns where table_schema = %s "
                        "and table_name = 'generations' and column_name = 'as_of'", (s,))
            if cur.fetchone() is None:  # a store from before the hours
                cur.execute(f"alter table {s}.generations add column as_of text")
            cur.execute(f"create table if not exists {s}.live (feed text primary key, generation bigint not null)")
            cur.execute(f"""create table if not exists {s}.history (
                id bigserial primary key,
                feed text not null,
                generation bigint not null,
                ds date not null,
                run_id text not null,
                as_of text,
                at timestamptz not null default now(),
                by text not null,
                previous bigint)""")
            cur.execute(f"create table if not exists {s}.leases (feed text primary key, holder text not null, "
                        f"since timestamptz not null)")
            if grant_to:
                from psycopg import sql

                role = sql.Identifier(grant_to).as_string(cur)
                cur.execute(f"grant usage on schema {s} to {role}")
                cur.execute(f"grant select on all tables in schema {s} to {role}")
                cur.execute(f"alter default privileges in schema {s} grant select on tables to {role}")

    @contextlib.contextmanager
    def lease(self, feed: str):
        """The feed's writer lease: a session advisory lock in the store's database, held by this
        connection (a lost connection loses it, and ``connect`` then refuses to go on)."""
        self.init()
        key = f"lookalike:{self.schema}:{feed}"
        with self._cursor() as cur:
            cur.execute(f"set lock_timeout = '{int(self.lock_timeout * 1000)}ms'")
            try:
                cur.execute("select pg_advisory_lock(hashtextextended(%s, 0))", (key,))
            except Exception as exc:
                if getattr(exc, "sqlstate", None) != "55P03":  # lock_not_available
                    raise
                cur.execute(f"select holder, since from {self.schema}.leases where feed = %s", (feed,))
                row = cur.fetchone()
                held = f"{row[0]} since {_iso(row[1])}" if row else "a writer that has not said who yet"
                raise TransientError(f"serving sink postgres: the {feed} feed's writer lease is held by {held}; "
                                     f"waited {self.lock_timeout} s (serving.lock_timeout)") from None
            finally:
                if not self._conn.broken:
                    cur.execute("set lock_timeout = 0")
            cur.execute(f"insert into {self.schema}.leases (feed, holder, since) values (%s, %s, now()) "
                        f"on conflict (feed) do update set holder = excluded.holder, since = excluded.since",
                        (feed, writer()))
        self._leased = feed
        try:
            yield
        finally:
            self._leased = None
            if self._conn is not None and not self._conn.closed:
                with contextlib.suppress(Exception):
                    self._execute(f"delete from {self.schema}.leases where feed = %s", (feed,))
                    self._execute("select pg_advisory_unlock(hashtextextended(%s, 0))", (key,))

    # ---- generations ----
    def generations(self, feed: str) -> list[Generation]:
        rows = self._execute(f"select generation, feed, ds::text, run_id, state, coalesce(lists, '{{}}'::jsonb), "
                             f"created_at, switched_at, as_of from {self.schema}.generations where feed = %s "
                             f"order by generation desc", (feed,), fetch=True)
        return [Generation(g, f, ds, run, state, lists, _iso(created), _iso(switched), as_of)
                for g, f, ds, run, state, lists, created, switched, as_of in rows]

    def begin(self, feed: str, ds: str, run_id: str) -> int:
        """A new generation, ``writing``, numbered after every earlier one (run inside ``lease``)."""
        return self._execute(f"insert into {self.schema}.generations (feed, ds, run_id, state) "
                             f"values (%s, %s, %s, 'writing') returning generation", (feed, ds, run_id),
                             fetch=True)[0][0]

    def _table(self, spec: ListTable, generation: int) -> str:
        return f"{self.schema}.{spec.name}_g{generation}"

    def write(self, generation: int, spec: ListTable, lists: pa.Table) -> None:
        """COPY the lists into the generation's table for ``spec``, then its primary key and statistics."""
        table = self._table(spec, generation)
        keys = ", ".join(f"{k} text not null" for k in spec.keys)
        with self._cursor() as cur:
            cur.execute(f"drop table if exists {table}")
            cur.execute(f"create table {table} ({keys}, ids text[] not null, scores real[] not null)")
            columns = ", ".join([*spec.keys, "ids", "scores"])
            with cur.copy(f"copy {table} ({columns}) from stdin") as copy:
                if plain_ids(lists, spec):
                    for start in range(0, lists.num_rows, COPY_BATCH):
                        copy.write(_copy_text(lists.slice(start, COPY_BATCH), spec))
                        faults.point("handoff.postgres_mid_copy")
                else:  # ids that need quoting: psycopg's own adaptation, row by row
                    for row in lists.to_pylist():
                        copy.write_row([*(row[k] for k in spec.keys), row["ids"], row["scores"]])
            cur.execute(f"alter table {table} add primary key ({', '.join(spec.keys)})")
            cur.execute(f"analyze {table}")

    def finish(self, generation: int, lists: dict[str, int]) -> None:
        import json

        self._execute(f"update {self.schema}.generations set state = 'ready', lists = %s where generation = %s",
                      (json.dumps(lists), generation))

    def count(self, generation: int, spec: ListTable) -> tuple[int, int]:
        """(lists, members) in the generation's table."""
        rows = self._execute(f"select count(*), coalesce(sum(cardinality(ids)), 0) from {self._table(spec, generation)}",
                             fetch=True)
        return int(rows[0][0]), int(rows[0][1])

    def read(self, generation: int, spec: ListTable, keys: list[tuple]) -> dict[tuple, tuple[list, list]]:
        """The lists of ``keys`` in the generation's table (missing keys left out)."""
        if not keys:
            return {}
        where = " and ".join(f"t.{k} = v.{k}" for k in spec.keys)
        values = ", ".join(["(" + ", ".join(["%s"] * len(spec.keys)) + ")"] * len(keys))
        rows = self._execute(f"select {', '.join('t.' + k for k in spec.keys)}, t.ids, t.scores "
                             f"from {self._table(spec, generation)} t join (values {values}) "
                             f"as v({', '.join(spec.keys)}) on {where}",
                             [part for key in keys for part in key], fetch=True)
        n = len(spec.keys)
        return {tuple(row[:n]): (row[n], row[n + 1]) for row in rows}

    def switch(self, feed: str, generation: int, tables: tuple[ListTable, ...]) -> float:
        """Make ``generation`` the feed's live one in one transaction: the pointer row, the states, the
        views and a history entry; only if it is complete (ready, or kept after being live). Returns the
        seconds the transaction took."""
        s = self.schema
        started = time.perf_counter()
        with self._cursor(transaction=True) as cur:
            cur.execute(f"lock table {s}.live in exclusive mode")
            cur.execute(f"select state, ds::text, run_id, as_of from {s}.generations "
                        f"where generation = %s and feed = %s for update", (generation, feed))
            target = cur.fetchone()
            if target is None or target[0] not in (READY, RETIRED, LIVE):
                raise LookalikeError(f"serving sink postgres: {feed} generation {generation} is "
                                     f"{'gone' if target is None else target[0]}; only a complete one is switched to")
            cur.execute(f"select generation from {s}.live where feed = %s", (feed,))
            previous = (cur.fetchone() or (None,))[0]
            cur.execute(f"update {s}.generations set state = 'retired' where feed = %s and state = 'live'", (feed,))
            cur.execute(f"update {s}.generations set state = 'live', switched_at = now() where generation = %s",
                        (generation,))
            cur.execute(f"insert into {s}.live (feed, generation) values (%s, %s) on conflict (feed) "
                        f"do update set generation = excluded.generation", (feed, generation))
            for spec in tables:
                cur.execute(f"create or replace view {s}.{spec.name} as select * from {self._table(spec, generation)}")
            cur.execute(f"insert into {s}.history (feed, generation, ds, run_id, as_of, by, previous) "
                        f"values (%s, %s, %s, %s, %s, %s, %s)", (feed, generation, *target[1:], writer(),
                                                                 previous if previous != generation else None))
            cur.execute(f"delete from {s}.history where feed = %s and id <= (select id from {s}.history "
                        f"where feed = %s order by id desc offset %s limit 1)", (feed, feed, HISTORY_KEPT))
            faults.point("handoff.postgres_in_switch")
        return time.perf_counter() - started

    def history(self, feed: str) -> list[Switch]:
        rows = self._execute(f"select feed, generation, ds::text, run_id, as_of, at, by, previous "
                             f"from {self.schema}.history where feed = %s order by id desc", (feed,), fetch=True)
        return [Switch(f, g, ds, run, as_of, _iso(at), by, previous) for f, g, ds, run, as_of, at, by, previous in rows]

    def patch(self, feed: str, spec: ListTable, *, expect, changes, as_of: str) -> tuple[Generation | None, str]:
        """Rewrite the lists and remove the withdrawn keys that ``changes(live)`` gives, in the live generation's
        table, in one transaction that also records ``as_of``, when ``expect(live)`` (the live generation, under
        the lock a switch takes) says so; its refusal is returned with the generation and nothing is written.
        The rewritten lists are checked inside the transaction; a mismatch rolls everything back. The
        live generation's row is read locked (``for update``), so its ``as_of`` is compared with this hour's
        under the lock."""
        s = self.schema
        with self._cursor(transaction=True) as cur:
            cur.execute(f"lock table {s}.live in share row exclusive mode")  # a switch waits; readers do not
            cur.execute(f"select l.generation from {s}.live l where l.feed = %s", (feed,))
            row = cur.fetchone()
            if row is not None:
                cur.execute(f"select 1 from {s}.generations where generation = %s for update", (row[0],))
            live = next((g for g in self.generations(feed) if row and g.number == row[0]), None)
            refusal = expect(live)
            if refusal:
                return live, refusal
            lists, withdrawn = changes(live)
            table = self._table(spec, live.number)
            keys = [*lists.column("item_id").to_pylist(), *withdrawn]
            cur.execute(f"delete from {table} where item_id = any(%s)", (keys,))
            with cur.copy(f"copy {table} (item_id, ids, scores) from stdin") as copy:
                if plain_ids(lists, spec):
                    copy.write(_copy_text(lists, spec))
                else:
                    for one in lists.to_pylist():
                        copy.write_row([one["item_id"], one["ids"], one["scores"]])
            faults.point("intraday.postgres_mid_patch")
            cur.execute(f"select count(*), coalesce(sum(cardinality(ids)), 0) from {table} "
                        f"where item_id = any(%s)", (keys,))
            found, members = cur.fetchone()
            expected = int(pc.sum(pc.list_value_length(lists.column("ids"))).as_py() or 0)
            if (found, members) != (lists.num_rows, expected):
                raise LookalikeError(f"serving sink postgres: after the patch generation {live.number} holds {found} "
                                  f"lists ({members} members) of the {lists.num_rows} written ({expected}) and "
                                  f"{len(withdrawn)} withdrawn; rolled back")
            cur.execute(f"update {s}.generations set as_of = %s where generation = %s", (as_of, live.number))
        return live, ""

    def drop(self, generation: int, tables: tuple[ListTable, ...]) -> None:
        for spec in tables:
            self._execute(f"drop table if exists {self._table(spec, generation)}")
        self._execute(f"delete from {self.schema}.generations where generation = %s", (generation,))

    # ---- the site's read path ----
    def lookup(self, spec: ListTable, key: tuple) -> tuple[int, list, list] | None:
        """(live generation, ids, scores) of ``key``, read as a site does: one statement on the view."""
        where = " and ".join(f"t.{k} = %s" for k in spec.keys)
        rows = self._execute(f"select l.generation, t.ids, t.scores from {self.schema}.{spec.name} t, "
                             f"{self.schema}.live l where l.feed = %s and {where}", (spec.feed, *key), fetch=True)
        return (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None


def _iso(value) -> str | None:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds") if isinstance(value, datetime) else None


def _copy_text(lists: pa.Table, spec: ListTable) -> bytes:
    """COPY's text format for lists whose ids need no quoting (``plain_ids``): one line per list,
    ``key<TAB>…{id1,id2}<TAB>{0.93,0.91}``, rendered by Arrow's string kernels, not row by row."""
    arrays = list_text(lists, ids=("{", ",", "}"), scores=("{", ",", "}"), between="\t")
    line = pc.binary_join_element_wise(*(lists.column(k) for k in spec.keys), arrays, "\t")
    return ("\n".join(line.to_pylist()) + "\n").encode() if len(line) else b""
