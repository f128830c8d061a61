"""A night published and handed off to real PostgreSQL and Redis servers, then listings added, changed and
sold in its source the next morning: what the intraday tests start from."""
import shutil
import sqlite3
import uuid
from datetime import date, timedelta

import pytest

from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.neighbors.stage import run_neighbors
from lookalike.online.handoff import run_handoff
from lookalike.online.lists import BY_NAME
from lookalike.online.handoff import open_store
from lookalike.publish.stage import run_publish
from lookalike.storage import Warehouse
from lookalike.query import run_query
from tests.conftest import DS, write_config

NEXT = (date.fromisoformat(DS) + timedelta(days=1)).isoformat()
MORNING, HOUR = f"{DS}T09:30:00", f"{DS}T10:00:00"
K = 5


def change_the_source(db, stamp: str) -> dict[str, set[str]]:
    """Listings added (one a repost), one with a photo that cannot be read, two changed, three sold at ``stamp``."""
    with sqlite3.connect(db) as con:
        rows = con.execute("select item_id, title, description, category, brand, price, seller_id, image_key "
                           "from listings where status = 'on_sale' and image_key is not null order by item_id "
                           "limit 12").fetchall()
        for i, (item, title, description, category, brand, price, seller, image) in enumerate(rows[:6]):
            con.execute("insert into listings values (?, ?, ?, ?, ?, ?, 'on_sale', ?, ?, ?, ?)",
                        (f"new{i:03d}", f"{title} (again)", description, category, brand, price, f"s9{i:03d}",
                         image if i == 0 else rows[11 - i][7], stamp, stamp))
        con.execute("insert into listings values ('broken', 'a tee', null, 'tee', null, 10, 'on_sale', 's1', "
                    "'no/such.jpg', ?, ?)", (stamp, stamp))
        con.execute("update listings set image_key = ?, updated_at = ? where item_id = ?", (rows[8][7], stamp, rows[6][0]))
        con.execute("update listings set seller_id = 's9999', updated_at = ? where item_id = ?", (stamp, rows[7][0]))
        for item, *_ in rows[9:12]:
            con.execute("update listings set status = 'sold', updated_at = ? where item_id = ?", (stamp, item))
    return {"new": {f"new{i:03d}" for i in range(6)}, "sold": {r[0] for r in rows[9:12]}}


@pytest.fixture(scope="module")
def served_night(tmp_path_factory, sample_dir, postgres_url, redis_url):
    """(config, what changed, the config file): a night published and handed off to both stores; then the
    source changes in the morning."""
    root = tmp_path_factory.mktemp("intraday")
    sample = root / "sample"
    shutil.copytree(sample_dir, sample)
    name = "t" + uuid.uuid4().hex[:10]
    config = write_config(root, sample, neighbors={"k": K, "exclude_same_seller": True, "margin": 4},
                          serving={"sinks": "postgres,redis", "postgres": {"url": postgres_url, "schema": name},
                                   "redis": {"url": redis_url, "prefix": name, "lease_ttl": 3}})
    cfg = load_config(config, environ={})
    for stage in (run_extract, run_embed, run_neighbors, run_publish, run_handoff):
        stage(cfg, DS)
    changed = change_the_source(sample / "marketplace.db", MORNING)
    return cfg, changed, config


def live_lists(cfg) -> dict[str, list[str]]:
    """item → its neighbours, in rank order, as the warehouse's item_neighbors_live view shows them."""
    _, rows = run_query(Warehouse.of(cfg), "select item_id, neighbor_id from item_neighbors_live order by item_id, rank")
    lists: dict[str, list[str]] = {}
    for item, neighbor in rows:
        lists.setdefault(item, []).append(neighbor)
    return lists


def rebuilt_lists(wh, ds: str) -> dict[str, list[str]]:
    """item → its neighbours, in rank order, as the ds's item_neighbors (a night's full rebuild) lists them."""
    import pyarrow.parquet as pq

    rebuilt = pq.read_table(wh.work(ds, "item_neighbors")).sort_by([("item_id", "ascending"), ("rank", "ascending")])
    lists: dict[str, list[str]] = {}
    for item, neighbor in zip(rebuilt.column("item_id").to_pylist(), rebuilt.column("neighbor_id").to_pylist()):
        lists.setdefault(item, []).append(neighbor)
    return lists


def store_lists(cfg, sink: str, items) -> dict[str, list[str]]:
    """item → its neighbours as ``sink`` serves them (read as the site reads), for the items it has a list of."""
    store = open_store(cfg, sink)
    try:
        found = {item: store.lookup(BY_NAME["item_neighbors"], (item,)) for item in items}
    finally:
        store.close()
    return {item: hit[1] for item, hit in found.items() if hit is not None}
