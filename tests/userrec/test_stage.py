"""The userrec stage on the small sample marketplace: one recommendation list per active user,
nothing bought or off sale, every variant scored, published atomically next to the nightly tables."""
import dataclasses

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lookalike.config import load_config
from lookalike.evaluate.stage import run_evaluate
from lookalike.events import read_events
from lookalike.extract.stage import run_extract
from lookalike.publish.stage import PublishCheckFailed, publish_user_recs
from lookalike.query import run_query
from lookalike.storage import Warehouse
from lookalike.train.stage import run_train
from lookalike.userrec.stage import UserRecError, run_userrec
from tests.conftest import DS, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("userrec")
    config = write_config(root, sample_dir, userrec={"epochs": 2, "bootstrap": 200, "k": 5})
    cfg = load_config(config, environ={})
    run_extract(cfg, DS)
    run_evaluate(cfg, DS, run_train(cfg, DS)["model_uri"])
    return cfg


def test_every_active_user_gets_on_sale_items_they_did_not_buy(trained):
    cfg = trained
    result = run_userrec(cfg, DS)
    assert result["reused"] is False
    again = run_userrec(cfg, DS)  # same inputs: the outputs are reused, not retrained
    assert again["reused"] is True and again["model_version"] == result["model_version"]
    assert again["user_recommendations"] == result["user_recommendations"]
    wh = Warehouse.of(cfg)
    events = read_events(wh, DS, cfg.userrec.log_days)
    active = set(events.column("user_id").to_pylist())
    recs = pq.read_table(result["user_recommendations"], partitioning=None)
    assert set(recs.column("user_id").to_pylist()) == active and result["users"] == len(active)
    catalog = pq.read_table(wh.work(DS, "catalog"), columns=["item_id", "status"], partitioning=None)
    on_sale = set(catalog.filter(pc.equal(catalog.column("status"), "on_sale")).column("item_id").to_pylist())
    assert set(recs.column("item_id").to_pylist()) <= on_sale
    bought = {(u, i) for u, e, i in zip(*(events.column(c).to_pylist() for c in ("user_id", "event", "item_id")))
              if e == "purchase"}
    assert bought and not bought & set(zip(recs.column("user_id").to_pylist(), recs.column("item_id").to_pylist()))
    per_user = recs.group_by("user_id").aggregate([("rank", "max"), ("rank", "count")]).to_pydict()
    assert max(per_user["rank_count"]) == cfg.userrec.k and per_user["rank_max"] == per_user["rank_count"]

    metrics = pq.read_table(result["userrec_metrics"], partitioning=None).to_pylist()
    systems = {row["system"] for row in metrics}
    assert systems == {f"userrec_{v}" for v in ("multimodal", "text", "image", "id", "popularity")}
    for row in metrics:
        assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["n"] == result["evaluated"]

    published = publish_user_recs(cfg, DS)
    assert published["rows"]["user_recommendations"] == recs.num_rows
    assert _query(wh, "select count(distinct user_id) from user_recommendations") == [(len(active),)]
    newest = _query(wh, "select user_id from user_history where step = 1")
    assert 0 < len(newest) <= len(active) and {u for (u,) in newest} <= active
    systems = {s for (s,) in _query(wh, "select distinct system from eval_metrics")}
    assert {"userrec_multimodal", "userrec_text", "userrec_popularity"} <= systems


def _query(wh, sql):
    return [tuple(row) for row in run_query(wh, sql)[1]]


def test_a_broken_recommendation_table_is_refused_and_a_thin_log_is_a_clear_error(trained, tmp_path):
    cfg = trained
    wh = Warehouse.of(cfg)
    before = wh.entries("user_recommendations")
    recs_dir = wh.work(DS, "user_recommendations")
    table = pq.read_table(recs_dir, partitioning=None)
    pq.write_table(pc.take(table, pc.indices_nonzero(pc.equal(table.column("rank"), 1))).set_column(
        2, "rank", pc.add(pc.take(table, pc.indices_nonzero(pc.equal(table.column("rank"), 1))).column("rank"), 1)),
        recs_dir / "part-0.parquet")
    with pytest.raises(PublishCheckFailed, match="ranks 1..n"):
        publish_user_recs(cfg, DS)
    assert wh.entries("user_recommendations") == before

    other_k = dataclasses.replace(cfg, userrec=dataclasses.replace(cfg.userrec, k=4))
    assert run_userrec(other_k, DS)["reused"] is False  # another config: computed again
    thin = dataclasses.replace(cfg, userrec=dataclasses.replace(cfg.userrec, log_days=0))  # an empty window
    with pytest.raises(UserRecError, match="too few to train"):
        run_userrec(thin, DS)
