"""Hostile input never crashes extract: every row is kept (normalised) or quarantined with a reason.

The properties live in ``tests/hostile.py``; here they run a few hundred cases, and
``benchmarks/fuzz_inputs.py`` runs tens of thousands. Then the whole stage on a source mixing the
sample with hostile rows, files and events, and the quarantine-share gate.
"""
import os
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lookalike.config import load_config
from lookalike.extract.stage import QuarantineShareExceeded, run_extract
from lookalike.extract.validate import _CONTROL, _SPACES, as_text, clean_text
from lookalike.storage import Warehouse
from tests import hostile
from tests.conftest import DS, write_config

FUZZ = settings(max_examples=75, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(hostile.image_bytes())
def test_any_image_bytes_are_kept_as_a_small_rgb_jpeg_or_rejected(data):
    hostile.check_image(data)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return hostile.make_store(tmp_path_factory.mktemp("hostile"))


def test_any_image_key_reads_a_file_inside_the_store_or_gives_a_reason(store):
    @FUZZ
    @given(hostile.image_keys())
    def prop(key):
        hostile.check_key(store, key)

    prop()
    # The planted traps, by name: each has its own reason.
    reasons = {key: hostile.check_key(store, key) for key in
               ["dir", "link-out", "loop", "fifo", "big.jpg", "../outside.jpg", "/etc/passwd", "ok.jpg\x00",
                "x" * 300, "link-in.jpg", "ok.jpg", "dir-out/ok.jpg", "dir-in/ok.png", "loop/ok.jpg"]}
    assert reasons["dir"] == "rejected: image_key" and reasons["link-out"] == "rejected: image_key"
    assert reasons["dir-out/ok.jpg"] == "rejected: image_key" and reasons["dir-in/ok.png"] == "kept"
    assert reasons["loop/ok.jpg"] == "rejected: image_key"
    assert reasons["fifo"] == "rejected: image_key" and reasons["big.jpg"] == "rejected: image file too large"
    assert reasons["ok.jpg\x00"] == "rejected: image_key contains a NUL byte"
    assert reasons["link-in.jpg"] == reasons["ok.jpg"] == "kept"


@FUZZ
@given(st.one_of(st.text(max_size=60), st.text(alphabet=" ab\t\n", max_size=12)), st.integers(0, 30))
def test_text_that_needs_no_cleaning_comes_back_as_the_full_cleaning_gives_it(text, limit):
    assert clean_text(text, limit) == _SPACES.sub(" ", _CONTROL.sub(" ", as_text(text))).strip()[:limit]
    assert as_text(text) == text.encode("utf-8", "replace").decode("utf-8")


@FUZZ
@given(hostile.listing_rows())
def test_any_listing_rows_are_kept_clean_or_rejected_with_a_reason(frame):
    hostile.check_listings(frame)


@FUZZ
@given(hostile.event_rows())
def test_any_events_are_kept_complete_or_rejected_with_a_reason(frame):
    hostile.check_events(frame)


def _hostile_source(tmp_path: Path, sample_dir: Path, n_bad_images: int = 0) -> tuple[Path, Path]:
    """A copy of the sample source plus hostile listings (bad keys, files, values) and events."""
    db = tmp_path / "hostile.db"
    con = sqlite3.connect(db)
    con.executescript(f"attach '{sample_dir / 'marketplace.db'}' as s; "
                      "create table listings as select * from s.listings; "
                      "create table interactions as select * from s.interactions;")
    store = hostile.make_store(tmp_path)  # tmp_path/store: traps beside a copy of the sample's photos
    for path in (sample_dir / "images").rglob("*"):
        if path.is_file():
            target = store / path.relative_to(sample_dir / "images")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(path, target)
    when = "2026-11-10T10:00:00"
    hostile_rows = [
        ("h-dir", "a dress", "on_sale", "dir", 10.0),
        ("h-out", "a dress", "on_sale", "link-out", 10.0),
        ("h-fifo", "a dress", "on_sale", "fifo", 10.0),
        ("h-nul", "a dress", "on_sale", "ok.jpg\x00.png", 10.0),
        ("h-abs", "a dress", "on_sale", "/etc/passwd", 10.0),
        ("h-up", "a dress", "on_sale", "../outside.jpg", 10.0),
        ("h-long", "a dress", "on_sale", "x" * 5000, 10.0),
        ("h-price", "a dress", "on_sale", "ok.jpg", "ten dollars"),
        ("h-neg", "a dress", "on_sale", "ok.jpg", -5),
        ("h-status", "a dress", "for_rent", "ok.jpg", 1.0),
        ("h-ctrl", "red\x00 dress\x1b[31m\u202e 👗" + "!" * 100_000, "on_sale", "sub/ok.png", 12.0),
    ]
    for item_id, title, status, key, price in hostile_rows:
        con.execute("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)",
                    (item_id, title, None, "tops", None, price, status, "seller-h", key, when, when))
    con.execute("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)",
                ("h-null-title", None, None, None, None, 1.0, "on_sale", None, "ok.jpg", when, when))
    con.execute("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)",
                ("h-bad-ts", "t", None, None, None, 1.0, "on_sale", None, "ok.jpg", when, "last tuesday"))
    for user, event, item, ts in [(None, "click", "h-ctrl", when), ("u-h", None, "h-ctrl", when),
                                  ("u-h", "click", None, when), ("u-h", "click", "h-ctrl", None),
                                  ("u-h", "teleport", "h-ctrl", when), ("u-h", "view", "h-ctrl", "2026-11-15 at noon")]:
        con.execute("insert into interactions (user_id, session_id, event, item_id, source_item_id, ts) "
                    "values (?,?,?,?,?,?)", (user, None, event, item, None, ts))
    for i in range(n_bad_images):  # a broken image bucket: many keys that name nothing
        con.execute("insert into listings values (?,?,?,?,?,?,?,?,?,?,?)",
                    (f"h-gone-{i}", "t", None, None, None, 1.0, "on_sale", None, f"gone/{i}.jpg", when, when))
    con.commit()
    con.close()
    return db, store


def test_hostile_rows_files_and_events_are_quarantined_and_the_rest_extracted(tmp_path, sample_dir):
    db, store = _hostile_source(tmp_path, sample_dir)
    cfg = load_config(write_config(tmp_path, sample_dir, source={"url": f"sqlite:///{db}", "images": str(store)},
                                   extract={"max_quarantine_share": 0.5}), environ={})
    out = run_extract(cfg, DS)
    quarantine = {(q["item_id"], q["reason"].split(":")[0]) for q in pq.read_table(out["quarantine"]).to_pylist()}
    for item_id in ("h-dir", "h-out", "h-fifo", "h-nul", "h-abs", "h-up", "h-long", "h-price", "h-neg",
                    "h-status", "h-null-title", "h-bad-ts"):
        assert any(q[0] == item_id for q in quarantine), item_id
    assert ("h-ctrl", "event without user_id") in quarantine and (None, "event without item_id") in quarantine
    assert {("h-ctrl", "event ts not a timestamp"), ("h-ctrl", "unknown event type 'teleport'")} <= quarantine
    snapshot = {r["item_id"]: r for r in pq.read_table(out["listings_snapshot"]).to_pylist()}
    title = snapshot["h-ctrl"]["title"]  # kept, normalised: no control characters, cut to 500
    assert title.startswith("red dress [31m\u202e 👗") and len(title) == 500
    events = pq.read_table(out["interactions"]).to_pylist()
    assert all(e["user_id"] and e["item_id"] and e["ts"] for e in events)


def test_a_broken_image_bucket_fails_the_ds_before_anything_is_published(tmp_path, sample_dir):
    db, store = _hostile_source(tmp_path, sample_dir, n_bad_images=60)
    cfg = load_config(write_config(tmp_path, sample_dir, source={"url": f"sqlite:///{db}", "images": str(store)},
                                   extract={"max_quarantine_share": 0.05}), environ={})
    with pytest.raises(QuarantineShareExceeded, match=r"above extract.max_quarantine_share=5.0%; top reasons: "
                                                      r"image file not found \(6\d\)"):
        run_extract(cfg, DS)
    wh = Warehouse.of(cfg)
    assert not wh.work(DS, "catalog").exists() and not wh.work(DS, "listings_snapshot").exists()
    assert wh.work(DS, "quarantine").exists()  # kept for the diagnosis
