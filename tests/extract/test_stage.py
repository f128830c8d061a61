import sqlite3

import pyarrow.parquet as pq
import pytest

from lookalike.config import load_config
from lookalike.extract.stage import ExtractError, run_extract
from lookalike.storage import Warehouse
from tests.conftest import DS, write_config


def test_snapshot_catalogue_and_quarantine(cfg, sample_dir):
    out = run_extract(cfg, DS)
    snap = pq.read_table(out["listings_snapshot"]).to_pylist()
    cat = pq.read_table(out["catalog"]).to_pylist()
    quarantine = pq.read_table(out["quarantine"]).to_pylist()
    con = sqlite3.connect(sample_dir / "marketplace.db")
    in_window = {r[0] for r in con.execute(
        "select item_id from listings where created_at >= '2026-08-23' and created_at < '2026-11-21'")}
    on_sale = {r[0] for r in con.execute("select item_id from listings where status = 'on_sale'")}
    quarantined = {q["item_id"] for q in quarantine}
    assert {r["item_id"] for r in snap} == in_window - quarantined
    assert {r["item_id"] for r in cat} == on_sale - quarantined
    assert all(r["image_sha256"] and len(r["image"]) > 100 and max(r["image_width"], r["image_height"]) == 96
               for r in snap)
    assert quarantine and all(q["reason"] and q["stage"] == "extract" for q in quarantine)


def test_rerun_replaces_and_dedupes_latest_update(tmp_path, sample_dir):
    src = tmp_path / "dup.db"
    con = sqlite3.connect(src)
    con.executescript(f"attach '{sample_dir / 'marketplace.db'}' as s; "
                      "create table listings as select * from s.listings; "
                      "create table interactions as select * from s.interactions;")
    row = con.execute("select * from listings where status = 'on_sale' and image_key like '%.jpg' "
                      "and created_at > '2026-10-01' limit 1").fetchone()
    con.execute("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)",
                (row[0], "the newer title", *row[2:10], "2026-11-20T23:00:00"))
    con.commit()
    cfg = load_config(write_config(tmp_path, sample_dir, source={"url": f"sqlite:///{src}",
                                                                  "images": str(sample_dir / "images")}))
    run_extract(cfg, DS)
    out = run_extract(cfg, DS)  # a rerun replaces, never appends
    snap = pq.read_table(out["listings_snapshot"]).to_pylist()
    assert [r["title"] for r in snap if r["item_id"] == row[0]] == ["the newer title"]
    assert len({r["item_id"] for r in snap}) == len(snap)


def test_empty_window_is_a_clear_error(cfg):
    with pytest.raises(ExtractError, match="no listings created in"):
        run_extract(cfg, "2020-01-01")


def test_unreachable_source_names_the_url(tmp_path, sample_dir):
    cfg = load_config(write_config(tmp_path, sample_dir, source={"url": f"sqlite:///{tmp_path}/nope/x.db",
                                                                  "images": "x"}))
    with pytest.raises(ExtractError, match="does not exist: create the sample with"):
        run_extract(cfg, DS)
    assert not Warehouse.of(cfg).work(DS, "listings_snapshot").exists()


def test_contract_breaches_are_quarantined_with_their_reason():
    import pandas as pd

    from lookalike.extract.validate import validate_listings

    ok_row = {"description": None, "category": "tops", "brand": None, "price": 10.0, "seller_id": "s",
              "image_key": "k", "created_at": "2026-01-01T00:00:00"}
    frame = pd.DataFrame([
        {**ok_row, "item_id": "a", "title": "old", "status": "on_sale", "updated_at": "2026-01-01T00:00:00"},
        {**ok_row, "item_id": "a", "title": "new", "status": "on_sale", "updated_at": "2026-01-02T00:00:00"},
        {**ok_row, "item_id": "b", "title": "t", "status": "for_rent", "updated_at": "2026-01-01T00:00:00"},
        {**ok_row, "item_id": "c", "title": None, "status": "sold", "updated_at": "2026-01-01T00:00:00"},
        {**ok_row, "item_id": None, "title": "t", "status": "sold", "updated_at": "2026-01-01T00:00:00"},
        {**ok_row, "item_id": "d", "title": "t", "status": "sold", "updated_at": "yesterday"},
    ])
    ok, rejects = validate_listings(frame)
    assert ok["item_id"].tolist() == ["a"] and ok["title"].tolist() == ["new"]
    assert {r["item_id"]: r["reason"] for r in rejects if r["item_id"]} == {
        "b": "unknown status 'for_rent'", "c": "missing title", "d": "updated_at not a timestamp: 'yesterday'"}
    assert [r["reason"] for r in rejects if r["item_id"] is None] == ["missing item_id"]


def test_an_extract_killed_mid_write_leaves_nothing_half_read_and_a_rerun_converges(tmp_path, sample_dir):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    config = write_config(tmp_path, sample_dir)
    wh = Warehouse.of(load_config(config, environ={}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    command = [sys.executable, "-m", "lookalike.tools.cli", "extract", "--config", str(config), "--ds", DS]
    repo = Path(__file__).resolve().parents[2]
    killed = subprocess.run(command, env={**env, "LOOKALIKE_FAULT": "extract.mid_write"}, cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (wh.work(DS, "catalog") / "part-0.parquet").exists()  # killed before the catalogue was written
    assert subprocess.run(command, env=env, cwd=repo, capture_output=True, timeout=300).returncode == 0
    rerun = {name: pq.read_table(wh.work(DS, name)).to_pylist() for name in ("listings_snapshot", "catalog")}
    uninterrupted = run_extract(load_config(config, environ={}), DS)
    assert rerun == {name: pq.read_table(uninterrupted[name]).to_pylist() for name in rerun}


def test_the_source_is_read_in_chunks_of_the_asked_size(sample_dir):
    from lookalike import schemas
    from lookalike.extract.source import optional_columns, stream_source

    url = f"sqlite:///{sample_dir / 'marketplace.db'}"
    optional = optional_columns(url, "interactions", schemas.INTERACTIONS_OPTIONAL)
    assert optional == {"experiment": "null", "variant": "null"}  # the sample predates experiments
    chunks = [len(c) for c in stream_source(url, "interactions.sql", {"window_start": "2026-01-01T00:00:00",
                                                                      "window_end": "2026-11-21T00:00:00"},
                                            expected=schemas.INTERACTIONS.names, optional=optional,
                                            chunk_rows=500)]
    (total,) = sqlite3.connect(sample_dir / "marketplace.db").execute(
        "select count(*) from interactions where ts < '2026-11-21'").fetchone()
    assert sum(chunks) == total and len(chunks) == -(-total // 500)
    assert set(chunks[:-1]) == {500}


def test_the_optional_experiment_columns_are_carried_when_the_source_has_them(tmp_path, sample_dir):
    """A source without interactions.experiment/variant reads them as NULL (every other test); one
    with them gets them into the ds's interaction log, NULL outside experiments."""
    import shutil

    shutil.copytree(sample_dir, tmp_path / "sample")
    db = tmp_path / "sample" / "marketplace.db"
    with sqlite3.connect(db) as con:
        con.execute("alter table interactions add column experiment text")
        con.execute("alter table interactions add column variant text")
        con.execute("update interactions set experiment = 'look', variant = 'b' where rowid % 10 = 0")
    cfg = load_config(write_config(tmp_path, tmp_path / "sample"), environ={})
    events = pq.read_table(run_extract(cfg, DS)["interactions"]).to_pylist()
    tagged = [e for e in events if e["experiment"] is not None]
    assert 0 < len(tagged) < len(events) and {(e["experiment"], e["variant"]) for e in tagged} == {("look", "b")}
