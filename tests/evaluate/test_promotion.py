"""The promotion decision on the sample: paired against production on the same queries, so a
candidate within noise of production is not promoted; a log that cannot discriminate is not scored."""
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lookalike import registry, serving
from lookalike.config import load_config
from lookalike.evaluate.stage import run_evaluate
from lookalike.extract.stage import run_extract
from lookalike.storage import ModelStore, Warehouse
from tests.conftest import DS, tiny_model, write_config
from tests.test_serving import _clicks_follow


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("promotion")
    cfg = load_config(write_config(root, sample_dir), environ={})
    run_extract(cfg, DS)
    return cfg


def test_a_candidate_within_noise_of_production_is_not_promoted(extracted):
    cfg = extracted
    wh, store = Warehouse.of(cfg), ModelStore.at(cfg.models)
    registry.register(store, "first", {"snapshot": {"ds": DS}})
    first = tiny_model(store.version_dir("first"), seed=3, version="first")
    _clicks_follow(cfg, DS, first)  # a log this model wins by construction
    decided = run_evaluate(cfg, DS, first)
    assert decided["promoted"] and decided["vs_production"] is None  # nothing in production to pair with
    assert registry.production(store) == "first"

    # The same weights under a new version: they beat the baselines exactly as much, and production not at all.
    registry.register(store, "again", {"snapshot": {"ds": DS}})
    again = run_evaluate(cfg, DS, tiny_model(store.version_dir("again"), seed=3, version="again"))
    paired = again["vs_production"]
    assert not again["promoted"] and registry.production(store) == "first"
    assert paired["gain_low"] == paired["gain_high"] == 0.0 and paired["queries"] == again["queries"]
    assert "within noise of production" in again["decision"] and "not above the baselines" not in again["decision"]
    rows = pq.read_table(wh.work(DS, "eval_metrics"), partitioning=None).to_pylist()
    production = {(r["metric"], r["k"]): r["value"] for r in rows if r["system"] == "production" and not r["segment"]}
    siglip = {(r["metric"], r["k"]): r["value"] for r in rows if r["system"] == "siglip" and not r["segment"]}
    assert production == siglip  # the same model, scored on the same queries
    assert {("ndcg", 10), ("coverage", cfg.neighbors.k)} <= set(siglip)
    assert 0 < siglip[("coverage", cfg.neighbors.k)] <= 1
    segments = {r["segment"] for r in rows if r["segment"]}
    assert segments and all(s.startswith("category=") for s in segments)


def test_a_log_that_cannot_discriminate_is_reported_not_scored(extracted, tmp_path):
    cfg = extracted
    wh, store = Warehouse.of(cfg), ModelStore.at(cfg.models)
    folder = wh.work(DS, "interactions")
    events = pq.read_table(folder, partitioning=None)
    module = pc.is_valid(events.column("source_item_id"))
    shown = events.filter(pc.and_(module, pc.equal(events.column("event"), "impression")))
    clicked = shown.set_column(shown.schema.get_field_index("event"), "event",
                               pa.array(["click"] * shown.num_rows, pa.string()))
    rest = events.filter(pc.invert(pc.and_(module, pc.equal(events.column("event"), "click"))))
    for old in folder.glob("*.parquet"):
        old.unlink()
    pq.write_table(pa.concat_tables([rest, clicked]), folder / "part-0.parquet")  # every item shown was clicked

    registry.register(store, "third", {"snapshot": {"ds": DS}})
    decided = run_evaluate(cfg, DS, tiny_model(store.version_dir("third"), seed=5, version="third"))
    assert decided["protocol"] == "category"  # scored on held-out listings instead of a meaningless 1.000
    assert any("cannot discriminate" in note and "not scored" in note for note in decided["notes"])


def test_a_model_trained_from_scratch_says_so_and_how_to_start_from_pretrained_weights(tmp_path):
    import json

    from lookalike.evaluate.stage import from_scratch

    (tmp_path / "lookalike.json").write_text(json.dumps({"architecture": "small"}))
    note = from_scratch(tmp_path)
    assert "trained from scratch (model.init: small)" in note and "google/siglip-base-patch16-256" in note
    (tmp_path / "lookalike.json").write_text(json.dumps({"architecture": "checkpoint:google/siglip-base"}))
    assert from_scratch(tmp_path) is None


@pytest.mark.parametrize("hybrid_colour,served", [(0.44, "image_baseline"), (0.47, "hybrid")])
def test_a_system_that_loses_a_facet_beyond_the_bound_is_not_served(tmp_path, sample_dir, hybrid_colour, served):
    """The model alone has the best shopper's score thanks to category, but trails the image baseline's
    colour@5 by far more than evaluate.max_facet_loss (0.05): the blend is served when it keeps colour
    within the bound, and with the blend losing colour too the baseline stays."""
    import numpy as np

    from lookalike.evaluate.stage import _promotion

    cfg = load_config(write_config(tmp_path, sample_dir), environ={})
    store = ModelStore.at(cfg.models)
    registry.register(store, "candidate", {"snapshot": {"ds": DS}})
    tiny_model(store.version_dir("candidate"), seed=1, version="candidate")
    rng = np.random.default_rng(0)
    per_query = {"siglip": 0.80 + 0.05 * rng.standard_normal(300), "hybrid": 0.70 + 0.05 * rng.standard_normal(300),
                 "image_baseline": 0.50 + 0.05 * rng.standard_normal(300)}
    facets = {"siglip": {"category": 0.90, "colour": 0.30}, "hybrid": {"category": 0.80, "colour": hybrid_colour},
              "image_baseline": {"category": 0.60, "colour": 0.50}}
    decided = _promotion(cfg, "candidate", per_query, {"siglip": (1.0, 0.0), "hybrid": (0.5, 0.0)}, "category",
                         facets)
    assert "siglip loses colour@5 by 0.200" in decided["decision"]
    assert decided["served_system"] == served
    assert {row["system"]: row["servable"] for row in decided["chosen_from"]} == {
        "siglip": False, "hybrid": served == "hybrid", "image_baseline": True}
    if served == "image_baseline":
        assert not decided["promoted"] and registry.production(store) is None
        assert "hybrid loses colour@5 by 0.060" in decided["decision"]
    else:
        assert decided["promoted"] and decided["serve_weight"] == 0.5 and registry.production(store) == "candidate"
        assert "served as the model with the image baseline at weight 0.5" in decided["decision"]
    assert decided["measure"] == "shopper's score"


def test_the_best_servable_system_is_served_and_never_one_that_another_beats(tmp_path, sample_dir):
    """The night's lesson: the blend beat the image baseline beyond noise while the model alone did
    not, and the baseline was served. Now the blend is served; a title-aware form of the model that
    wins on variants is served over both; and a production model the image baseline beats beyond
    noise is retired (rollback restores it)."""
    import numpy as np

    from lookalike.evaluate.stage import _promotion

    cfg = load_config(write_config(tmp_path, sample_dir), environ={})
    store = ModelStore.at(cfg.models)
    rng = np.random.default_rng(1)
    noise = lambda: 0.05 * rng.standard_normal(400)  # noqa: E731
    facets = {s: {"category": 0.6, "colour": 0.5, "product_group": 0.2} for s in
              ("siglip", "hybrid", "multimodal", "image_baseline", "production")}
    forms = {"siglip": (1.0, 0.0), "hybrid": (0.5, 0.0), "multimodal": (1.0, 0.5)}

    registry.register(store, "blend-wins", {"snapshot": {"ds": DS}})
    tiny_model(store.version_dir("blend-wins"), seed=1, version="blend-wins")
    base = 0.40 + noise()
    blend = {"siglip": base + 0.002 + noise() * 0.5, "hybrid": base + 0.04 + noise() * 0.2, "image_baseline": base}
    decided = _promotion(cfg, "blend-wins", blend, {s: forms[s] for s in ("siglip", "hybrid")}, "category", facets)
    assert decided["served_system"] == "hybrid" and decided["promoted"]
    assert registry.production(store) == "blend-wins"
    assert registry.version_info(store, "blend-wins")["eval"]["serve_weight"] == 0.5
    assert [row["system"] for row in decided["chosen_from"]][0] == "hybrid"
    from lookalike.systems import chosen_rows

    assert [row[0] for row in chosen_rows(decided) if row[-1] == "SERVED"] == ["hybrid"]

    registry.register(store, "titles-win", {"snapshot": {"ds": DS}})
    tiny_model(store.version_dir("titles-win"), seed=2, version="titles-win")
    titles = {"production": blend["hybrid"], "image_baseline": base, "siglip": blend["siglip"],
              "hybrid": blend["hybrid"] + noise() * 0.1, "multimodal": blend["hybrid"] + 0.05 + noise() * 0.2}
    decided = _promotion(cfg, "titles-win", titles, forms, "category", facets)
    assert decided["served_system"] == "multimodal" and registry.production(store) == "titles-win"
    info = registry.version_info(store, "titles-win")["eval"]
    assert (info["serve_weight"], info["text_weight"]) == (1.0, 0.5)
    assert "its title at weight 0.5" in decided["decision"]
    served = serving.resolve(cfg, DS)
    assert served.system == "hybrid" and served.version == "multimodal-titles-win-t50"
    assert serving.text_weight_of(served.path) == 0.5

    registry.register(store, "worse", {"snapshot": {"ds": DS}})
    tiny_model(store.version_dir("worse"), seed=3, version="worse")
    worse = {"production": base - 0.05 + noise() * 0.2, "image_baseline": base, "siglip": base - 0.1,
             "hybrid": base - 0.06, "multimodal": base - 0.07}
    decided = _promotion(cfg, "worse", worse, forms, "category", facets)
    assert decided["served_system"] == "image_baseline" and decided["retired_production"]
    assert registry.production(store) is None  # the night serves the image baseline (serving.resolve)
    assert "beats the production model titles-win beyond noise" in registry.history(store)[-1]["reason"]
    assert registry.rollback(store) == "titles-win"


def test_a_config_with_the_replaced_colour_bound_names_its_successor(tmp_path, sample_dir):
    from lookalike.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluate.max_colour_loss is now evaluate.max_facet_loss"):
        load_config(write_config(tmp_path, sample_dir, evaluate={"max_colour_loss": 0.02}), environ={})


def test_a_source_with_colour_and_product_group_is_scored_on_them_and_one_without_says_so(tmp_path, sample_dir):
    """The optional listing columns flow from the source to the snapshot and the catalogue, and the
    evaluation without clicks scores them as facets: eval_metrics rows by facet, the shopper's score,
    the decision's facets. A source without them is scored by category alone, and says so."""
    import shutil
    import sqlite3

    sample = tmp_path / "sample"
    shutil.copytree(sample_dir, sample)
    colours = ("red", "blue", "black", "white", "green", "navy", "grey", "pink", "beige", "brown")
    with sqlite3.connect(sample / "marketplace.db") as con:
        con.execute("update interactions set source_item_id = null")  # no module clicks yet: a first install
        con.execute("alter table listings add column colour text")
        con.execute("alter table listings add column product_group text")
        for item, title, category in con.execute("select item_id, title, category from listings").fetchall():
            colour = next((c for c in colours if c in (title or "").lower().split()), None)
            con.execute("update listings set colour = ?, product_group = ? where item_id = ?",
                        (colour, f"{category}-{int(item[-2:], 16) % 40 if item[-2:].isalnum() else 0}", item))
    cfg = load_config(write_config(tmp_path, sample), environ={})
    run_extract(cfg, DS)
    catalog = pq.read_table(Warehouse.of(cfg).work(DS, "catalog"), columns=["colour", "product_group"])
    assert catalog.column("colour").null_count < catalog.num_rows and catalog.column("product_group").null_count == 0
    store = ModelStore.at(cfg.models)
    registry.register(store, "candidate", {"snapshot": {"ds": DS}})
    decided = run_evaluate(cfg, DS, tiny_model(store.version_dir("candidate"), seed=2, version="candidate"))
    assert decided["protocol"] == "category" and decided["measure"] == "shopper's score"
    assert {"category", "colour", "product_group"} <= set(decided["facets@5"]["image_baseline"])
    rows = pq.read_table(Warehouse.of(cfg).work(DS, "eval_metrics"), partitioning=None).to_pylist()
    assert {("precision", "facet=colour"), ("ndcg", "facet=product_group"), ("shopper", None)} <= \
        {(r["metric"], r["segment"]) for r in rows if r["system"] == "image_baseline"}
    assert not any("colour was not evaluated" in note for note in decided["notes"])

    with sqlite3.connect(sample / "marketplace.db") as con:
        con.execute("alter table listings drop column colour")
        con.execute("alter table listings drop column product_group")
    run_extract(cfg, DS)
    registry.register(store, "plain", {"snapshot": {"ds": DS}})
    plain = run_evaluate(cfg, DS, tiny_model(store.version_dir("plain"), seed=2, version="plain"))
    assert plain["measure"] == "nDCG@5" and set(plain["facets@5"]["siglip"]) == {"category"}
    assert any("colour was not evaluated" in note for note in plain["notes"])


def test_the_report_shows_each_facet_per_system():
    """The report's table of what a shopper sees comes from eval_metrics' facet rows (P@5), in DuckDB."""
    import duckdb

    from lookalike.publish.report import _facet_table

    con = duckdb.connect()
    con.execute("create table eval_metrics_all (ds varchar, system varchar, metric varchar, k integer, "
                "value double, n bigint, segment varchar)")
    con.executemany("insert into eval_metrics_all values (?, ?, ?, ?, ?, ?, ?)", [
        (DS, "siglip", "precision", 5, 0.61, 300, "facet=category"),
        (DS, "image_baseline", "precision", 5, 0.48, 300, "facet=colour"),
        (DS, "siglip", "ndcg", 5, 0.9, 300, "facet=colour"),  # not P@5: not in the table
        (DS, "siglip", "precision", 5, 0.2, 300, "category=tops")])  # a category segment: its own table
    table = _facet_table(con, DS)
    assert "type@5" in table and "colour@5" in table and "0.6100" in table and "0.4800" in table
    assert "0.9000" not in table and "0.2000" not in table and "variant@5" not in table
    assert _facet_table(con, "1999-01-01") == ""
