"""A night whose served vectors read each item's title (embed.text_weight > 0): embedded, published and
handed off to real PostgreSQL and Redis servers, then an hour in which listings are added and one is
retitled (same photo). The hour embeds the new and the retitled items with the night's photo + title
vectors, the stores serve its lists, and the next night, embedded afresh, gives the same vectors and,
rebuilt in full, the same lists."""
import json
import shutil
import sqlite3
import uuid

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike import registry
from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.extract.stage import run_extract
from lookalike.intraday.stage import handoff_hour, publish_hour, run_hour
from lookalike.neighbors.stage import run_neighbors
from lookalike.online.handoff import run_handoff
from lookalike.publish.stage import run_publish
from lookalike.storage import ModelStore, Warehouse
from tests.conftest import DS, tiny_model, write_config
from tests.intraday.conftest import (HOUR, K, MORNING, NEXT, change_the_source, live_lists, rebuilt_lists,
                                     store_lists)


def test_a_night_that_reads_titles_hands_off_and_its_hours_embed_the_same_vectors(tmp_path, sample_dir,
                                                                                 postgres_url, redis_url):
    sample = tmp_path / "sample"
    shutil.copytree(sample_dir, sample)
    name = "t" + uuid.uuid4().hex[:10]
    cfg = load_config(write_config(tmp_path, sample, embed={"text_weight": 0.5},
                                   neighbors={"k": K, "exclude_same_seller": True, "margin": 4},
                                   serving={"sinks": "postgres,redis", "postgres": {"url": postgres_url, "schema": name},
                                            "redis": {"url": redis_url, "prefix": name}}), environ={})
    store = ModelStore.at(cfg.models)
    registry.register(store, "reader", {"snapshot": {"ds": DS}})
    tiny_model(store.version_dir("reader"), seed=4, version="reader")
    registry.promote(store, "reader")
    for stage in (run_extract, run_embed, run_neighbors, run_publish, run_handoff):
        stage(cfg, DS)
    wh = Warehouse.of(cfg)
    stats = json.loads(wh.work(DS, "embed_stats.json").read_text())
    assert stats["model_version"] == "multimodal-reader-t50" and stats["text_template"] == "{title}"
    night = pq.read_table(wh.work(DS, "item_embeddings"))
    assert night.column("text_sha256").null_count < night.num_rows // 10  # a listing without a title: its photo

    changed = change_the_source(sample / "marketplace.db", MORNING)
    with sqlite3.connect(sample / "marketplace.db") as con:
        retitled = con.execute("select item_id from listings where status = 'on_sale' and item_id not like 'new%' "
                               "order by item_id desc limit 1").fetchone()[0]
        con.execute("update listings set title = 'blue vase red tee', updated_at = ? where item_id = ?",
                    (MORNING, retitled))
    hour = run_hour(cfg, HOUR)
    assert hour["embedded"] >= len(changed["new"]) and hour["photos_decoded"] >= 1
    hour_vectors = pq.read_table(f"{hour['folder']}/changes.parquet", columns=["item_id", "embedding"])
    hour_vectors = dict(zip(hour_vectors.column("item_id").to_pylist(), hour_vectors.column("embedding").to_pylist()))
    before = night.filter(pc.equal(night.column("item_id"), retitled)).column("embedding")[0].as_py()
    assert not np.allclose(hour_vectors[retitled], before, atol=1e-4)  # the new title, not the night's vector
    publish_hour(cfg, HOUR)
    handoff_hour(cfg, HOUR)
    live = live_lists(cfg)
    assert all(len(live[item]) == K for item in changed["new"])
    for sink in ("postgres", "redis"):
        assert store_lists(cfg, sink, sorted(live)) == live, sink

    run_extract(cfg, NEXT)
    embedded = run_embed(cfg, NEXT)
    assert embedded["reused"] > 0 and embedded["computed"] >= len(changed["new"]) + 1  # the retitled item too
    following = pq.read_table(wh.work(NEXT, "item_embeddings"), columns=["item_id", "embedding"])
    following = dict(zip(following.column("item_id").to_pylist(), following.column("embedding").to_pylist()))
    for item in [*changed["new"], retitled]:
        if item in hour_vectors and hour_vectors[item] is not None:
            assert np.allclose(hour_vectors[item], following[item], atol=1e-5), item  # the same vectors
    run_neighbors(cfg, NEXT, full=True)
    assert live == rebuilt_lists(wh, NEXT)
