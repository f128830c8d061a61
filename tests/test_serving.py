"""What the nightly run serves: the production model, else the image baseline; never a candidate
that lost. Real stages on the sample marketplace, from extract to the published tables."""
import json
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike import registry, serving
from lookalike.config import load_config
from lookalike.embed.stage import run_embed
from lookalike import features
from lookalike.features import baseline_vectors, fit_baseline, image_features
from lookalike.evaluate.stage import run_evaluate
from lookalike.extract.stage import run_extract
from lookalike.neighbors.stage import run_neighbors
from lookalike.publish.stage import run_publish
from lookalike.query import run_query
from lookalike.storage import ModelStore, Warehouse
from lookalike.tools.summary import run_summary
from lookalike.train.stage import run_train
from tests.conftest import DS, tiny_model, write_config

NEXT = "2026-11-22"


def _night(cfg, ds: str) -> dict:
    embedded = run_embed(cfg, ds)
    run_neighbors(cfg, ds)
    run_publish(cfg, ds)
    return embedded


def _clicks_follow(cfg, ds: str, model_path: str) -> None:
    """Rewrite the ds's module clicks so that users click the two shown items ``model_path`` ranks
    first: a log on which that model wins the offline evaluation by construction."""
    wh = Warehouse.of(cfg)
    photos = {}
    for name in ("listings_snapshot", "catalog"):
        table = pq.read_table(wh.work(ds, name), columns=["item_id", "image"], partitioning=None)
        photos.update(zip(table.column("item_id").to_pylist(), table.column("image").to_pylist()))
    embedder = serving.load_embedder(model_path)
    vectors = dict(zip(photos, embedder.embed([embedder.decode(d) for d in photos.values()], 64)))
    folder = wh.work(ds, "interactions")
    events = pq.read_table(folder, partitioning=None)
    shown = events.filter(pc.and_(pc.equal(events.column("event"), "impression"),
                                  pc.is_valid(events.column("source_item_id")))).to_pylist()
    by_source: dict = {}
    for e in shown:
        by_source.setdefault(e["source_item_id"], []).append(e)
    clicks = []
    for source, rows in by_source.items():
        ranked = sorted((r for r in rows if r["item_id"] in vectors and r["item_id"] != source),
                        key=lambda r: -float(vectors[source] @ vectors[r["item_id"]]) if source in vectors else 0)
        clicks += [{**r, "event": "click"} for r in ranked[:2]]
    others = events.filter(pc.invert(pc.equal(events.column("event"), "click")))
    for old in folder.glob("*.parquet"):
        old.unlink()
    pq.write_table(pa.concat_tables([others, pa.Table.from_pylist(clicks, schema=events.schema)]),
                   folder / "part-0.parquet")


def test_a_losing_candidate_is_never_served_the_baseline_is_then_a_winner_replaces_it(tmp_path, sample_dir):
    cfg = load_config(write_config(tmp_path, sample_dir))
    wh, store = Warehouse.of(cfg), ModelStore.at(cfg.models)
    run_extract(cfg, DS)

    # A candidate with random weights loses the offline evaluation: it stays a candidate.
    loser = "20261121-random"
    registry.register(store, loser, {"snapshot": {"ds": DS}})
    decision = run_evaluate(cfg, DS, tiny_model(store.version_dir(loser), seed=3, version=loser))
    assert not decision["promoted"] and "kept as candidate, not served" in decision["decision"]

    # The first night publishes the image baseline's neighbours and says why, everywhere.
    first = _night(cfg, DS)
    baseline = registry.baseline(store)
    assert first["model_version"] == baseline and baseline.startswith("image-baseline-")
    assert first["served"]["system"] == "image_baseline"
    assert run_query(wh, "select distinct model_version from item_neighbors")[1] == [(baseline,)]
    assert run_query(wh, "select distinct model_version from item_embeddings")[1] == [(baseline,)]
    why = wh.run_record(DS)["served"]["why"]
    assert "no model has beaten it" in why and loser in why and "not promoted" in why
    assert f"Serving {baseline}: the image baseline" in run_summary(cfg, DS)

    # The baseline is incremental like a model: the next night reuses its published vectors.
    run_extract(cfg, NEXT)
    again = run_embed(cfg, NEXT)
    assert again["model_version"] == baseline and again["computed"] == 0 and again["reused"] == again["catalogue"]

    # A trained model that beats the baselines is promoted and served the same night; the switch is
    # held to the row and coverage bounds only, and says so.
    winner = run_train(cfg, NEXT)["model_version"]
    _clicks_follow(cfg, NEXT, str(store.version_dir(winner)))
    decision = run_evaluate(cfg, NEXT, str(store.version_dir(winner)))
    assert decision["promoted"], decision
    second = _night(cfg, NEXT)
    assert second["model_version"] == winner and second["served"]["system"] == "siglip"
    assert run_query(wh, "select distinct model_version from item_neighbors")[1] == [(winner,)]
    gate = wh.run_record(NEXT)["drift"]
    assert gate["decision"] == "published" and gate["switch"].startswith(f"the served system changed from {baseline}")
    assert f"Serving {winner}: the production model" in run_summary(cfg, NEXT)


def test_the_served_baseline_is_the_evaluated_one_and_a_hybrid_blends_the_cosines(tmp_path, sample_dir):
    cfg = load_config(write_config(tmp_path, sample_dir))
    run_extract(cfg, DS)
    version, folder = serving.ensure_baseline(cfg, DS)
    assert serving.ensure_baseline(cfg, DS) == (version, folder)  # fitted once
    images = pq.read_table(Warehouse.of(cfg).work(DS, "catalog"), columns=["image"]).column("image").to_pylist()[:50]
    embedder = serving.load_embedder(str(folder))
    vectors = embedder.embed([embedder.decode(d) for d in images], 16)
    pixels = np.stack([embedder.decode(d) for d in images])
    assert np.allclose(vectors, baseline_vectors(serving.load_projection(folder / "projection.npz"), pixels))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    # The fitted map is a plain PCA of the weighted features: orthonormal components, no feature scaled
    # up (a rare histogram bin stays as small as it is), the baseline's decoding keeping the aspect ratio.
    projection = fit_baseline(pixels, 8)
    assert np.allclose(projection.components @ projection.components.T, np.eye(8), atol=1e-4)
    assert np.allclose(projection.mean, image_features(pixels).mean(axis=0), atol=1e-5)
    assert embedder.preprocess.pad and json.loads((folder / "lookalike.json").read_text())["features"] \
        == features.FEATURES

    rng = np.random.default_rng(0)
    a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (rng.normal(size=(6, 5)), rng.normal(size=(6, 3))))
    mixed = serving.combine(a, b, 0.7)
    assert np.allclose(mixed @ mixed.T, 0.7 * (a @ a.T) + 0.3 * (b @ b.T), atol=1e-6)


def test_a_model_promoted_as_a_hybrid_is_served_as_its_blend(tmp_path, sample_dir):
    cfg = load_config(write_config(tmp_path, sample_dir))
    store = ModelStore.at(cfg.models)
    run_extract(cfg, DS)
    model = "20261121-tiny"
    path = tiny_model(store.version_dir(model), seed=1, version=model)
    registry.register(store, model, {"snapshot": {"ds": DS}})
    registry.record_metrics(store, model, {"ndcg@5": 0.5, "serve_weight": 0.5})  # as evaluate records a blend
    registry.promote(store, model, reason="the model blended with the image baseline at weight 0.5: nDCG@5 …")

    embedded = run_embed(cfg, DS)
    baseline = registry.baseline(store)
    assert embedded["served"]["system"] == "hybrid"
    assert embedded["model_version"] == serving.hybrid_version(model, baseline, 0.5)
    assert "blended with the image baseline at weight 0.5" in embedded["served"]["why"]
    table = pq.read_table(embedded["item_embeddings"], partitioning=None).sort_by("item_id").slice(0, 20)
    photos = pq.read_table(Warehouse.of(cfg).work(DS, "catalog"), columns=["item_id", "image"]).sort_by("item_id")
    images = photos.column("image").to_pylist()[:20]
    assert table.column("item_id").to_pylist() == photos.column("item_id").to_pylist()[:20]
    model_part = serving.load_embedder(path)
    baseline_part = serving.load_embedder(str(store.baseline_dir(baseline)))
    expected = serving.combine(model_part.embed([model_part.decode(d) for d in images], 8),
                               baseline_part.embed([baseline_part.decode(d) for d in images], 8), 0.5)
    assert np.allclose(np.asarray(table.column("embedding").to_pylist()), expected, atol=1e-5)
