"""The hand-off: a published run of a feed becomes the live generation of every configured store.

For each store in ``serving.sinks``: the feed's published tables of the ds (the run the manifest
points to) are written as a new generation, checked (the lists and their members against the
published rows, a sample of lists against the Parquet rows), switched live in one atomic step, and
the generations beyond ``serving.keep_generations`` removed. A generation left by a hand-off that
died (still ``writing`` or ``ready``) is removed first, so reruns converge and leave no orphan.

A store that is down fails the hand-off as transient (the DAG retries it with backoff); the other
stores are still handed to, and the warehouse's tables stay published: the store keeps serving
its live generation. What each store serves is recorded beside the ds's run record
(``Warehouse.write_handoff_record``).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from lookalike import faults
from lookalike.config import Config
from lookalike.errors import BUG, TRANSIENT, LookalikeError, TransientError, classify, describe
from lookalike.online.lists import (BY_NAME, ITEMS, LIST_TABLES, USERS, ListTable, empty_lists, feed_tables, lists_of,
                                    same_list, sample_rows)
from lookalike.online.store import LIVE, READY, RETIRED, WRITING, Generation, OnlineStore
from lookalike.storage import Warehouse

log = logging.getLogger(__name__)

LEAD = {ITEMS: "item_neighbors", USERS: "user_recommendations"}  # the table whose publish a feed follows


class HandoffCheckFailed(LookalikeError):
    """A written generation does not hold what was published; it was removed and nothing switched."""


class SinkFailed(TransientError):
    """One or more stores could not take the hand-off; the warehouse's tables are published all the same."""


def open_store(cfg: Config, name: str) -> OnlineStore:
    """The store ``name`` (postgres | redis) of ``cfg.serving``, not yet connected."""
    if name == "postgres":
        from lookalike.online.postgres_store import PostgresStore

        return PostgresStore(cfg.serving.postgres, cfg.serving.postgres.url, lock_timeout=cfg.serving.lock_timeout)
    if name == "redis":
        from lookalike.online.redis_store import RedisStore

        return RedisStore(cfg.serving.redis, cfg.serving.redis.url, lock_timeout=cfg.serving.lock_timeout)
    raise ValueError(f"unknown store {name!r}")


def published_lists(wh: Warehouse, ds: str, feed: str, names: tuple[str, ...]) -> tuple[str, dict, dict]:
    """(run id, table → lists, table → published rows) of the feed's run published for ``ds``.

    A table the run did not publish (no experiment ran: no arms) is handed off empty."""
    published = wh.manifest()["tables"]  # read once: every table of the run from the same manifest
    lead = published.get(LEAD[feed], {}).get(ds)
    if lead is None:
        raise LookalikeError(f"handoff {ds}: {LEAD[feed]} has no published partition ds={ds}; a night is handed "
                             f"off only after its publish (`lookalike publish --ds {ds}`)")
    lists, rows = {}, {}
    for spec in feed_tables(feed, names):
        entry = published.get(spec.name, {}).get(ds)
        if entry is None or entry["run_id"] != lead["run_id"] or not entry["files"]:
            lists[spec.name], rows[spec.name] = empty_lists(spec), 0
            continue
        columns = [*spec.keys, "rank", spec.member, "score"]
        lists[spec.name] = lists_of(wh.read_entry(spec.name, entry, columns=columns), spec)
        rows[spec.name] = entry["rows"]
    return lead["run_id"], lists, rows


def run_handoff(cfg: Config, ds: str, feed: str = ITEMS) -> dict:
    """Hand the feed's published run of ``ds`` to every configured store."""
    sinks = cfg.serving.sink_names
    specs = feed_tables(feed, cfg.serving.table_names)
    if not sinks or not specs:
        why = "no serving.sinks configured" if not sinks else f"serving.tables names no table of the {feed} feed"
        log.info("handoff %s (%s): nothing to do: %s", ds, feed, why)
        return {"ds": ds, "feed": feed, "sinks": {}, "skipped": why}
    wh = Warehouse.of(cfg)
    started = time.perf_counter()
    run_id, lists, rows = published_lists(wh, ds, feed, cfg.serving.table_names)
    log.info("handoff %s (%s): run %s read from the warehouse in %.1f s: %s", ds, feed, run_id,
             time.perf_counter() - started, ", ".join(f"{t} {lists[t].num_rows} lists" for t in lists))
    results, failed = each_store(cfg, lambda store: hand_to(
        store, feed=feed, ds=ds, run_id=run_id, specs=specs, lists=lists, rows=rows,
        keep=cfg.serving.keep_generations, sample=cfg.serving.check_sample))
    wh.write_handoff_record(ds, feed, {"ds": ds, "feed": feed, "run_id": run_id, "sinks": results,
                                       "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    if failed:
        _raise_failed(ds, feed, failed, results)
    return {"ds": ds, "feed": feed, "run_id": run_id, "sinks": results}


def each_store(cfg: Config, body) -> tuple[dict, list]:
    """``body(store)`` for every configured store, each opened and closed here: (sink → its result, or
    {"error"}; the (sink, exception) pairs that failed). One store down never keeps the others from theirs."""
    results, failed = {}, []
    for name in cfg.serving.sink_names:
        try:
            store = open_store(cfg, name)
        except LookalikeError as exc:
            failed.append((name, exc))
            continue
        try:
            results[name] = body(store)
        except Exception as exc:  # noqa: BLE001 - reported per store by the caller
            failed.append((name, exc))
            results[name] = {"error": describe(exc)}
        finally:
            store.close()
    return results, failed


def _raise_failed(ds: str, feed: str, failed: list, results: dict) -> None:
    what = "; ".join(f"{name}: {describe(exc)}" for name, exc in failed)
    served = ", ".join(f"{name} switched to generation {r['generation']}" for name, r in results.items()
                       if "generation" in r)
    message = (f"handoff {ds} ({feed}) failed for {', '.join(n for n, _ in failed)}: {what}. The night is published "
               f"in the warehouse; a failed store keeps serving its live generation"
               + (f" ({served})" if served else "") + ". `lookalike serving status` shows what each store serves")
    kinds = [classify(exc) for _, exc in failed]
    if BUG in kinds:  # a bug in a store's code: its own traceback, the other stores' outcome logged
        log.error("%s", message)
        raise failed[kinds.index(BUG)][1]
    if TRANSIENT not in kinds:
        raise LookalikeError(message) from failed[0][1]
    raise SinkFailed(message) from failed[0][1]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def hand_to(store: OnlineStore, *, feed: str, ds: str, run_id: str, specs: tuple[ListTable, ...],
            lists: dict[str, pa.Table], rows: dict[str, int], keep: int, sample: int) -> dict:
    """Write, check and switch one store, holding the feed's writer lease; returns what it serves now."""
    with store.lease(feed):
        return _hand_to(store, feed=feed, ds=ds, run_id=run_id, specs=specs, lists=lists, rows=rows, keep=keep,
                        sample=sample)


def _hand_to(store: OnlineStore, *, feed, ds, run_id, specs, lists, rows, keep, sample) -> dict:
    everything = tuple(t for t in LIST_TABLES if t.feed == feed)
    generations = store.generations(feed)
    live = next((g for g in generations if g.state == LIVE), None)
    for dead in (g for g in generations if g.state in (WRITING, READY)):  # no lease holds it: this one does
        log.info("handoff: %s: removing generation %d (%s), left by a hand-off that did not finish", store.name,
                 dead.number, dead.state)
        store.drop(dead.number, everything)
    if live is not None and (live.ds, live.run_id) == (ds, run_id):
        log.info("handoff %s: %s already serves run %s as generation %d", ds, store.name, run_id, live.number)
        return _served(live, switch_s=0.0, write_s=0.0, note="already live")
    if live is not None and live.ds > ds:
        log.warning("handoff %s: %s serves the newer ds %s (generation %d); left as it is (`lookalike serving "
                    "rollback` switches back on purpose)", ds, store.name, live.ds, live.number)
        return _served(live, switch_s=0.0, write_s=0.0, note=f"serves the newer ds {live.ds}; not switched")
    number = store.begin(feed, ds, run_id)
    started = time.perf_counter()
    for spec in specs:
        store.write(number, spec, lists[spec.name])
        log.info("handoff %s: %s generation %d: %s written (%d lists)", ds, store.name, number, spec.name,
                 lists[spec.name].num_rows)
    write_s = time.perf_counter() - started
    faults.point("handoff.before_check")
    failures = check_generation(store, number, specs, lists, rows, sample=sample)
    if failures:
        store.drop(number, everything)
        raise HandoffCheckFailed(f"handoff {ds}: {store.name} generation {number} does not hold what was published, "
                                 f"removed, nothing switched: {'; '.join(failures)}")
    store.finish(number, {spec.name: lists[spec.name].num_rows for spec in specs})
    faults.point("handoff.before_switch")
    switch_s = store.switch(feed, number, specs)
    faults.point("handoff.after_switch")
    log.info("handoff %s: %s serves generation %d (run %s) after a %.3f s switch", ds, store.name, number, run_id,
             switch_s)
    _retain(store, feed, keep, everything)
    now = next(g for g in store.generations(feed) if g.number == number)
    return _served(now, switch_s=switch_s, write_s=write_s)


def _served(g: Generation, *, switch_s: float, write_s: float, note: str = "") -> dict:
    out = {"generation": g.number, "ds": g.ds, "run_id": g.run_id, "switched_at": g.switched_at,
           "lists": g.lists, "write_s": round(write_s, 3), "switch_s": round(switch_s, 4)}
    return out | ({"note": note} if note else {})


def check_generation(store, number: int, specs, lists: dict, rows: dict, *, sample: int) -> list[str]:
    """What differs between the written generation and the published rows (empty: it holds them)."""
    failures = []
    for spec in specs:
        table = lists[spec.name]
        members = int(pc.sum(pc.list_value_length(table.column("ids"))).as_py() or 0)
        if members != rows[spec.name]:
            failures.append(f"{spec.name}: the lists hold {members} members, {rows[spec.name]} rows were published")
        found_lists, found_members = store.count(number, spec)
        if found_lists != table.num_rows:
            failures.append(f"{spec.name}: {found_lists} lists in the store, {table.num_rows} published")
        if found_members is not None and found_members != rows[spec.name]:
            failures.append(f"{spec.name}: {found_members} members in the store, {rows[spec.name]} rows published")
        picked = sample_rows(table, sample, seed=number).to_pylist()
        keys = [tuple(row[k] for k in spec.keys) for row in picked]
        found = store.read(number, spec, keys)
        wrong = [key for key, row in zip(keys, picked) if not same_list((row["ids"], row["scores"]), found.get(key))]
        if wrong:
            failures.append(f"{spec.name}: {len(wrong)} of {len(keys)} sampled lists differ from the Parquet rows "
                            f"(first: {':'.join(wrong[0])})")
    return failures


def _retain(store: OnlineStore, feed: str, keep: int, tables: tuple[ListTable, ...]) -> None:
    """Keep ``keep`` generations: the live one, the one live before it (what ``serving rollback`` goes
    back to) and then the newest earlier ones; remove the rest."""
    generations = store.generations(feed)  # newest first
    before = _previous(store, feed, generations)
    kept = [g for g in generations if g.state == LIVE]
    if before is not None:
        kept.append(before)
    kept += [g for g in generations if g.state == RETIRED and g not in kept][:max(keep - len(kept), 0)]
    for old in (g for g in generations if g.state == RETIRED and g not in kept):
        store.drop(old.number, tables)
        log.info("handoff: %s: generation %d (ds %s) removed (serving.keep_generations = %d)", store.name,
                 old.number, old.ds, keep)


def _previous(store: OnlineStore, feed: str, generations: list[Generation]) -> Generation | None:
    """The generation that was live before the live one's switch (its history's newest entry), while the
    store keeps it; for a store with no history yet, the newest one kept before the live one."""
    live = next((g for g in generations if g.state == LIVE), None)
    last = next(iter(store.history(feed)), None)
    if live is not None and last is not None and last.generation == live.number:
        return next((g for g in generations if g.number == last.previous and g.state == RETIRED), None)
    return next((g for g in generations if g.state == RETIRED and (live is None or g.number < live.number)), None)


def patch_live(cfg: Config, *, ds: str, run_id: str, as_of: str, changes) -> dict:
    """An intraday hour's changed ``item_neighbors`` lists written into every store's live generation of the
    night ``ds`` (run ``run_id``), each store in one transaction: ``changes(live)`` gives the (lists, withdrawn
    items) a store that serves ``live`` needs (what changed since the hour it holds).

    A store that serves a newer night is left alone (that night's own hours follow); one that still serves
    an older night has not taken the night's hand-off yet: a transient failure, retried. A store that already
    holds this hour or a later one is left as it is, so a retried or late hour never goes back in time."""
    spec = BY_NAME["item_neighbors"]

    def expect(live: Generation | None) -> str:
        if live is None or live.ds < ds or (live.ds == ds and live.run_id != run_id):
            served = f"serves {live.ds} (run {live.run_id})" if live else "serves nothing yet"
            raise TransientError(f"it {served}: the night {ds} (run {run_id}) is not handed off yet; the hour "
                                 "is applied once it is")
        if live.ds > ds:
            return f"serves the newer night {live.ds}; its own hours follow"
        if live.as_of and live.as_of >= as_of:
            return f"already holds the hour of {live.as_of}"
        return ""

    def patch(store) -> dict:
        started, sizes = time.perf_counter(), {"lists": 0, "withdrawn": 0}

        def sized(live: Generation):
            lists, withdrawn = changes(live)
            sizes.update(lists=lists.num_rows, withdrawn=len(withdrawn), since=live.as_of or f"the night {live.ds}")
            return lists, withdrawn

        with store.lease(ITEMS):
            live, refusal = store.patch(ITEMS, spec, expect=expect, changes=sized, as_of=as_of)
        log.info("intraday %s: %s generation %d: %s", as_of, store.name, live.number, refusal or
                 f"{sizes['lists']} lists rewritten, {sizes['withdrawn']} withdrawn (changed since {sizes['since']})")
        return {"generation": live.number, "ds": live.ds, "as_of": live.as_of if refusal else as_of, **sizes,
                "seconds": round(time.perf_counter() - started, 3)} | ({"note": refusal} if refusal else {})

    results, failed = each_store(cfg, patch)
    if failed:
        _raise_failed(f"{ds} (hour {as_of})", ITEMS, failed, results)
    return results


# ---- what the operator and the site run ----

def status(cfg: Config) -> list[dict]:
    """For each configured store and feed: the live generation, its ds, run and age; a store that
    cannot be read gets one row per feed saying why (``error``), and the others are still shown."""
    def read(store: OnlineStore) -> list[dict]:
        rows = []
        for feed in (ITEMS, USERS):
            generations = store.generations(feed)
            live = next((g for g in generations if g.state == LIVE), None)
            rows.append({"sink": store.name, "feed": feed, "live": live.number if live else None,
                         "ds": live.ds if live else None, "run_id": live.run_id if live else None,
                         "switched_at": live.switched_at if live else None,
                         "as_of": live.as_of if live else None,
                         "age_hours": _age_hours(live.as_of or live.switched_at) if live else None,
                         "kept": [g.number for g in generations if g.state == RETIRED],
                         "store": store.display()})
        return rows

    results, failed = each_store(cfg, read)
    out = []
    for name in cfg.serving.sink_names:
        if isinstance(results.get(name), list):
            out += results[name]
            continue
        error = next((exc for sink, exc in failed if sink == name), None)
        if error is not None and classify(error) == BUG:
            raise error
        out += [{"sink": name, "feed": feed, "live": None, "ds": None, "run_id": None, "switched_at": None,
                 "as_of": None, "age_hours": None, "kept": [], "store": name, "error": describe(error)}
                for feed in (ITEMS, USERS)]
    return out


def history(cfg: Config, *, feed: str = ITEMS, sinks: tuple[str, ...] = ()) -> list[dict]:
    """Every store's switches of ``feed``, newest first: what went live, when, by whom, and what it replaced."""
    out = []
    for name in sinks or cfg.serving.sink_names:
        store = open_store(cfg, name)
        try:
            out += [{"sink": name, **entry.to_dict()} for entry in store.history(feed)]
        finally:
            store.close()
    return out


def init(cfg: Config, *, grant_to: str | None = None) -> list[str]:
    """Create every configured store's layout (what the first hand-off would), with read grants for
    ``grant_to``; returns the stores, as displayed."""
    done = []
    for name in cfg.serving.sink_names:
        store = open_store(cfg, name)
        try:
            store.init(grant_to)
            done.append(store.display())
        finally:
            store.close()
    return done


def _age_hours(when: str | None) -> float | None:
    if not when:
        return None
    moment = datetime.fromisoformat(when)  # an hour's as_of is UTC without an offset
    return round((_now() - (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))).total_seconds() / 3600,
                 2)


def rollback(cfg: Config, *, to: int | None = None, feed: str = ITEMS, sinks: tuple[str, ...] = ()) -> list[dict]:
    """Undo the last switch: make the generation that was live before it live again (``to``: that
    generation instead), in each store, holding the feed's writer lease."""
    out = []
    for name in sinks or cfg.serving.sink_names:
        store = open_store(cfg, name)
        try:
            with store.lease(feed):
                out.append(_roll_back(store, feed, to))
        finally:
            store.close()
    return out


def _roll_back(store: OnlineStore, feed: str, to: int | None) -> dict:
    generations = store.generations(feed)
    live = next((g for g in generations if g.state == LIVE), None)
    if to is not None:
        target = next((g for g in generations if g.number == to), None)
        if target is None or target.state not in (RETIRED, LIVE):
            usable = ", ".join(str(g.number) for g in generations if g.state in (RETIRED, LIVE)) or "none"
            raise LookalikeError(f"serving rollback: {store.name} has no complete {feed} generation {to} "
                                 f"(generations it can serve: {usable})")
    else:
        target = _previous(store, feed, generations)
        if target is None:
            raise LookalikeError(f"serving rollback: {store.name} keeps no {feed} generation that was live before "
                                 f"the live one ({live.number if live else 'none'}); nothing to roll back to "
                                 "(`lookalike serving history` shows the switches)")
    tables = tuple(t for t in LIST_TABLES if t.feed == feed and t.name in target.lists)
    store.switch(feed, target.number, tables)
    log.info("serving rollback: %s serves %s generation %d (ds %s) again", store.name, feed, target.number, target.ds)
    return {"sink": store.name, "feed": feed, "live": target.number, "ds": target.ds,
            "was": live.number if live else None}


def similar(cfg: Config, item_id: str, *, experiment: str | None = None, user: str | None = None,
            sink: str | None = None) -> dict:
    """One item's live list, read from the store as the site reads it; with an experiment, the
    list of the arm the user's published bucket assigns."""
    sinks = cfg.serving.sink_names
    if not sinks:
        raise LookalikeError("lookalike similar reads the online store: configure serving.sinks (postgres, redis)")
    name = sink or sinks[0]
    if name not in sinks:
        raise LookalikeError(f"--sink {name}: not one of the configured serving.sinks ({', '.join(sinks)})")
    spec, key, variant = _table_and_key(cfg, item_id, experiment, user)
    store = open_store(cfg, name)
    try:
        found = store.lookup(spec, key)
    finally:
        store.close()
    if found is None:
        raise LookalikeError(f"{item_id!r} has no list in {name}'s live generation of {spec.name}"
                             + (f" (experiment {experiment}, variant {variant})" if experiment else "")
                             + ": not on sale, not embedded, or not handed off yet (`lookalike serving status`)")
    generation, ids, scores = found
    return {"sink": name, "generation": generation, "table": spec.name, "item_id": item_id,
            "experiment": experiment, "variant": variant, "neighbors": [
                {"rank": i + 1, "neighbor_id": n, "score": float(s)} for i, (n, s) in enumerate(zip(ids, scores))]}


def live_modules(cfg: Config, experiment: str, variants: list[str], items: list[str], slots: int,
                 sink: str | None = None) -> tuple[str, dict[str, dict[str, list[str]]]]:
    """(store, variant → item → the first ``slots`` ids) of an experiment's arms, each list looked up
    in the store's live generation one item at a time, as the site does."""
    name = sink or cfg.serving.sink_names[0]
    spec = BY_NAME["item_neighbors_variants"]
    store = open_store(cfg, name)
    modules: dict[str, dict[str, list[str]]] = {variant: {} for variant in variants}
    try:
        for variant in variants:
            for item in items:
                found = store.lookup(spec, (experiment, variant, item))
                if found is not None:
                    modules[variant][item] = list(found[1][:slots])
    finally:
        store.close()
    if not any(modules.values()):
        raise LookalikeError(f"experiment {experiment!r}: {name}'s live generation holds no list of its arms; hand "
                             "the night off first (`lookalike handoff --ds`) or check `lookalike serving status`")
    return name, modules


def _table_and_key(cfg: Config, item_id: str, experiment: str | None, user: str | None):
    from lookalike.assignment import Arm, Experiment

    if experiment is None:
        if user is not None:
            raise LookalikeError("--user picks an experiment arm: give --experiment NAME too")
        return BY_NAME["item_neighbors"], (item_id,), None
    if user is None:
        raise LookalikeError("--experiment needs --user USER_ID: the arm is the user's")
    wh = Warehouse.of(cfg)
    published = sorted(wh.entries("experiment_variants"))
    rows = wh.read_partition("experiment_variants", published[-1], filters=[("experiment", "=", experiment)]) \
        .to_pylist() if published else []
    if not rows:
        raise LookalikeError(f"experiment {experiment!r} has no published arms (experiment_variants); it is served "
                             "once a night inside its dates is published and handed off")
    arms = tuple(Arm(r["variant"], r["serve"], r["share"], r["bucket_low"], r["bucket_high"], r["is_control"])
                 for r in sorted(rows, key=lambda r: r["bucket_low"]))
    variant = Experiment(experiment, rows[0]["salt"], arms, "", "").variant_of(user)
    return BY_NAME["item_neighbors_variants"], (experiment, variant, item_id), variant
