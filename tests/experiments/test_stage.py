"""The experiments stage on the sample: every arm's neighbours published with the night and checked
like item_neighbors; simulate-ab logs a test into the source; ab-report reads it back."""
import shutil
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lookalike import registry, schemas
from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike.assignment import bucket
from lookalike.experiments.readout import ab_report, simulate_ab
from lookalike.experiments.stage import run_experiments
from lookalike.extract.stage import run_extract
from lookalike.neighbors.stage import run_neighbors
from lookalike.publish.stage import PublishCheckFailed, run_publish
from lookalike.storage import ModelStore, Warehouse, write_parquet
from lookalike.publish.report import build_report
from tests.conftest import DS, tiny_model, write_config

ARMS = {"baseline": {"serve": "production", "share": 0.5}, "random": {"serve": "candidate", "share": 0.5}}


@pytest.fixture(scope="module")
def night(tmp_path_factory, sample_dir):
    """A night with experiment 'look' running: production (the image baseline, no model promoted)
    against the candidate, an untrained tiny SigLIP that ranks neighbours at random."""
    root = tmp_path_factory.mktemp("experiment")
    sample = root / "sample"
    shutil.copytree(sample_dir, sample)  # simulate-ab writes into the source
    cfg = load_config(write_config(root, sample, experiments={"look": {"variants": ARMS, "start": DS}}), environ={})
    store = ModelStore.at(cfg.models)
    registry.register(store, "random-v1", {"snapshot": {"ds": DS}})
    tiny_model(store.version_dir("random-v1"), seed=3, version="random-v1")
    run_extract(cfg, DS)
    run_embed(cfg, DS)
    run_neighbors(cfg, DS)
    result = run_experiments(cfg, DS)
    return cfg, result


def test_each_arm_gets_item_neighbors_contract_and_they_publish_with_the_night(night):
    cfg, result = night
    wh = Warehouse.of(cfg)
    assert result["experiments"] == ["look"] and len(result["systems"]) == 2
    published = run_publish(cfg, DS)
    assert {"item_neighbors_variants", "experiment_variants", "ab_results"} <= set(published["rows"])
    variants = wh.read_partition("item_neighbors_variants", DS)
    assert variants.schema.equals(schemas.ITEM_NEIGHBORS_VARIANTS, check_metadata=False)
    production = wh.read_partition("item_neighbors", DS).sort_by([("item_id", "ascending"), ("rank", "ascending")])
    mine = variants.filter(pa.compute.equal(variants.column("variant"), "baseline")).drop(["experiment", "variant"])
    assert mine.sort_by([("item_id", "ascending"), ("rank", "ascending")]).equals(production)  # production as served
    arms = {r["variant"]: r for r in wh.read_partition("experiment_variants", DS).to_pylist()}
    assert arms["random"]["model_version"] == "random-v1" and arms["baseline"]["is_control"]
    assert (arms["baseline"]["bucket_low"], arms["baseline"]["bucket_high"], arms["random"]["bucket_high"]) == \
        (0, 5000, 10000)


def test_one_broken_arm_refuses_the_whole_night(night, tmp_path):
    cfg, _ = night
    wh = Warehouse.of(cfg)
    before = wh.entries("item_neighbors").get(DS, {}).get("run_id")
    folder = wh.work(DS, "item_neighbors_variants")
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    try:
        table = pq.read_table(folder)
        rows = table.to_pylist()
        for row in rows:  # the random arm lists a neighbour twice for one item: its ranks break
            if row["variant"] == "random" and row["rank"] == 2:
                row["rank"] = 1
                break
        shutil.rmtree(folder)
        write_parquet(pa.Table.from_pylist(rows, schema=schemas.ITEM_NEIGHBORS_VARIANTS), folder / "part-0.parquet")
        with pytest.raises(PublishCheckFailed, match=r"item_neighbors_variants look/random: 1 items do not have"):
            run_publish(cfg, DS)
        assert wh.entries("item_neighbors").get(DS, {}).get("run_id") == before  # nothing published
    finally:
        shutil.rmtree(folder)
        shutil.copytree(saved, folder)


def test_simulated_logs_go_into_the_source_and_ab_report_reads_them(night):
    cfg, _ = night
    wh = Warehouse.of(cfg)
    if DS not in wh.entries("experiment_variants"):
        run_publish(cfg, DS)
    result = simulate_ab(cfg, "look", days=21, seed=0)
    assert result["impression"] > 1000 and result["click"] > 0
    db = cfg.source.url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as con:
        logged = con.execute("select user_id, variant from interactions where experiment = 'look'").fetchall()
        outside = con.execute("select count(*) from interactions where experiment is null").fetchone()[0]
    assert outside > 0  # the sample's own log stays, NULL outside experiments
    assert all(v == ("baseline" if bucket("look", u) < 5000 else "random") for u, v in logged)  # the published split
    exp, rows = ab_report(cfg, "look")
    ctr = next(r for r in rows if r["metric"] == "ctr" and r["variant"] == "random")
    assert ctr["lift_high"] < 0  # random neighbours lose clicks, and the interval says so
    assert {r["metric"] for r in rows} == {"ctr", "conversion", "revenue_per_user"}
    again = simulate_ab(cfg, "look", days=21, seed=0)  # replaces its own days, never duplicates
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from interactions where experiment = 'look'").fetchone()[0] == \
            again["events"] == result["events"]


def test_the_next_night_publishes_what_ab_report_reads(night):
    """After the simulated weeks, the nightly run's ab_results (from its extracted log window) are
    the rows `lookalike ab-report --ds` computes from the source."""
    cfg, _ = night
    wh = Warehouse.of(cfg)
    if DS not in wh.entries("experiment_variants"):
        run_publish(cfg, DS)
        simulate_ab(cfg, "look", days=21, seed=0)
    later = "2026-12-12"  # the 21 simulated days are in its log window
    run_extract(cfg, later)
    run_embed(cfg, later)
    run_neighbors(cfg, later)
    run_experiments(cfg, later)
    run_publish(cfg, later)
    nightly = {(r["variant"], r["metric"]): r for r in wh.read_partition("ab_results", later).to_pylist()}
    _, rows = ab_report(cfg, "look", later)
    for row in rows:
        if row["metric"] != "revenue_per_user":  # prices: the night's catalogue vs the newest published one
            mine = nightly[(row["variant"], row["metric"])]
            assert {k: mine[k] for k in ("users", "impressions", "value", "lift", "lift_low", "lift_high")} == \
                {k: row[k] for k in ("users", "impressions", "value", "lift", "lift_low", "lift_high")}
    assert nightly[("random", "ctr")]["first_day"] == DS and nightly[("random", "ctr")]["last_day"] < later
    page = build_report(cfg, later).read_text()  # the A/B section: the table and the lift by ds
    assert "<h3>look</h3>" in page and "lift vs control" in page and "CTR lift vs control by ds" in page


def test_the_night_handed_off_serves_every_arm_and_simulate_ab_reads_the_store(night, postgres_url, redis_url):
    """The real night in both online stores: every item's production list and every arm's list equal the
    published rows; simulate-ab, with a store configured, reads the arms from it and plays the same site."""
    from dataclasses import replace

    from lookalike.config import PostgresSinkConfig, RedisSinkConfig, ServingConfig
    from lookalike.online.handoff import run_handoff, similar

    cfg, _ = night
    wh = Warehouse.of(cfg)
    if DS not in wh.entries("experiment_variants"):
        run_publish(cfg, DS)
    served = replace(cfg, serving=ServingConfig(sinks="postgres,redis",
                                                postgres=PostgresSinkConfig(url=postgres_url, schema="night"),
                                                redis=RedisSinkConfig(url=redis_url, prefix="night")))
    result = run_handoff(served, DS)
    assert {sink: r["ds"] for sink, r in result["sinks"].items()} == {"postgres": DS, "redis": DS}
    variants = wh.read_partition("item_neighbors_variants", DS).sort_by([("item_id", "ascending"), ("rank", "ascending")])
    lists = {}
    for row in variants.to_pylist():
        lists.setdefault((row["variant"], row["item_id"]), []).append(row["neighbor_id"])
    users = {variant: next(f"u{i}" for i in range(1000) if (bucket("look", f"u{i}") < 5000) == (variant == "baseline"))
             for variant in ("baseline", "random")}
    for sink in ("postgres", "redis"):
        for (variant, item), ids in lists.items():
            found = similar(served, item, experiment="look", user=users[variant], sink=sink)
            assert (found["variant"], [n["neighbor_id"] for n in found["neighbors"]]) == (variant, ids)
    from_warehouse = simulate_ab(cfg, "look", days=7, seed=3, calibrate=2, progress=lambda *_: None)
    from_store = simulate_ab(served, "look", days=7, seed=3, calibrate=2, progress=lambda *_: None)
    assert from_store == from_warehouse
