"""The online stores under two hands, read by eight site processes all along: two hand-offs of one
feed at once, hand-off → rollback → hand-off → rollback, an hour racing a night's switch and a
hand-off SIGKILLed mid-write, on PostgreSQL and Redis, and again on a three-master Redis Cluster.
No read is mixed, missing or failed; each rollback serves exactly the night live before the switch."""
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from lookalike.errors import TransientError
from lookalike.online import handoff
from lookalike.online.handoff import open_store
from lookalike.online.lists import BY_NAME, lists_of
from lookalike.online.store import LIVE
from lookalike.storage import Warehouse
from tests.online.nights import night_tables, publish_night
from tests.online.readers import digest, read_until_stopped

REPO = Path(__file__).resolve().parents[2]
NIGHTS = ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04")
ITEMS = 2000
HOUR = f"{NIGHTS[1]}T10:00:00"


def _digests(tables) -> dict[str, str]:
    lists = lists_of(tables["item_neighbors"], BY_NAME["item_neighbors"]).to_pylist()
    return {r["item_id"]: digest(r["ids"], r["scores"]) for r in lists}


def _handoff(config: str, ds: str, fault: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    if fault:
        env["LOOKALIKE_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "lookalike.tools.cli", "handoff", "--config", config, "--ds", ds],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(process: subprocess.Popen) -> int:
    _, err = process.communicate(timeout=300)
    assert process.returncode in (0, -9), err[-3000:]
    return process.returncode


def _serves(cfg, ds: str, expected: dict[str, str], sample: list[str]) -> None:
    """Every store serves exactly the night ``ds``: its live generation and the lists of ``sample``."""
    for sink in cfg.serving.sink_names:
        store = open_store(cfg, sink)
        try:
            live = next(g for g in store.generations("items") if g.state == LIVE)
            assert live.ds == ds, (sink, live)
            for item in sample:
                _, ids, scores = store.lookup(BY_NAME["item_neighbors"], (item,))
                assert digest(ids, scores) == expected[item], (sink, item)
        finally:
            store.close()


def _two_hands(cfg, tmp_path, modes: list[str], fault: str) -> None:
    config = str(Path(cfg.warehouse).parent / "lookalike.yaml")
    wh = Warehouse.of(cfg)
    tables = {ds: night_tables(ds, items=ITEMS, k=10, seed=i) for i, ds in enumerate(NIGHTS)}
    expected = {ds: _digests(t) for ds, t in tables.items()}
    runs = {NIGHTS[0]: publish_night(wh, NIGHTS[0], tables[NIGHTS[0]])}
    handoff.run_handoff(cfg, NIGHTS[0])
    items = sorted(expected[NIGHTS[0]])
    sample = items[::97]

    stop = tmp_path / "stop"
    spawn = multiprocessing.get_context("spawn")
    readers = [spawn.Process(target=read_until_stopped, args=(config, mode, items, str(stop),
                                                              str(tmp_path / f"reader{i}.json"), i))
               for i, mode in enumerate(modes)]
    for reader in readers:
        reader.start()
    try:
        # two hand-offs of one feed at once (a retried task beside `lookalike handoff`): one switches, the
        # other finds the night live; one new generation in each store
        runs[NIGHTS[1]] = publish_night(wh, NIGHTS[1], tables[NIGHTS[1]])
        both = [_handoff(config, NIGHTS[1]) for _ in range(2)]
        assert [_finished(p) for p in both] == [0, 0]
        _serves(cfg, NIGHTS[1], expected[NIGHTS[1]], sample)
        for sink in cfg.serving.sink_names:
            store = open_store(cfg, sink)
            assert Counter(g.ds for g in store.generations("items"))[NIGHTS[1]] == 1
            store.close()

        # hand-off → rollback → hand-off again → rollback: each rollback serves the night before the switch
        handoff.rollback(cfg)
        _serves(cfg, NIGHTS[0], expected[NIGHTS[0]], sample)
        assert _finished(_handoff(config, NIGHTS[1])) == 0
        _serves(cfg, NIGHTS[1], expected[NIGHTS[1]], sample)
        handoff.rollback(cfg)
        _serves(cfg, NIGHTS[0], expected[NIGHTS[0]], sample)
        assert _finished(_handoff(config, NIGHTS[1])) == 0

        # an hour of NIGHTS[1] racing the switch to NIGHTS[2]: applied before it, or refused after it
        hour = night_tables(NIGHTS[1], items=ITEMS, k=10, seed=99)
        hour_lists = lists_of(hour["item_neighbors"], BY_NAME["item_neighbors"]).slice(0, 300)
        hour_digests = {r["item_id"]: digest(r["ids"], r["scores"]) for r in hour_lists.to_pylist()}
        runs[NIGHTS[2]] = publish_night(wh, NIGHTS[2], tables[NIGHTS[2]])
        night = _handoff(config, NIGHTS[2])
        patched = {}
        hour_thread = threading.Thread(target=lambda: patched.update(handoff.patch_live(
            cfg, ds=NIGHTS[1], run_id=runs[NIGHTS[1]], as_of=HOUR, changes=lambda live: (hour_lists, []))))
        hour_thread.start()
        assert _finished(night) == 0
        hour_thread.join()
        assert set(patched) == set(cfg.serving.sink_names)
        _serves(cfg, NIGHTS[2], expected[NIGHTS[2]], sample)

        # a hand-off SIGKILLed mid-write changes nothing live; the rerun waits out its lease and converges
        publish_night(wh, NIGHTS[3], tables[NIGHTS[3]])
        assert _finished(_handoff(config, NIGHTS[3], fault)) == -9
        _serves(cfg, NIGHTS[2], expected[NIGHTS[2]], sample)
        assert _finished(_handoff(config, NIGHTS[3])) == 0
        _serves(cfg, NIGHTS[3], expected[NIGHTS[3]], sample)
    finally:
        stop.touch()
        for reader in readers:
            reader.join(timeout=60)

    night_of = {}  # every generation ever switched to, from each store's history
    for sink in cfg.serving.sink_names:
        store = open_store(cfg, sink)
        night_of[sink] = {s.generation: s.ds for s in store.history("items")}
        store.close()
    reads, mixed, missing, errors = 0, [], [], []
    for i, mode in enumerate(modes):
        found = json.loads((tmp_path / f"reader{i}.json").read_text())
        sink = "postgres" if mode == "postgres" else "redis"
        for item, generation, seen in found["seen"]:
            ds = night_of[sink].get(generation)
            allowed = {expected[ds][item]} if ds else set()
            if ds == NIGHTS[1] and item in hour_digests:
                allowed.add(hour_digests[item])
            if seen not in allowed:
                mixed.append((mode, item, generation))
        reads += len(found["seen"])
        missing += found["missing"]
        errors += found["errors"]
    assert (len(mixed), len(missing), len(errors)) == (0, 0, 0), (mixed[:3], missing[:3], errors[:3])
    assert reads > 1000


def test_eight_site_readers_see_no_mixed_or_missing_list_while_two_hands_write(online, tmp_path):
    cfg = online(redis={"lease_ttl": 3})
    _two_hands(cfg, tmp_path, ["postgres"] * 3 + ["redis"] * 3 + ["redis-two"] * 2,
               "handoff.postgres_mid_copy")  # the first store: killed there, nothing of the night is live


def test_the_same_on_a_three_master_redis_cluster(online, tmp_path, redis_cluster_url):
    cfg = online(sinks="redis", redis={"url": redis_cluster_url, "lease_ttl": 3})
    _two_hands(cfg, tmp_path, ["redis"] * 4 + ["redis-two"] * 4, "handoff.redis_mid_write")


@pytest.mark.parametrize("sink", ["postgres", "redis"])
def test_a_second_writer_waits_for_the_lease_then_fails_as_transient_naming_the_holder(online, sink):
    cfg = online(sinks=sink, lock_timeout=1)
    wh = Warehouse.of(cfg)
    publish_night(wh, NIGHTS[0], night_tables(NIGHTS[0], items=50, k=3, seed=0))
    handoff.run_handoff(cfg, NIGHTS[0])
    publish_night(wh, NIGHTS[1], night_tables(NIGHTS[1], items=50, k=3, seed=1))
    holder = open_store(cfg, sink)
    try:
        with holder.lease("items"):
            with pytest.raises(TransientError, match=r"writer lease is held by cli .* since 20\d\d-"):
                handoff.run_handoff(cfg, NIGHTS[1])
            with pytest.raises(TransientError, match="writer lease is held by"):
                handoff.rollback(cfg)
    finally:
        holder.close()
    assert [g.ds for g in _generations(cfg, sink)] == [NIGHTS[0]]  # nothing written while the lease was held
    handoff.run_handoff(cfg, NIGHTS[1])  # once it is let go
    assert [g.ds for g in _generations(cfg, sink)] == [NIGHTS[1], NIGHTS[0]]


def _generations(cfg, sink):
    store = open_store(cfg, sink)
    try:
        return store.generations("items")
    finally:
        store.close()


def test_a_writer_that_lost_its_lease_switches_and_patches_nothing(online, postgres_url):
    """Fencing: a Redis writer whose lease lapsed and was taken (here: overwritten), a PostgreSQL writer
    whose session (and so its advisory lock) ended, change nothing live."""
    import psycopg
    import redis

    cfg = online()
    wh = Warehouse.of(cfg)
    tables = {ds: night_tables(ds, items=50, k=3, seed=i) for i, ds in enumerate(NIGHTS[:2])}
    run = publish_night(wh, NIGHTS[0], tables[NIGHTS[0]])
    handoff.run_handoff(cfg, NIGHTS[0])
    spec = BY_NAME["item_neighbors"]
    lists = lists_of(tables[NIGHTS[1]]["item_neighbors"], spec)

    store = open_store(cfg, "redis")
    with store.lease("items"):
        number = store.begin("items", NIGHTS[1], "a-run")
        store.write(number, spec, lists)
        store.finish(number, {"item_neighbors": lists.num_rows})
        redis.Redis.from_url(cfg.serving.redis.url).set(f"{cfg.serving.redis.prefix}:{{items}}:lease",
                                                        json.dumps({"token": "another", "holder": "x", "since": "y"}))
        with pytest.raises(TransientError, match="lost the items feed's lease"):
            store.switch("items", number, (spec,))
        with pytest.raises(TransientError, match="lost the items feed's lease"):
            store.patch("items", spec, expect=lambda live: "", changes=lambda live: (lists, []), as_of="2026-11-01T10:00:00")
    store.close()
    live = next(g for g in _generations(cfg, "redis") if g.state == LIVE)
    assert (live.ds, live.as_of) == (NIGHTS[0], None)

    store = open_store(cfg, "postgres")
    with pytest.raises(TransientError, match="connection holding the items lease was lost"):
        with store.lease("items"):
            pid = store.connect().info.backend_pid
            with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute("select pg_terminate_backend(%s)", (pid,))
            with pytest.raises(TransientError):
                store.begin("items", NIGHTS[1], "a-run")  # the session is gone
            store.begin("items", NIGHTS[1], "a-run")  # and no new one takes its place
    store.close()
    assert [(g.ds, g.run_id) for g in _generations(cfg, "postgres")] == [(NIGHTS[0], run)]
