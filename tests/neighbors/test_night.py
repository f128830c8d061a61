"""A night after a night through the real stages: the second night, with a few listings added (one a
repost of an existing photo), changed (a new photo, another seller) and sold, updates the first
night's lists instead of searching every item; its item_neighbors equal a full rebuild's, row for
row, and the summary says which it did and why. An update killed mid-way leaves nothing, and its
rerun converges to the same lists."""
import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.neighbors.stage import run_neighbors
from lookalike.publish.stage import run_publish
from lookalike.storage import Warehouse
from lookalike.tools.summary import run_summary
from tests.conftest import DS, write_config

NEXT = (date.fromisoformat(DS) + timedelta(days=1)).isoformat()
REPO = Path(__file__).resolve().parents[2]


def _change_the_source(db: Path) -> None:
    """Six listings added (one the repost of an existing photo), three changed, three sold, on DS."""
    stamp = f"{DS}T12:00:00"
    with sqlite3.connect(db) as con:
        rows = con.execute("select item_id, title, description, category, brand, price, seller_id, image_key "
                           "from listings where status = 'on_sale' order by item_id limit 12").fetchall()
        for i, (item, title, description, category, brand, price, seller, image) in enumerate(rows[:6]):
            con.execute("insert into listings values (?, ?, ?, ?, ?, ?, 'on_sale', ?, ?, ?, ?)",
                        (f"new{i:03d}", f"{title} (again)", description, category, brand, price, f"s9{i:03d}",
                         image if i == 0 else rows[11 - i][7], stamp, stamp))
        con.execute("update listings set image_key = ?, updated_at = ? where item_id = ?", (rows[8][7], stamp, rows[6][0]))
        con.execute("update listings set seller_id = 's9999', updated_at = ? where item_id = ?", (stamp, rows[7][0]))
        con.execute("update listings set title = title || ' (reduced)', updated_at = ? where item_id = ?",
                    (stamp, rows[8][0]))
        for item, *_ in rows[9:12]:
            con.execute("update listings set status = 'sold', updated_at = ? where item_id = ?", (stamp, item))


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("nights")
    sample = root / "sample"
    shutil.copytree(sample_dir, sample)
    config = write_config(root, sample, neighbors={"k": 5, "exclude_same_seller": True, "margin": 4})
    cfg = load_config(config, environ={})
    for stage in (run_extract, run_embed, run_neighbors):
        stage(cfg, DS)
    run_publish(cfg, DS)
    _change_the_source(sample / "marketplace.db")
    for stage in (run_extract, run_embed):
        stage(cfg, NEXT)
    return cfg, config


def _rows(cfg, ds):
    table = pq.read_table(Warehouse.of(cfg).work(ds, "item_neighbors")).drop(["ds"])
    return table.sort_by([("item_id", "ascending"), ("rank", "ascending")])


def test_the_second_night_updates_the_lists_and_equals_a_full_rebuild(two_nights):
    cfg, _ = two_nights
    first = run_neighbors(cfg, DS)
    assert first["mode"] == "full" and "no earlier night" in first["why"]
    updated = run_neighbors(cfg, NEXT)
    assert updated["mode"] == "incremental", updated["why"]
    incremental_rows = _rows(cfg, NEXT)
    stats = (Warehouse.of(cfg).work(NEXT, "neighbors_stats.json")).read_text()
    assert '"mode": "incremental"' in stats
    rebuilt = run_neighbors(cfg, NEXT, full=True)
    assert rebuilt["mode"] == "full" and "asked for" in rebuilt["why"]
    assert incremental_rows.equals(_rows(cfg, NEXT))  # same neighbours, same order, same scores
    listed = set(incremental_rows.column("item_id").to_pylist()) | set(incremental_rows.column("neighbor_id").to_pylist())
    assert {f"new{i:03d}" for i in range(6)} <= set(incremental_rows.column("item_id").to_pylist())
    with sqlite3.connect(cfg.source.url.removeprefix("sqlite:///")) as con:
        sold = {r[0] for r in con.execute("select item_id from listings where status = 'sold' and updated_at like ?",
                                          (f"{DS}T12%",))}
    assert len(sold) == 3 and not sold & listed
    run_neighbors(cfg, NEXT)  # the update again (its lists are the rebuild's: the kept ones are the same)
    run_publish(cfg, NEXT)
    summary = run_summary(cfg, NEXT)
    assert f"updated from {DS}'s lists" in summary


def test_on_spark_the_second_night_updates_its_lists_as_in_one_process(two_nights):
    """From neighbors.spark_min_items on, both nights run as Spark tasks: the first keeps its lists, the
    second updates them, and its rows equal the in-process full rebuild's."""
    cfg, _ = two_nights
    on_spark = dataclasses.replace(cfg, neighbors=dataclasses.replace(cfg.neighbors, spark_min_items=1))
    assert run_neighbors(on_spark, DS)["mode"] == "full"
    updated = run_neighbors(on_spark, NEXT)
    assert updated["mode"] == "incremental", updated["why"]
    stats = json.loads(Warehouse.of(cfg).work(NEXT, "neighbors_stats.json").read_text())
    assert stats["executor"] == "spark" and stats["spark"]["tasks"] >= 1 and stats["fresh"] > 0
    on_spark_rows = _rows(cfg, NEXT)
    run_neighbors(cfg, NEXT, full=True)
    assert on_spark_rows.equals(_rows(cfg, NEXT))


def test_an_update_killed_mid_way_leaves_nothing_and_its_rerun_converges(two_nights):
    cfg, config = two_nights
    run_neighbors(cfg, DS)
    run_neighbors(cfg, NEXT, full=True)
    want = _rows(cfg, NEXT)
    wh = Warehouse.of(cfg)
    killed = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "neighbors", "--config", str(config),
                             "--ds", NEXT], env={**_env(), "LOOKALIKE_FAULT": "neighbors.mid_update"},
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not list(wh.work(NEXT, "item_neighbors").glob("*.parquet"))  # nothing half-written to publish
    rerun = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "neighbors", "--config", str(config),
                            "--ds", NEXT], env=_env(), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert '"mode": "incremental"' in rerun.stdout
    assert _rows(cfg, NEXT).equals(want)


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
