"""A hand-off killed (SIGKILL, ``LOOKALIKE_FAULT``) while it writes, checks or switches leaves the live
generation identical and readable; a rerun converges to the night's lists, and leaves no orphan
generation, table or key behind."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.online import handoff
from lookalike.online.lists import BY_NAME, lists_of, same_list
from lookalike.online.handoff import open_store
from lookalike.online.store import LIVE, RETIRED
from lookalike.storage import Warehouse
from tests.online.nights import night_tables, publish_night

REPO = Path(__file__).resolve().parents[2]
FIRST, SECOND = "2026-11-01", "2026-11-02"


def _lists(tables) -> dict:
    spec = BY_NAME["item_neighbors"]
    return {(r["item_id"],): (r["ids"], r["scores"]) for r in lists_of(tables["item_neighbors"], spec).to_pylist()}


def _reads(cfg, sink: str, items) -> dict:
    store = open_store(cfg, sink)
    try:
        return {key: store.lookup(BY_NAME["item_neighbors"], key) for key in items}
    finally:
        store.close()


def _store_contents(cfg, sink: str, postgres_url: str) -> set[str]:
    """Every table (PostgreSQL) or key (Redis) the store holds under the test's schema or prefix."""
    if sink == "postgres":
        import psycopg

        with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
            return {r[0] for r in conn.execute("select tablename from pg_tables where schemaname = %s",
                                               (cfg.serving.postgres.schema,))}
    import redis

    r = redis.Redis.from_url(cfg.serving.redis.url)
    return {k.decode() for k in r.scan_iter(match=f"{cfg.serving.redis.prefix}:*")}


@pytest.mark.parametrize("sink, point", [
    ("postgres", "handoff.postgres_mid_copy"), ("postgres", "handoff.before_check"),
    ("postgres", "handoff.postgres_in_switch"), ("postgres", "handoff.before_switch"),
    ("redis", "handoff.redis_mid_write"), ("redis", "handoff.before_check"), ("redis", "handoff.before_switch"),
])
def test_a_killed_handoff_changes_nothing_live_and_a_rerun_converges(online, postgres_url, sink, point):
    cfg = online(sinks=sink, redis={"batch": 100, "lease_ttl": 3})  # many pipelined batches: the kill lands mid-write
    wh = Warehouse.of(cfg)
    nights = {ds: night_tables(ds, items=3000, k=10, seed=i) for i, ds in enumerate((FIRST, SECOND))}
    publish_night(wh, FIRST, nights[FIRST])
    handoff.run_handoff(cfg, FIRST)
    items = random.Random(0).sample(sorted(_lists(nights[FIRST])), 50)
    before = _reads(cfg, sink, items)
    publish_night(wh, SECOND, nights[SECOND])

    config = str(Path(cfg.warehouse).parent / "lookalike.yaml")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}, "LOOKALIKE_FAULT": point}
    killed = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "handoff", "--config", config,
                             "--ds", SECOND], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _reads(cfg, sink, items) == before  # the live generation: identical and readable

    env.pop("LOOKALIKE_FAULT")
    rerun = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "handoff", "--config", config,
                            "--ds", SECOND], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    want = _lists(nights[SECOND])
    for key, (generation, ids, scores) in _reads(cfg, sink, items).items():
        assert same_list(want[key], (ids, scores))
    store = open_store(cfg, sink)
    generations = store.generations("items")
    store.close()
    assert [(g.ds, g.state) for g in generations] == [(SECOND, LIVE), (FIRST, RETIRED)]  # no orphan generation
    kept = {g.number for g in generations}
    held = _store_contents(cfg, sink, postgres_url)
    if sink == "postgres":
        assert held == {"generations", "live", "history", "leases"} | {
            f"{t}_g{g}" for t in ("item_neighbors", "item_neighbors_variants") for g in kept}
    else:
        data = {int(k.split(":")[2]) for k in held if k.split(":")[1] == "g"}
        meta = {int(k.split(":")[3]) for k in held if k.split(":")[1:3] == ["{items}", "g"]}
        assert data == meta == kept
