"""An intraday hour through the real stages, on a night published and handed off to real PostgreSQL and
Redis servers: listings added (one a repost of an existing photo, one with a broken photo), changed (a new
photo, another seller) and sold in the source in the morning, then one hour. Every new on-sale listing has
k neighbours in the warehouse's live view and in both stores, no list anywhere holds a sold item, and the
live view equals the next night's full rebuild, row for row. The hour after it, with nothing new, changes
nothing; a second hour sells one more item and the tables follow. A listing committed after an hour ran,
with an updated_at before that hour's as_of, is applied by the next hour (intraday.lookback)."""
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq


from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.intraday.stage import handoff_hour, lookback, publish_hour, run_hour
from lookalike.neighbors.stage import run_neighbors
from lookalike.storage import Warehouse
from tests.conftest import DS
from tests.intraday.conftest import HOUR, K, NEXT, live_lists, rebuilt_lists, store_lists


def test_an_hour_lists_new_listings_and_drops_sold_ones_everywhere_as_the_next_night_will(served_night):
    cfg, changed, _ = served_night
    wh = Warehouse.of(cfg)
    night = live_lists(cfg)
    assert not changed["new"] & set(night) and changed["sold"] <= set(night)
    hour = run_hour(cfg, HOUR)
    assert hour["night"] == DS and hour["watermark"] == f"{DS}T00:00:00"
    assert hour["since"] == lookback(f"{DS}T00:00:00", cfg.intraday.lookback) < hour["watermark"]
    assert hour["embedded"] >= 1 and hour["lists_changed"] > len(changed["new"])
    # the broken photo is quarantined (with any row of the lookback the night quarantined too: read again)
    rejected = pq.read_table(Path(hour["folder"]) / "changes.parquet", columns=["item_id", "reason"]).to_pylist()
    assert {"broken"} <= {r["item_id"] for r in rejected if r["reason"]} and hour["quarantined"] >= 1
    assert publish_hour(cfg, HOUR)["rows"] == hour["rows"]
    served = handoff_hour(cfg, HOUR)
    assert {sink: result["as_of"] for sink, result in served["sinks"].items()} == {"postgres": HOUR, "redis": HOUR}

    live = live_lists(cfg)
    assert all(len(live[item]) == K for item in changed["new"])  # every new on-sale listing has k neighbours
    assert "broken" not in live
    assert not changed["sold"] & set(live) and not any(changed["sold"] & set(n) for n in live.values())
    for sink in ("postgres", "redis"):
        stored = store_lists(cfg, sink, sorted(live))
        assert stored == live, sink  # the store serves what the warehouse's view shows, list for list
        assert not store_lists(cfg, sink, sorted(changed["sold"]))

    # The next night, read from the same source, equals the hour's lists: a full rebuild's
    for stage in (run_extract, run_embed):
        stage(cfg, NEXT)
    run_neighbors(cfg, NEXT, full=True)
    assert live == rebuilt_lists(wh, NEXT)


def test_a_listing_committed_after_an_hour_ran_with_an_earlier_updated_at_is_applied_by_the_next(served_night):
    cfg, _, config = served_night
    assert cfg.intraday.lookback >= 5
    late = f"{DS}T09:58:00"  # before the 10:00 hour's as_of, committed after it ran (a long transaction)
    with sqlite3.connect(Path(cfg.source.url.removeprefix("sqlite:///"))) as con:
        row = con.execute("select title, description, category, brand, price, image_key from listings "
                          "where status = 'on_sale' and item_id != 'broken' order by item_id limit 1").fetchone()
        con.execute("insert into listings values ('late001', ?, ?, ?, ?, ?, 'on_sale', 's7777', ?, ?, ?)",
                    (*row[:5], row[5], late, late))
    assert "late001" not in live_lists(cfg)
    next_hour = f"{DS}T11:00:00"
    hour = run_hour(cfg, next_hour)
    assert (hour["watermark"], hour["since"]) == (HOUR, lookback(HOUR, cfg.intraday.lookback))
    assert hour["since"] <= late < HOUR
    publish_hour(cfg, next_hour)
    handoff_hour(cfg, next_hour)
    live = live_lists(cfg)
    assert len(live["late001"]) == K
    for sink in ("postgres", "redis"):
        assert store_lists(cfg, sink, ["late001"]) == {"late001": live["late001"]}
