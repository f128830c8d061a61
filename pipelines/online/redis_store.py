"""The Redis online store (redis-py), on one node or a Redis Cluster (found out on connect).

Layout, under the prefix ``serving.redis.prefix`` (``lookalike``), documented for the site in
docs/serving.md. A feed's bookkeeping shares one hash slot (the ``{feed}`` hash tag), so every
step that changes it is one script on one node; a generation's lists are spread over ``BUCKETS``
hashes per table, and so over a cluster's nodes::

    <p>:{<feed>}:live          the pointer: the number of the generation the feed serves (items | users)
    <p>:{<feed>}:g:<N>         a hash: the generation's ds, run_id, state, lists, created_at, switched_at, as_of
    <p>:{<feed>}:generations   a sorted set of the feed's generation numbers
    <p>:{<feed>}:history       a list of the switches, newest first (JSON)
    <p>:{<feed>}:lease         the writer's lease: JSON token, holder and since, with an expiry
    <p>:generation             the counter new generations are numbered from
    <p>:g:<N>:<table>:<B>      a hash: one field per list (the item id; experiment:variant:item_id for
                               the arms; the user id), its value [["id1","id2",…],[score1,score2,…]];
                               B = CRC-32 of the field mod BUCKETS

A generation's hashes are filled with pipelined HSETs and checked while nothing points at them;
one script then checks the writer's lease and the generation's state and sets the pointer, the
states and the history. A site reads the pointer and then one field (two commands, or, on one
node, one round trip with ``LOOKUP_SCRIPT``); the previously live generation is always kept, so a
reader that read the pointer just before a switch still finds its field.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
import zlib
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from lookalike import faults
from lookalike.config import RedisSinkConfig, redact_url
from lookalike.errors import ConfigError, LookalikeError, TransientError
from lookalike.online.lists import ListTable, decode_json, encode_json
from lookalike.online.store import HISTORY_KEPT, READY, WRITING, Generation, Switch, required_url, writer

BUCKETS = 1024  # hashes per table and generation: part of the layout the site reads

# The site's read in one round trip on one node: the live generation and the list, atomically.
# KEYS[1] the pointer; ARGV: the data key's prefix (<p>:g:), table, bucket, field.
LOOKUP_SCRIPT = """
local g = redis.call('GET', KEYS[1])
if not g then return false end
return {g, redis.call('HGET', ARGV[1] .. g .. ':' .. ARGV[2] .. ':' .. ARGV[3], ARGV[4])}
"""
# A new generation: KEYS the feed's sorted set and the generation's hash; ARGV number, then field, value pairs.
BEGIN_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""
# The switch: KEYS lease, pointer, target's hash, previous one's hash, history; ARGV token, generation,
# the pointer expected (empty: none), now, the history entry, entries kept.
SWITCH_SCRIPT = """
local lease = redis.call('GET', KEYS[1])
if not lease or cjson.decode(lease)['token'] ~= ARGV[1] then return 'LEASE' end
local state = redis.call('HGET', KEYS[3], 'state')
if state ~= 'ready' and state ~= 'retired' and state ~= 'live' then return 'STATE:' .. tostring(state) end
local old = redis.call('GET', KEYS[2]) or ''
if old ~= ARGV[3] then return 'MOVED' end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'state', 'live', 'switched_at', ARGV[4])
if old ~= '' and old ~= ARGV[2] then redis.call('HSET', KEYS[4], 'state', 'retired') end
redis.call('LPUSH', KEYS[5], ARGV[5])
redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[6]) - 1)
return 'OK'
"""
# An hour's as_of on a cluster, after its lists: KEYS lease, pointer, the generation's hash; ARGV token,
# generation, as_of.
AS_OF_SCRIPT = """
local lease = redis.call('GET', KEYS[1])
if not lease or cjson.decode(lease)['token'] ~= ARGV[1] then return 'LEASE' end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 'MOVED' end
local held = redis.call('HGET', KEYS[3], 'as_of')
if held and held >= ARGV[3] then return 'NEWER:' .. held end
redis.call('HSET', KEYS[3], 'as_of', ARGV[3])
return 'OK'
"""
RENEW_SCRIPT = """
local lease = redis.call('GET', KEYS[1])
if not lease or cjson.decode(lease)['token'] ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
RELEASE_SCRIPT = """
local lease = redis.call('GET', KEYS[1])
if lease and cjson.decode(lease)['token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def bucket(field: str) -> int:
    """The hash of a generation's table that holds ``field``: CRC-32 (zlib's) of its UTF-8 bytes mod BUCKETS."""
    return zlib.crc32(field.encode()) % BUCKETS


def failure(exc: Exception, where: str) -> Exception | None:
    """The error a redis-py failure is reported as, by its class: transient (connection, timeout, a
    read-only replica during a failover, a server loading or busy, a cluster resharding or down), a
    configuration error (authentication, permissions, a bad URL), or None: a bug, raised as it is."""
    import redis.exceptions as e

    transient = (e.ReadOnlyError, e.BusyLoadingError, e.TryAgainError, e.ClusterDownError, e.MasterDownError,
                 e.ClusterError, e.TimeoutError)
    if isinstance(exc, (e.AuthenticationError, e.AuthenticationWrongNumberOfArgsError, e.NoPermissionError)):
        return ConfigError(f"{where}: {exc}")
    if isinstance(exc, (*transient, e.ConnectionError)):
        return TransientError(f"{where}: {exc.__class__.__name__}: {exc}")
    return None


class RedisStore:
    name = "redis"

    def __init__(self, cfg: RedisSinkConfig, url: str, *, lock_timeout: int = 120):
        self.url = required_url("redis", url, cfg.conn_id, "redis://…")
        self.prefix, self.batch, self.timeout = cfg.prefix, cfg.batch, cfg.connect_timeout
        self.lock_timeout, self.lease_ttl_ms = lock_timeout, cfg.lease_ttl * 1000
        self.cluster = False
        self._client, self._scripts, self._lease = None, {}, None

    def display(self) -> str:
        return f"redis {redact_url(self.url)} (prefix {self.prefix}{', cluster' if self.cluster else ''})"

    # ---- connection ----
    def client(self):
        import redis
        from redis.cluster import RedisCluster

        if self._client is None:
            options = {"socket_connect_timeout": self.timeout, "socket_timeout": max(self.timeout, 60)}
            try:
                client = redis.Redis.from_url(self.url, **options)
                clustered = client.info("cluster").get("cluster_enabled") == 1
                if clustered:
                    client.close()
                    client = RedisCluster.from_url(self.url, **options)
                client.ping()
            except ValueError as exc:
                raise ConfigError(f"serving sink redis: bad URL {redact_url(self.url)!r}: {exc}") from None
            except redis.exceptions.RedisError as exc:
                if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)) and \
                        not isinstance(exc, redis.exceptions.AuthenticationError):
                    raise TransientError(f"serving sink redis at {redact_url(self.url)} is unreachable: "
                                         f"{exc}") from None
                raise (failure(exc, f"serving sink redis at {redact_url(self.url)}")
                       or ConfigError(f"serving sink redis at {redact_url(self.url)}: {exc}")) from None
            self._client, self.cluster = client, clustered
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client, self._scripts = None, {}

    def _call(self, fn):
        """``fn(client)``; a store failure raised as what its class says (``failure``), the sink named."""
        import redis

        try:
            return fn(self.client())
        except redis.exceptions.RedisError as exc:
            mapped = failure(exc, f"serving sink redis at {redact_url(self.url)}")
            if mapped is None:
                raise
            if isinstance(mapped, TransientError):
                self.close()
            raise mapped from exc

    def _script(self, r, text: str):
        if text not in self._scripts:
            self._scripts[text] = r.register_script(text)
        return self._scripts[text]

    def _key(self, *parts) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    def _feed_key(self, feed: str, *parts) -> str:
        """A key of the feed's bookkeeping: every one in the feed's hash slot."""
        return self._key("{%s}" % feed, *parts)

    def _data_key(self, generation: int, table: str, b: int) -> str:
        return self._key("g", generation, table, b)

    def init(self, grant_to: str | None = None) -> None:
        """Nothing to create: the keys appear with the first hand-off. Grants are Redis ACLs (docs/serving.md)."""
        self.client()

    # ---- the writer's lease ----
    @contextlib.contextmanager
    def lease(self, feed: str):
        """The feed's writer lease: a key set with NX and an expiry, renewed by a thread while the writer
        works; the switch and the patch check it in the step that writes (fencing)."""
        lease = _Lease(self, feed)
        lease.acquire()
        self._lease = lease
        try:
            yield
        finally:
            self._lease = None
            lease.release()

    def _held(self, feed: str) -> _Lease:
        if self._lease is None or self._lease.feed != feed:
            raise LookalikeError(f"serving sink redis: writing the {feed} feed needs its lease (store.lease)")
        return self._lease

    # ---- generations ----
    def generations(self, feed: str) -> list[Generation]:
        def read(r):
            numbers = [int(n) for n in r.zrevrange(self._feed_key(feed, "generations"), 0, -1)]
            pipe = r.pipeline(transaction=False)
            for n in numbers:
                pipe.hgetall(self._feed_key(feed, "g", n))
            return zip(numbers, pipe.execute())

        found = []
        for number, meta in self._call(read):
            meta = {k.decode(): v.decode() for k, v in meta.items()}
            if meta:
                found.append(_generation(number, feed, meta))
        return found

    def history(self, feed: str) -> list[Switch]:
        entries = self._call(lambda r: r.lrange(self._feed_key(feed, "history"), 0, -1))
        return [Switch(**json.loads(e)) for e in entries]

    def begin(self, feed: str, ds: str, run_id: str) -> int:
        self._held(feed)

        def create(r):
            number = int(r.incr(self._key("generation")))
            meta = {"feed": feed, "ds": ds, "run_id": run_id, "state": WRITING, "created_at": _now()}
            self._script(r, BEGIN_SCRIPT)(keys=[self._feed_key(feed, "generations"), self._feed_key(feed, "g", number)],
                                          args=[number, *(part for pair in meta.items() for part in pair)])
            return number

        return self._call(create)

    def _leased_feed(self, what: str) -> str:
        if self._lease is None:
            raise LookalikeError(f"serving sink redis: {what} needs the feed's lease (store.lease)")
        return self._lease.feed

    def write(self, generation: int, spec: ListTable, lists: pa.Table) -> None:
        """Fill the generation's hashes for ``spec``, one field per list, in pipelined batches by bucket."""
        fields = [":".join(parts) for parts in zip(*(lists.column(k).to_pylist() for k in spec.keys))] \
            if lists.num_rows else []
        values = encode_json(lists, spec)
        buckets = np.fromiter((bucket(f) for f in fields), dtype=np.int64, count=len(fields))
        order = np.argsort(buckets, kind="stable")
        bounds = np.searchsorted(buckets[order], np.arange(BUCKETS + 1))

        def fill(r):
            pipe = r.pipeline(transaction=False)
            for b in range(BUCKETS):
                pipe.unlink(self._data_key(generation, spec.name, b))
            pipe.execute()
            for b in range(BUCKETS):
                rows = order[bounds[b]:bounds[b + 1]]
                for start in range(0, len(rows), self.batch):
                    chunk = rows[start:start + self.batch]
                    pipe.hset(self._data_key(generation, spec.name, b),
                              mapping={fields[i]: values[i] for i in chunk})
                if len(pipe) >= 64:
                    pipe.execute()
                    faults.point("handoff.redis_mid_write")
            pipe.execute()

        self._call(fill)

    def finish(self, generation: int, lists: dict[str, int]) -> None:
        meta = self._feed_key(self._leased_feed("finishing a generation"), "g", generation)
        self._call(lambda r: r.hset(meta, mapping={"state": READY, "lists": json.dumps(lists)}))

    def count(self, generation: int, spec: ListTable) -> tuple[int, None]:
        """(lists, None): Redis cannot sum the list lengths without reading every value."""
        def count(r):
            pipe = r.pipeline(transaction=False)
            for b in range(BUCKETS):
                pipe.hlen(self._data_key(generation, spec.name, b))
            return sum(pipe.execute())

        return int(self._call(count)), None

    def read(self, generation: int, spec: ListTable, keys: list[tuple]) -> dict[tuple, tuple[list, list]]:
        if not keys:
            return {}

        def read(r):
            pipe = r.pipeline(transaction=False)
            for key in keys:
                field = spec.field(key)
                pipe.hget(self._data_key(generation, spec.name, bucket(field)), field)
            return pipe.execute()

        values = self._call(read)
        return {key: decode_json(value) for key, value in zip(keys, values) if value is not None}

    def switch(self, feed: str, generation: int, tables: tuple[ListTable, ...]) -> float:
        """Point the feed at ``generation`` with one script that checks this writer's lease and the
        generation's state, and sets the pointer, the states and the history. Returns its seconds."""
        lease = self._held(feed)
        started = time.perf_counter()

        def flip(r):
            while True:
                old = r.get(self._feed_key(feed, "live"))
                old = int(old) if old is not None else None
                target = next((g for g in self.generations(feed) if g.number == generation), None)
                if target is None:
                    raise LookalikeError(f"serving sink redis: {feed} generation {generation} is gone; only a "
                                         "complete one is switched to")
                entry = Switch(feed, generation, target.ds, target.run_id, target.as_of, _now(), writer(),
                               old if old != generation else None)
                done = self._script(r, SWITCH_SCRIPT)(
                    keys=[lease.key, self._feed_key(feed, "live"), self._feed_key(feed, "g", generation),
                          self._feed_key(feed, "g", old if old is not None else generation),
                          self._feed_key(feed, "history")],
                    args=[lease.token, generation, "" if old is None else old, _now(),
                          json.dumps(entry.to_dict()), HISTORY_KEPT]).decode()
                if done != "MOVED":
                    return done

        done = self._call(flip)
        if done == "LEASE":
            raise lease.lost()
        if done.startswith("STATE:"):
            raise LookalikeError(f"serving sink redis: {feed} generation {generation} is {done[6:]}; only a "
                                 "complete one is switched to")
        return time.perf_counter() - started

    def patch(self, feed: str, spec: ListTable, *, expect, changes, as_of: str) -> tuple[Generation | None, str]:
        """Set the lists and delete the withdrawn fields that ``changes(live)`` gives in the live generation,
        and record ``as_of``, when ``expect(live)`` says so (its refusal is returned with the generation,
        nothing written). On one node: one MULTI/EXEC, the pointer, the lease and the generation's hash
        watched before they are read. On a cluster each list is replaced whole, bucket by bucket, then a
        script checks the lease and the hour and records ``as_of``."""
        lease = self._held(feed)
        pointer, meta_of = self._feed_key(feed, "live"), lambda n: self._feed_key(feed, "g", n)

        def live_of(r) -> Generation | None:
            number = r.get(pointer)
            if number is None:
                return None
            if not self.cluster:
                r.watch(meta_of(int(number)))
            meta = {k.decode(): v.decode() for k, v in r.hgetall(meta_of(int(number))).items()}
            return _generation(int(number), feed, meta) if meta else None

        def writes(pipe, live: Generation):
            lists, withdrawn = changes(live)
            fields = [spec.field((key,)) for key in lists.column("item_id").to_pylist()]
            values = encode_json(lists, spec)
            for field in withdrawn:
                pipe.hdel(self._data_key(live.number, spec.name, bucket(field)), field)
            by_bucket: dict[int, dict] = {}
            for field, value in zip(fields, values):
                by_bucket.setdefault(bucket(field), {})[field] = value
            for b, mapping in by_bucket.items():
                pipe.hset(self._data_key(live.number, spec.name, b), mapping=mapping)

        def atomic(r):
            with r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(lease.key, pointer)
                        if lease.holder(pipe) != lease.token:
                            raise lease.lost()
                        live = live_of(pipe)
                        refusal = expect(live)
                        if refusal:
                            return live, refusal
                        pipe.multi()
                        writes(pipe, live)
                        pipe.hset(meta_of(live.number), "as_of", as_of)
                        faults.point("intraday.redis_before_exec")
                        pipe.execute()
                        return live, ""
                    except _watch_error():
                        continue

        def bucketed(r):
            live = live_of(r)
            refusal = expect(live)
            if refusal:
                return live, refusal
            pipe = r.pipeline(transaction=False)
            writes(pipe, live)
            faults.point("intraday.redis_before_exec")
            pipe.execute()
            done = self._script(r, AS_OF_SCRIPT)(keys=[lease.key, pointer, meta_of(live.number)],
                                                 args=[lease.token, live.number, as_of]).decode()
            if done == "LEASE":
                raise lease.lost()
            if done == "MOVED":
                raise TransientError(f"serving sink redis: the {feed} feed switched during the hour; it is retried")
            return live, "" if done == "OK" else f"already holds the hour of {done[6:]}"

        with lease.quiet():
            return self._call(bucketed if self.cluster else atomic)

    def drop(self, generation: int, tables: tuple[ListTable, ...] = ()) -> None:
        """Remove the generation's hashes (each named, no scan), then its record."""
        feed = self._leased_feed("removing a generation")

        def remove(r):
            pipe = r.pipeline(transaction=False)
            for spec in tables:
                for b in range(BUCKETS):
                    pipe.unlink(self._data_key(generation, spec.name, b))
            pipe.execute()
            pipe.unlink(self._feed_key(feed, "g", generation))
            pipe.zrem(self._feed_key(feed, "generations"), str(generation))
            pipe.execute()

        self._call(remove)

    # ---- the site's read path ----
    def lookup(self, spec: ListTable, key: tuple) -> tuple[int, list, list] | None:
        """(live generation, ids, scores) of ``key`` as a site reads it: one round trip on one node
        (``LOOKUP_SCRIPT``), the pointer and then the field on a cluster."""
        field = spec.field(key)
        pointer = self._feed_key(spec.feed, "live")

        def read(r):
            if self.cluster:
                number = r.get(pointer)
                if number is None:
                    return None
                return number, r.hget(self._data_key(int(number), spec.name, bucket(field)), field)
            return self._script(r, LOOKUP_SCRIPT)(keys=[pointer], args=[self._key("g", ""), spec.name,
                                                                         bucket(field), field])

        found = self._call(read)
        if not found or found[1] is None:
            return None
        ids, scores = decode_json(found[1])
        return int(found[0]), ids, scores


class _Lease:
    """A writer's lease on one feed of a Redis store (``RedisStore.lease``)."""

    def __init__(self, store: RedisStore, feed: str):
        self.store, self.feed = store, feed
        self.key = store._feed_key(feed, "lease")
        self.token = uuid.uuid4().hex
        self._stop, self._lost = threading.Event(), False
        self._quiet = threading.Lock()  # held while a patch watches the lease: no renewal touches it then
        self._thread = None

    def holder(self, r) -> str | None:
        value = r.get(self.key)
        return json.loads(value)["token"] if value else None

    def acquire(self) -> None:
        value = json.dumps({"token": self.token, "holder": writer(), "since": _now()})
        deadline = time.monotonic() + self.store.lock_timeout
        while not self.store._call(lambda r: r.set(self.key, value, nx=True, px=self.store.lease_ttl_ms)):
            if time.monotonic() >= deadline:
                held = self.store._call(lambda r: r.get(self.key))
                who = json.loads(held) if held else None
                by = f"{who['holder']} since {who['since']}" if who else "a writer that has just let go"
                raise TransientError(f"serving sink redis: the {self.feed} feed's writer lease is held by {by}; "
                                     f"waited {self.store.lock_timeout} s (serving.lock_timeout)")
            time.sleep(0.2)
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.feed}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.store.lease_ttl_ms / 3000):
            with self._quiet:
                try:
                    renewed = self.store._call(lambda r: self.store._script(r, RENEW_SCRIPT)(
                        keys=[self.key], args=[self.token, self.store.lease_ttl_ms]))
                except Exception:  # noqa: BLE001 - a renewal that fails is retried; a lapse is caught by fencing
                    continue
                if not renewed:
                    self._lost = True
                    return

    @contextlib.contextmanager
    def quiet(self):
        """No renewal while the body runs (it watches the lease key); renewed first, so it has a full TTL."""
        with self._quiet:
            renewed = self.store._call(lambda r: self.store._script(r, RENEW_SCRIPT)(
                keys=[self.key], args=[self.token, self.store.lease_ttl_ms]))
            if not renewed:
                raise self.lost()
            yield

    def lost(self) -> TransientError:
        return TransientError(f"serving sink redis: this writer lost the {self.feed} feed's lease (it lapsed "
                              f"and another writer took it); nothing was switched or patched, and it is retried")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):
            self.store._call(lambda r: self.store._script(r, RELEASE_SCRIPT)(keys=[self.key], args=[self.token]))


def _generation(number: int, feed: str, meta: dict) -> Generation:
    return Generation(number, feed, meta["ds"], meta["run_id"], meta.get("state", WRITING),
                      json.loads(meta.get("lists") or "{}"), meta.get("created_at"), meta.get("switched_at") or None,
                      meta.get("as_of") or None)


def _watch_error():
    import redis

    return redis.exceptions.WatchError


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
