"""The hand-off to real PostgreSQL and Redis servers: a demo-sized night written, checked and
switched live in both; `lookalike similar` reads what was published (the production list, each
arm's for a user in an experiment); a refused night leaves the previous generation live; rollback;
retention; a reader through switches sees no mixed and no missing list; a store that is down fails
the hand-off alone; misconfigured stores fail with their name."""
import json
import random
import threading
from pathlib import Path

import pytest

from lookalike.config import ConfigError, load_config
from lookalike.errors import LookalikeError, TRANSIENT, TransientError, classify
from lookalike.assignment import bucket
from lookalike.online import handoff
from lookalike.online.lists import BY_NAME, lists_of, same_list
from lookalike.online.handoff import open_store
from lookalike.online.store import LIVE
from lookalike.storage import Warehouse
from lookalike.tools.cli import main as cli
from tests.conftest import REDIS_PASSWORD
from tests.online.nights import ARMS, night_tables, publish_night

DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
DS0 = DAYS[0]


def _path(cfg) -> str:
    """The config file the ``online`` fixture wrote, beside the warehouse."""
    return str(Path(cfg.warehouse).parent / "lookalike.yaml")


def _expected(tables: dict, name: str) -> dict:
    spec = BY_NAME[name]
    lists = lists_of(tables[name], spec).to_pylist()
    return {tuple(r[k] for k in spec.keys): (r["ids"], r["scores"]) for r in lists}


def _live(cfg, sink: str, feed: str = "items"):
    store = open_store(cfg, sink)
    try:
        return next((g for g in store.generations(feed) if g.state == LIVE), None)
    finally:
        store.close()


def test_a_demo_sized_night_goes_live_in_both_stores_and_similar_reads_what_was_published(online, capsys):
    cfg = online()
    tables = night_tables(DAYS[0], items=7143, k=20, seed=1, arms=True, users=300)
    run_id = publish_night(Warehouse.of(cfg), DAYS[0], tables)
    assert cli(["handoff", "--config", _path(cfg), "--ds", DS0]) == 0
    assert cli(["handoff", "--config", _path(cfg), "--ds", DS0, "--users"]) == 0
    capsys.readouterr()
    production, arms, users = (_expected(tables, t) for t in ("item_neighbors", "item_neighbors_variants",
                                                               "user_recommendations"))
    rng = random.Random(0)
    for sink in ("postgres", "redis"):
        live = _live(cfg, sink)
        assert (live.ds, live.run_id, live.lists) == (DS0, run_id, {"item_neighbors": 7143,
                                                                    "item_neighbors_variants": 2 * 7143})
        for (item,) in rng.sample(sorted(production), 100):
            found = handoff.similar(cfg, item, sink=sink)
            assert same_list(production[(item,)], ([n["neighbor_id"] for n in found["neighbors"]],
                                                   [n["score"] for n in found["neighbors"]]))
        for user in (f"shopper-{i}" for i in range(20)):
            variant = "control" if bucket("look", user) < ARMS["control"][1] else "treatment"
            (item,) = rng.choice(sorted(production))
            found = handoff.similar(cfg, item, experiment="look", user=user, sink=sink)
            assert found["variant"] == variant
            assert same_list(arms[("look", variant, item)], ([n["neighbor_id"] for n in found["neighbors"]],
                                                             [n["score"] for n in found["neighbors"]]))
        store = open_store(cfg, sink)
        for (user,) in rng.sample(sorted(users), 20):
            generation, ids, scores = store.lookup(BY_NAME["user_recommendations"], (user,))
            assert same_list(users[(user,)], (ids, scores))
        store.close()
    # the command a site developer tries first
    (item,) = sorted(production)[0]
    assert cli(["similar", item, "--config", _path(cfg), "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [n["neighbor_id"] for n in shown["neighbors"]] == production[(item,)][0]
    # the run record says what each store serves
    record = Warehouse.of(cfg).run_record(DS0)["serving"]
    assert record["items"]["sinks"]["redis"]["generation"] == _live(cfg, "redis").number
    assert record["users"]["sinks"]["postgres"]["lists"] == {"user_recommendations": 300}


def test_a_refused_night_leaves_the_previous_generation_live(online):
    cfg = online()
    wh = Warehouse.of(cfg)
    first = night_tables(DAYS[0], items=300, k=5, seed=1)
    publish_night(wh, DAYS[0], first)
    handoff.run_handoff(cfg, DAYS[0])
    before = {sink: _live(cfg, sink) for sink in ("postgres", "redis")}
    refused = wh.begin(DAYS[1])  # what a refused publish leaves: files written, the manifest never switched
    refused.abort()
    with pytest.raises(LookalikeError, match="no published partition ds=2026-11-02"):
        handoff.run_handoff(cfg, DAYS[1])
    for sink in ("postgres", "redis"):
        assert _live(cfg, sink) == before[sink]
        (item,) = sorted(_expected(first, "item_neighbors"))[7]
        found = handoff.similar(cfg, item, sink=sink)
        assert [n["neighbor_id"] for n in found["neighbors"]] == _expected(first, "item_neighbors")[(item,)][0]


def test_rollback_serves_an_earlier_generation_and_status_says_so(online, capsys):
    cfg = online()
    wh = Warehouse.of(cfg)
    nights = {ds: night_tables(ds, items=200, k=5, seed=i) for i, ds in enumerate(DAYS[:2])}
    for ds, tables in nights.items():
        publish_night(wh, ds, tables)
        handoff.run_handoff(cfg, ds)
    assert cli(["serving", "status", "--config", _path(cfg), "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    items = {r["sink"]: r for r in status if r["feed"] == "items"}
    assert items["redis"]["ds"] == DAYS[1] and items["redis"]["age_hours"] < 1 and len(items["redis"]["kept"]) == 1
    assert cli(["serving", "rollback", "--config", _path(cfg)]) == 0
    for sink in ("postgres", "redis"):
        assert _live(cfg, sink).ds == DAYS[0]
        item = "item-000042"
        found = handoff.similar(cfg, item, sink=sink)
        assert [n["neighbor_id"] for n in found["neighbors"]] == _expected(nights[DAYS[0]], "item_neighbors")[(item,)][0]
    newer = items["redis"]["live"]
    assert cli(["serving", "rollback", "--config", _path(cfg), "--sink", "redis", "--to", str(newer)]) == 0
    assert _live(cfg, "redis").ds == DAYS[1] and _live(cfg, "postgres").ds == DAYS[0]
    assert cli(["serving", "rollback", "--config", _path(cfg), "--sink", "redis", "--to", "999"]) == 2
    assert "no complete items generation 999" in capsys.readouterr().err


def test_only_keep_generations_stay_in_each_store(online, postgres_url):
    import psycopg

    cfg = online(keep_generations=2)
    wh = Warehouse.of(cfg)
    for i, ds in enumerate(DAYS):
        publish_night(wh, ds, night_tables(ds, items=100, k=3, seed=i))
        handoff.run_handoff(cfg, ds)
    for sink in ("postgres", "redis"):
        store = open_store(cfg, sink)
        assert [(g.ds, g.state) for g in store.generations("items")] == [(DAYS[2], "live"), (DAYS[1], "retired")]
        store.close()
    schema = cfg.serving.postgres.schema
    with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
        names = {r[0] for r in conn.execute("select tablename from pg_tables where schemaname = %s", (schema,))}
    assert names == {"generations", "live", "history", "leases"} | {
        f"{t}_g{g}" for t in ("item_neighbors", "item_neighbors_variants") for g in (2, 3)}
    import redis

    r = redis.Redis.from_url(cfg.serving.redis.url)
    keys = {k.decode() for k in r.scan_iter(match=f"{cfg.serving.redis.prefix}:*")}
    prefix = cfg.serving.redis.prefix
    assert not [k for k in keys if k.startswith((f"{prefix}:g:1:", f"{prefix}:{{items}}:g:1"))]
    assert {k for k in keys if k.startswith(f"{prefix}:g:3:item_neighbors:")}  # the live one's buckets


@pytest.mark.parametrize("sink", ["postgres", "redis"])
def test_a_reader_through_switches_sees_no_mixed_and_no_missing_list(online, sink):
    cfg = online(sinks=sink)
    wh = Warehouse.of(cfg)
    nights = {ds: night_tables(ds, items=2000, k=10, seed=i) for i, ds in enumerate(DAYS)}
    expected = {ds: _expected(tables, "item_neighbors") for ds, tables in nights.items()}
    publish_night(wh, DAYS[0], nights[DAYS[0]])
    handoff.run_handoff(cfg, DAYS[0])
    ds_of = {_live(cfg, sink).number: DAYS[0]}
    items = sorted(expected[DAYS[0]])
    responses, missing, done = [], [], threading.Event()

    def read():  # as the site does, while the hand-offs run; checked once the generations are known
        store, rng = open_store(cfg, sink), random.Random(1)
        while not done.is_set():
            key = rng.choice(items)
            found = store.lookup(BY_NAME["item_neighbors"], key)
            if found is None:
                missing.append(key)
            else:
                responses.append((key, *found))
        store.close()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for ds in DAYS[1:]:
            publish_night(wh, ds, nights[ds])
            result = handoff.run_handoff(cfg, ds)
            ds_of[result["sinks"][sink]["generation"]] = ds
    finally:
        done.set()
        reader.join()
    mixed = [(g, key) for key, g, ids, scores in responses
             if g not in ds_of or not same_list(expected[ds_of[g]][key], (ids, scores))]
    assert (len(mixed), len(missing)) == (0, 0), (mixed[:3], missing[:3])
    assert len({g for _, g, _, _ in responses}) == 3 and len(responses) > 200


def test_a_store_that_is_down_fails_only_the_handoff_and_the_night_stays_published(online):
    cfg = online()
    cfg = load_config(_path(cfg), environ={"LOOKALIKE_SERVING__REDIS__URL": "redis://127.0.0.1:1/0"})
    wh = Warehouse.of(cfg)
    publish_night(wh, DS0, night_tables(DS0, items=100, k=3, seed=1))
    with pytest.raises(TransientError) as failed:
        handoff.run_handoff(cfg, DS0)
    message = str(failed.value)
    assert classify(failed.value) == TRANSIENT
    assert "failed for redis" in message and "published in the warehouse" in message
    assert "postgres switched to generation" in message
    assert DS0 in wh.entries("item_neighbors") and _live(cfg, "postgres").ds == DS0
    assert "error" in wh.run_record(DS0)["serving"]["items"]["sinks"]["redis"]


def test_misconfigured_stores_fail_with_their_name(online, tmp_path, redis_url):
    good = online()
    with pytest.raises(ConfigError, match="serving.redis.url: the redis sink needs"):
        load_config(_path(good), environ={"LOOKALIKE_SERVING__REDIS__URL": "http://127.0.0.1:6379"})
    with pytest.raises(ConfigError, match="serving.redis.hostname"):
        load_config(_path(good), environ={"LOOKALIKE_SERVING__REDIS__HOSTNAME": "x"})
    with pytest.raises(ConfigError, match="serving.sinks: unknown 'memcached'"):
        load_config(_path(good), environ={"LOOKALIKE_SERVING__SINKS": "redis,memcached"})
    wrong_password = redis_url.replace(REDIS_PASSWORD, "not-the-password")
    for environ, kind, pattern in (
            ({"LOOKALIKE_SERVING__SINKS": "redis", "LOOKALIKE_SERVING__REDIS__URL": "redis://127.0.0.1:1/0"},
             TransientError, "serving sink redis at redis://127.0.0.1:1/0 is unreachable"),
            ({"LOOKALIKE_SERVING__SINKS": "redis", "LOOKALIKE_SERVING__REDIS__URL": wrong_password},
             ConfigError, "serving sink redis at .*:\\*\\*\\*@"),
            ({"LOOKALIKE_SERVING__SINKS": "postgres", "LOOKALIKE_SERVING__POSTGRES__URL": ""},
             ConfigError, "serving sink postgres: no URL; set serving.postgres.url")):
        cfg = load_config(_path(good), environ=environ)
        publish_night(Warehouse.of(cfg), DS0, night_tables(DS0, items=20, k=2, seed=1)) \
            if DS0 not in Warehouse.of(cfg).entries("item_neighbors") else None
        with pytest.raises(Exception, match=pattern) as failed:
            handoff.run_handoff(cfg, DS0)
        assert isinstance(failed.value.__cause__ or failed.value, kind)
        assert "not-the-password" not in str(failed.value)


def test_ids_that_need_quoting_arrive_unchanged(online):
    cfg = online()
    odd = ['quote"d', "comma,id", "{brace}", "null", "back\\slash", "tab\tid", "ünï cödé", "sp ace"]
    tables = night_tables(DS0, items=len(odd), k=3, seed=4, ids=odd)
    publish_night(Warehouse.of(cfg), DS0, tables)
    handoff.run_handoff(cfg, DS0)
    expected = _expected(tables, "item_neighbors")
    for sink in ("postgres", "redis"):
        for (item,), want in expected.items():
            found = handoff.similar(cfg, item, sink=sink)
            assert same_list(want, ([n["neighbor_id"] for n in found["neighbors"]], [n["score"] for n in found["neighbors"]]))
