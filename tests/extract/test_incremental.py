"""A night's extract follows what changed: photos normalised on an earlier night are reused unless
their object changed, the snapshot and the catalogue share one decode, and nothing else differs."""
import dataclasses
import hashlib
import os
import shutil
import sqlite3

import pyarrow.parquet as pq
import pytest

from lookalike.config import load_config
from lookalike.extract import photos
from lookalike.extract.stage import run_extract
from lookalike.storage import Warehouse
from tests.conftest import DS, write_config

NEXT = "2026-11-22"


def _copy_source(tmp_path, sample_dir, version: bool = False):
    """A private copy of the sample (database and photos), optionally with an image_version column."""
    images = tmp_path / "images"
    shutil.copytree(sample_dir / "images", images)
    db = tmp_path / "src.db"
    con = sqlite3.connect(db)
    con.executescript(f"attach '{sample_dir / 'marketplace.db'}' as s; "
                      "create table listings as select * from s.listings; "
                      "create table interactions as select * from s.interactions;")
    con.commit()
    con.close()
    overrides = {}
    if version:
        sql = tmp_path / "sql"
        shutil.copytree(photos.Path(photos.__file__).resolve().parents[2] / "sql" / "extract", sql)
        for name in ("listings_window.sql", "catalog.sql"):
            text = (sql / name).read_text().replace("    image_key,", "    image_key,\n    image_version,")
            (sql / name).write_text(text)
        con = sqlite3.connect(db)
        con.execute("alter table listings add column image_version text")
        con.execute("update listings set image_version = 'v1'")
        con.commit()
        con.close()
        overrides["extract_sql"] = str(sql)
    cfg = load_config(write_config(tmp_path, sample_dir, source={"url": f"sqlite:///{db}", "images": str(images),
                                                                  **overrides}))
    return cfg, db, images


def _items(out) -> dict:
    rows = pq.read_table(out).to_pylist()
    return {r["item_id"]: r for r in rows}


def _on_sale_photo(db) -> tuple[str, str]:
    con = sqlite3.connect(db)
    item, key = con.execute("select item_id, image_key from listings where status = 'on_sale' "
                            "and created_at >= '2026-10-01' and image_key like '%.jpg' order by item_id limit 1").fetchone()
    con.close()
    return item, key


def _other_photo(db, key: str) -> str:
    con = sqlite3.connect(db)
    (other,) = con.execute("select image_key from listings where image_key like '%.jpg' and image_key != ? "
                           "order by item_id limit 1", (key,)).fetchone()
    con.close()
    return other


def test_the_second_night_reuses_unchanged_photos_and_reads_a_rewritten_one(tmp_path, sample_dir):
    cfg, db, images = _copy_source(tmp_path, sample_dir)
    first = run_extract(cfg, DS)
    wh = Warehouse.of(cfg)
    night1 = photos.read_marker(wh, DS)
    snap, cat = _items(first["listings_snapshot"]), _items(first["catalog"])
    # one decode per item: the catalogue reuses what the snapshot decoded tonight
    assert night1["photos"]["fetched"] == len(set(snap) | set(cat))
    assert night1["photos"]["reused"] == len(set(snap) & set(cat)) and night1["photos_reused_from"] is None

    item, key = _on_sale_photo(db)
    before = cat[item]["image_sha256"]
    other = _other_photo(db, key)
    shutil.copyfile(images / other, images / key)  # a new photo under the same key
    second = run_extract(cfg, NEXT)
    night2 = photos.read_marker(wh, NEXT)
    cat2 = _items(second["catalog"])
    assert cat2[item]["image_sha256"] != before  # picked up
    assert cat2[item]["image_sha256"] == hashlib.sha256((images / key).read_bytes()).hexdigest()
    assert night2["photos_reused_from"] == DS
    assert night2["photos"]["fetched"] == 1  # the rewritten photo, nothing else
    assert night2["photos"]["reused"] == len(_items(second["listings_snapshot"])) + len(cat2) - 1

    # what was reused is what a first night writes: the same rows, the same photos
    (tmp_path / "fresh").mkdir()
    fresh_cfg = load_config(write_config(tmp_path / "fresh", sample_dir, source={"url": f"sqlite:///{db}",
                                                                                  "images": str(images)}))
    fresh = _items(run_extract(fresh_cfg, NEXT)["catalog"])
    assert photos.read_marker(Warehouse.of(fresh_cfg), NEXT)["photos"]["reused"] < night2["photos"]["reused"]
    assert {i: (r["image"], r["title"]) for i, r in fresh.items()} == {i: (r["image"], r["title"])
                                                                       for i, r in cat2.items()}


def test_a_photo_touched_back_to_its_old_mtime_is_still_read_again(tmp_path, sample_dir):
    cfg, db, images = _copy_source(tmp_path, sample_dir)
    run_extract(cfg, DS)
    item, key = _on_sale_photo(db)
    info = (images / key).stat()
    other = _other_photo(db, key)
    shutil.copyfile(images / other, images / key)
    os.utime(images / key, ns=(info.st_atime_ns, info.st_mtime_ns))  # same mtime; the ctime moved
    run_extract(cfg, NEXT)
    assert photos.read_marker(Warehouse.of(cfg), NEXT)["photos"]["fetched"] == 1


def test_with_an_image_version_column_unchanged_photos_are_not_even_looked_at(tmp_path, sample_dir):
    cfg, db, images = _copy_source(tmp_path, sample_dir, version=True)
    run_extract(cfg, DS)
    item, key = _on_sale_photo(db)
    other = _other_photo(db, key)
    shutil.copyfile(images / other, images / key)  # rewritten, but the source still says v1 …
    hidden = tmp_path / "hidden"
    images.rename(hidden)
    (images / key).parent.mkdir(parents=True)
    shutil.copyfile(hidden / key, images / key)  # … and every other photo is gone from the store
    con = sqlite3.connect(db)
    con.execute("update listings set image_version = 'v2' where item_id = ?", (item,))
    con.commit()
    con.close()
    out = run_extract(cfg, NEXT)
    night2 = photos.read_marker(Warehouse.of(cfg), NEXT)
    assert night2["photos"]["fetched"] == 1 and night2["photos"]["reused"] > 500
    quarantined = {DS: set(), NEXT: set()}
    for ds in quarantined:
        quarantined[ds] = {q["item_id"] for q in pq.read_table(Warehouse.of(cfg).work(ds, "quarantine")).to_pylist()}
    assert quarantined[NEXT] <= quarantined[DS]  # the photos gone from the store were never asked for
    assert _items(out["catalog"])[item]["image_source"].endswith("|version:v2")


def test_another_image_size_decodes_every_photo_again(tmp_path, sample_dir):
    cfg, db, images = _copy_source(tmp_path, sample_dir)
    run_extract(cfg, DS)
    bigger = load_config(write_config(tmp_path, sample_dir, source={"url": f"sqlite:///{db}", "images": str(images)},
                                      extract={"image_size": 64}))
    out = run_extract(bigger, NEXT)
    night2 = photos.read_marker(Warehouse.of(bigger), NEXT)
    assert night2["photos_reused_from"] == DS
    assert night2["photos"]["fetched"] == len(set(_items(out["listings_snapshot"])) | set(_items(out["catalog"])))
    assert all(max(r["image_width"], r["image_height"]) == 64 for r in _items(out["catalog"]).values())


def test_an_unfinished_extract_is_never_reused(tmp_path, sample_dir):
    cfg, db, images = _copy_source(tmp_path, sample_dir)
    run_extract(cfg, DS)
    wh = Warehouse.of(cfg)
    wh.work(DS, photos.MARKER).unlink()  # as if it had been killed before its end
    run_extract(cfg, NEXT)
    assert photos.read_marker(wh, NEXT)["photos_reused_from"] is None


@pytest.mark.usefixtures("s3")
def test_on_s3_an_unchanged_photo_costs_a_conditional_get_and_a_rewritten_one_is_read(tmp_path, sample_dir):
    import boto3

    cfg, db, images = _copy_source(tmp_path, sample_dir)
    client = boto3.client("s3")
    client.create_bucket(Bucket="photos")
    for path in images.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "photos", f"img/{path.relative_to(images).as_posix()}")
    cfg = load_config(write_config(tmp_path, sample_dir, source={"url": f"sqlite:///{db}",
                                                                  "images": "s3://photos/img"}))
    run_extract(cfg, DS)
    item, key = _on_sale_photo(db)
    other = _other_photo(db, key)
    client.upload_file(str(images / other), "photos", f"img/{key}")
    out = run_extract(cfg, NEXT)
    night2 = photos.read_marker(Warehouse.of(cfg), NEXT)
    assert night2["photos"]["fetched"] == 1 and night2["photos"]["reused"] > 0
    assert _items(out["catalog"])[item]["image_source"].split("|")[1].startswith("etag:")


def _events(path) -> list[tuple]:
    return sorted(tuple(r.values()) for r in pq.read_table(path).to_pylist())


def test_the_second_night_reads_only_the_newest_days_of_the_event_log(tmp_path, sample_dir):
    cfg, db, images = _copy_source(tmp_path, sample_dir)
    run_extract(cfg, DS)
    con = sqlite3.connect(db)  # logged after the first night, with a timestamp inside its window
    con.execute("insert into interactions (user_id, session_id, event, item_id, source_item_id, ts) "
                "select user_id, session_id, 'click', item_id, source_item_id, '2026-11-20T23:59:00' "
                "from interactions limit 1")
    con.commit()
    con.close()
    second = run_extract(cfg, NEXT)
    wh = Warehouse.of(cfg)
    night2 = photos.read_marker(wh, NEXT)
    assert night2["events_reused_from"] == DS
    assert 0.8 * night2["events"] < night2["events_reused"] < night2["events"]  # all but the last four days
    whole = dataclasses.replace(cfg, work_dir=str(tmp_path / "whole"),
                                extract=dataclasses.replace(cfg.extract, events_refetch_days=10_000))
    reread = run_extract(whole, NEXT)
    assert photos.read_marker(Warehouse.of(whole), NEXT)["events_reused"] == 0
    # the same log as a full read, the late event included
    assert _events(second["interactions"]) == _events(reread["interactions"])
    assert any(e[5] == "2026-11-20T23:59:00" for e in _events(second["interactions"]))  # ts


def test_events_read_with_another_template_are_not_reused(tmp_path, sample_dir):
    cfg, db, images = _copy_source(tmp_path, sample_dir)
    run_extract(cfg, DS)
    sql = tmp_path / "sql"
    shutil.copytree(photos.Path(photos.__file__).resolve().parents[2] / "sql" / "extract", sql)
    (sql / "interactions.sql").write_text((sql / "interactions.sql").read_text() + "\n  and event != 'view'\n")
    other = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, extract_sql=str(sql)))
    run_extract(other, NEXT)
    night2 = photos.read_marker(Warehouse.of(cfg), NEXT)
    assert night2["events_reused"] == 0 and night2["events_reused_from"] is None
