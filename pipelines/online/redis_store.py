"""The Redis online store (redis-py).

Layout, under the prefix ``serving.redis.prefix`` (``lookalike``), documented for the site in
docs/serving.md::

    <p>:live:<feed>            the pointer: the number of the generation the feed serves (items | users)
    <p>:g:<N>:<table>          a hash: one field per list (the item id; experiment:variant:item_id for
                               the arms; the user id), its value [["id1","id2",…],[score1,score2,…]]
    <p>:g:<N>                  a hash: the generation's feed, ds, run_id, state, lists, created_at, switched_at
    <p>:generations            a sorted set of every generation number
    <p>:generation             the counter new generations are numbered from

A generation's hashes are filled with pipelined HSETs and checked while nothing points at them;
one MULTI/EXEC (under WATCH of the pointer) then sets the pointer and the states. A site reads
the pointer and then one field (two commands, or one round trip with the script in
docs/serving.md); the previous generation is kept (``serving.keep_generations`` >= 2) so a
reader that read the pointer just before a switch still finds its field.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pyarrow as pa

from lookalike import faults
from lookalike.config import RedisSinkConfig, redact_url
from lookalike.errors import ConfigError, TransientError
from lookalike.online.lists import ListTable, decode_json, encode_json
from lookalike.online.store import LIVE, READY, RETIRED, WRITING, Generation, required_url

# The site's read in one round trip: the live generation and the list, atomically.
LOOKUP_SCRIPT = """
local g = redis.call('GET', KEYS[1])
if not g then return false end
return {g, redis.call('HGET', ARGV[1] .. g .. ':' .. ARGV[2], ARGV[3])}
"""


class RedisStore:
    name = "redis"

    def __init__(self, cfg: RedisSinkConfig, url: str):
        self.url = required_url("redis", url, cfg.conn_id, "redis://…")
        self.prefix, self.batch, self.timeout = cfg.prefix, cfg.batch, cfg.connect_timeout
        self._client = self._lookup = None

    def display(self) -> str:
        return f"redis {redact_url(self.url)} (prefix {self.prefix})"

    # ---- connection ----
    def client(self):
        import redis

        if self._client is None:
            try:
                self._client = redis.Redis.from_url(self.url, socket_connect_timeout=self.timeout,
                                                    socket_timeout=max(self.timeout, 60))
                self._client.ping()
            except ValueError as exc:
                self._client = None
                raise ConfigError(f"serving sink redis: bad URL {redact_url(self.url)!r}: {exc}") from None
            except redis.exceptions.AuthenticationError as exc:
                self._client = None
                raise ConfigError(f"serving sink redis at {redact_url(self.url)}: {exc}") from None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                self._client = None
                raise TransientError(f"serving sink redis at {redact_url(self.url)} is unreachable: {exc}") from None
            except redis.exceptions.ResponseError as exc:
                self._client = None
                raise ConfigError(f"serving sink redis at {redact_url(self.url)}: {exc}") from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, fn):
        import redis

        try:
            return fn(self.client())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self.close()
            raise TransientError(f"serving sink redis at {redact_url(self.url)}: {exc}") from exc

    def _key(self, *parts) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    # ---- generations ----
    def generations(self, feed: str) -> list[Generation]:
        def read(r):
            numbers = [int(n) for n in r.zrevrange(self._key("generations"), 0, -1)]
            pipe = r.pipeline(transaction=False)
            for n in numbers:
                pipe.hgetall(self._key("g", n))
            return zip(numbers, pipe.execute())

        found = []
        for number, meta in self._call(read):
            meta = {k.decode(): v.decode() for k, v in meta.items()}
            if meta.get("feed") == feed:
                found.append(Generation(number, feed, meta["ds"], meta["run_id"], meta.get("state", WRITING),
                                        json.loads(meta.get("lists") or "{}"), meta.get("created_at"),
                                        meta.get("switched_at") or None, meta.get("as_of") or None))
        return found

    def orphans(self) -> list[int]:
        """Numbers in the sorted set whose metadata is gone (a writer killed between the two)."""
        def read(r):
            numbers = [int(n) for n in r.zrange(self._key("generations"), 0, -1)]
            pipe = r.pipeline(transaction=False)
            for n in numbers:
                pipe.exists(self._key("g", n))
            return [n for n, exists in zip(numbers, pipe.execute()) if not exists]

        return self._call(read)

    def begin(self, feed: str, ds: str, run_id: str) -> int:
        def create(r):
            number = int(r.incr(self._key("generation")))
            pipe = r.pipeline(transaction=True)
            pipe.zadd(self._key("generations"), {str(number): number})
            pipe.hset(self._key("g", number), mapping={"feed": feed, "ds": ds, "run_id": run_id, "state": WRITING,
                                                       "created_at": _now()})
            pipe.execute()
            return number

        return self._call(create)

    def write(self, generation: int, spec: ListTable, lists: pa.Table) -> None:
        """Fill the generation's hash for ``spec`` with one field per list, in pipelined batches."""
        key = self._key("g", generation, spec.name)
        fields = [":".join(parts) for parts in zip(*(lists.column(k).to_pylist() for k in spec.keys))] \
            if lists.num_rows else []
        values = encode_json(lists, spec)

        def fill(r):
            r.unlink(key)
            pipe = r.pipeline(transaction=False)
            for start in range(0, len(fields), self.batch):
                pipe.hset(key, mapping=dict(zip(fields[start:start + self.batch], values[start:start + self.batch])))
                if len(pipe) >= 8:
                    pipe.execute()
                    faults.point("handoff.redis_mid_write")
            pipe.execute()

        self._call(fill)

    def finish(self, generation: int, lists: dict[str, int]) -> None:
        self._call(lambda r: r.hset(self._key("g", generation), mapping={"state": READY, "lists": json.dumps(lists)}))

    def count(self, generation: int, spec: ListTable) -> tuple[int, None]:
        """(lists, None): Redis cannot sum the list lengths without reading every value."""
        return int(self._call(lambda r: r.hlen(self._key("g", generation, spec.name)))), None

    def read(self, generation: int, spec: ListTable, keys: list[tuple]) -> dict[tuple, tuple[list, list]]:
        if not keys:
            return {}
        values = self._call(lambda r: r.hmget(self._key("g", generation, spec.name), [spec.field(k) for k in keys]))
        return {key: decode_json(value) for key, value in zip(keys, values) if value is not None}

    def switch(self, feed: str, generation: int, tables: tuple[ListTable, ...]) -> float:
        """Point the feed at ``generation`` in one MULTI/EXEC, watching the pointer (a switch of this feed
        that lands first makes it read the pointer again). Returns its seconds."""
        pointer = self._key("live", feed)
        started = time.perf_counter()

        def flip(pipe):
            old = pipe.get(pointer)
            pipe.multi()
            pipe.set(pointer, generation)
            pipe.hset(self._key("g", generation), mapping={"state": LIVE, "switched_at": _now()})
            if old is not None and int(old) != generation:
                pipe.hset(self._key("g", int(old)), "state", RETIRED)
            pipe.execute()

        self._call(lambda r: _watching(r, pointer, flip))
        return time.perf_counter() - started

    def patch(self, feed: str, spec: ListTable, *, expect, changes, as_of: str) -> tuple[Generation | None, str]:
        """Set the lists and delete the withdrawn fields that ``changes(live)`` gives, in the live generation's
        hash, and record ``as_of``, in one MULTI/EXEC under WATCH of the pointer, when ``expect(live)`` says so
        (its refusal is returned with the generation, nothing written). A switch that lands first makes it read
        the pointer again."""
        pointer = self._key("live", feed)

        def apply(pipe):
            number = pipe.get(pointer)
            live = next((g for g in self.generations(feed) if number and g.number == int(number)), None)
            refusal = expect(live)
            if refusal:
                return live, refusal
            lists, withdrawn = changes(live)
            fields = [spec.field((key,)) for key in lists.column("item_id").to_pylist()]
            values = encode_json(lists, spec)
            pipe.watch(self._key("g", live.number))  # another hour's patch of it: read again
            pipe.multi()
            key = self._key("g", live.number, spec.name)
            if withdrawn:
                pipe.hdel(key, *withdrawn)
            for start in range(0, len(fields), self.batch):
                pipe.hset(key, mapping=dict(zip(fields[start:start + self.batch], values[start:start + self.batch])))
            pipe.hset(self._key("g", live.number), "as_of", as_of)
            faults.point("intraday.redis_before_exec")
            pipe.execute()
            return live, ""

        return self._call(lambda r: _watching(r, pointer, apply))

    def drop(self, generation: int, tables: tuple[ListTable, ...] = ()) -> None:
        def remove(r):
            keys = list(r.scan_iter(match=self._key("g", generation, "*"), count=1000))
            if keys:
                r.unlink(*keys)
            r.unlink(self._key("g", generation))
            r.zrem(self._key("generations"), str(generation))

        self._call(remove)

    # ---- the site's read path ----
    def lookup(self, spec: ListTable, key: tuple) -> tuple[int, list, list] | None:
        """(live generation, ids, scores) of ``key`` in one round trip (``LOOKUP_SCRIPT``)."""
        def read(r):
            if self._lookup is None:
                self._lookup = r.register_script(LOOKUP_SCRIPT)
            return self._lookup(keys=[self._key("live", spec.feed)],
                                args=[self._key("g", ""), spec.name, spec.field(key)])

        found = self._call(read)
        if not found or found[1] is None:
            return None
        ids, scores = decode_json(found[1])
        return int(found[0]), ids, scores


def _watching(r, key: str, body):
    """``body(pipe)`` with ``key`` watched, run again whenever a write to it lands first (WatchError)."""
    import redis

    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                return body(pipe)
            except redis.exceptions.WatchError:
                continue


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
