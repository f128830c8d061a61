"""The evaluate stage: the Similar Looks offline protocol on the held-out interaction logs.

For every source item whose similar-items module got clicks in [ds - evaluate.log_days, ds),
rank the items shown there by each system's similarity to the source and score the ranking
against the clicks (nDCG@5 and @10, P@1, P@3, Recall@10, MRR), with bootstrap 95% intervals over
source items, nDCG@5 per category of the source item, and each system's catalogue coverage
(the share of the catalogue in some item's top-k). A source item whose shown items were all
clicked (or none) cannot tell rankings apart and is not scored; a log with no other is reported
as one that cannot discriminate. A catalogue with no such clicks yet (a first install, or a log
that cannot discriminate) is scored by category instead: each held-out listing ranks the other
held-out listings, its own category relevant.

Systems: the candidate SigLIP model, the current production system (when another version is in
production) on the same queries, the hand-made image baseline (as fitted for serving,
pipelines/serving.py), the TF-IDF text baseline and, with ``evaluate.hybrid_weights``, the model
blended with the image baseline at the weight that ranks best. The candidate is promoted to
production, alone or as that blend, when the paired-bootstrap 95% interval of its nDCG@5 gain
over the best baseline is above zero and, with a production system, that of its gain over
production on the same queries too (above −``evaluate.promote_tolerance``): numbers from
different days' logs are never compared. Until a model is promoted the night serves the image
baseline.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import registry, schemas, serving
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.embed.compression import load_projection
from pipelines.evaluate.baselines import baseline_vectors, text_baseline_vectors
from pipelines.extract.stage import read_events
from pipelines.evaluate.metrics import REPORTED, bootstrap_ci, coverage, discriminates, query_metrics
from pipelines.siglip import Preprocess, embed_pixels, load_model
from pipelines.storage import ModelStore, Warehouse, atomic_write_text, write_parquet

log = logging.getLogger(__name__)


@dataclass
class Query:
    source: int  # row index of the source item
    candidates: np.ndarray  # (C,) row indices of the items shown
    relevant: np.ndarray  # (C,) bool: clicked


def build_queries(events: dict[str, list], index: dict[str, int], min_candidates: int) -> list[Query]:
    """Group module impressions and clicks by source item; keep sources with a click."""
    shown: dict[str, set[str]] = {}
    clicked: dict[str, set[str]] = {}
    for event, item, source in zip(events["event"], events["item_id"], events["source_item_id"]):
        if source is None:
            continue
        if event == "impression":
            shown.setdefault(source, set()).add(item)
        elif event == "click":
            clicked.setdefault(source, set()).add(item)
            shown.setdefault(source, set()).add(item)
    queries = []
    for source in sorted(clicked):
        if source not in index:
            continue
        cands = sorted(c for c in shown[source] if c in index and c != source)
        rel = np.array([c in clicked[source] for c in cands])
        if len(cands) >= min_candidates and rel.any():
            queries.append(Query(index[source], np.array([index[c] for c in cands]), rel))
    return queries


def category_queries(items: dict[str, list], val_fraction: float, limit: int) -> list[Query]:
    """The protocol of a catalogue without module clicks yet: every held-out item (the training
    split's validation items, never trained on) is a query over the other held-out items, and
    those of its own category are the relevant ones. Up to ``limit`` items, chosen by id hash."""
    from pipelines.train.data import id_hash, is_validation

    pool = [i for i, (item, category) in enumerate(zip(items["item_id"], items["category"]))
            if category and is_validation(item, val_fraction)]
    pool = sorted(sorted(pool, key=lambda i: id_hash(items["item_id"][i]))[:limit])
    categories = np.array([items["category"][i] for i in pool], dtype=object)
    rows = np.array(pool)
    queries = []
    for j, row in enumerate(rows):
        others = np.delete(np.arange(len(rows)), j)
        relevant = categories[others] == categories[j]
        if relevant.any():
            queries.append(Query(int(row), rows[others], relevant))
    return queries


def score_system(similarity, queries: list[Query], ids: np.ndarray) -> dict[tuple, np.ndarray]:
    """Per-query metric values of one system; ``similarity(source, candidates)`` → (C,) scores."""
    per_query: dict[tuple, list[float]] = {key: [] for key in REPORTED}
    for q in queries:
        m = query_metrics(similarity(q.source, q.candidates), q.relevant, ids[q.candidates])
        for key, value in m.items():
            per_query[key].append(value)
    return {key: np.array(v) for key, v in per_query.items()}


def _items(wh: Warehouse, ds: str) -> dict[str, list]:
    """Snapshot ∪ catalogue rows (item_id, title, category, image), one per item."""
    seen, cols = set(), {"item_id": [], "title": [], "category": [], "image": []}
    for name in ("listings_snapshot", "catalog"):
        table = pq.read_table(wh.work(ds, name), columns=list(cols))
        for row in table.to_pylist():
            if row["item_id"] not in seen:
                seen.add(row["item_id"])
                for key in cols:
                    cols[key].append(row[key])
    return cols


def _scored_queries(queries: list[Query], protocol: str) -> tuple[list[Query], str | None]:
    """The queries that can tell rankings apart, and a note when some (or all) could not."""
    kept = [q for q in queries if discriminates(q.relevant)]
    if len(kept) == len(queries):
        return kept, None
    if not kept:
        return [], (f"the {protocol} log cannot discriminate: in all {len(queries)} queries every item shown was "
                    "relevant (or none was), so every system would score nDCG@5 = 1; it was not scored")
    return kept, f"{len(queries) - len(kept)} of {len(queries)} queries could not discriminate and were not scored"


def _production(cfg: Config, candidate: str, decode, image_vecs: np.ndarray, baseline_version: str):
    """(version, vectors) of the system in production when it is not ``candidate``, as served
    (a hybrid blended at its promoted weight); None when there is none."""
    store = ModelStore.at(cfg.models)
    current = registry.production(store)
    if not current or current == candidate:
        return None
    loaded = load_model(store.version_dir(current))
    vectors = embed_pixels(loaded.model, decode(loaded.preprocess), loaded.preprocess)
    weight = float(registry.version_info(store, current).get("eval", {}).get("serve_weight", 1.0))
    if weight < 1.0:
        return serving.hybrid_version(current, baseline_version, weight), serving.combine(vectors, image_vecs, weight)
    return current, vectors


def run_evaluate(cfg: Config, ds: str, model_uri: str) -> dict:
    wh = Warehouse.of(cfg)
    loaded = load_model(model_uri)
    items = _items(wh, ds)
    ids = np.array(items["item_id"], dtype=object)
    index = {item: i for i, item in enumerate(items["item_id"])}
    events = read_events(wh, ds, cfg.evaluate.log_days).to_pydict()
    queries, note = _scored_queries(build_queries(events, index, cfg.evaluate.min_candidates), "clicks")
    protocol, notes = "clicks", [note] if note else []
    if not queries:
        queries, note = _scored_queries(category_queries(items, cfg.train.val_fraction, cfg.evaluate.category_items),
                                        "category")
        protocol, notes = "category", notes + ([note] if note else [])
        log.info("evaluate %s: no similar-items clicks that discriminate in the %d days before; scoring %d held-out "
                 "items by shared category instead", ds, cfg.evaluate.log_days, len(queries))
    for note in notes:
        log.warning("evaluate %s: %s", ds, note)
    if not queries:
        raise LookalikeError(f"nothing to evaluate on for {ds}: no source item with module clicks that discriminate "
                             f"in the {cfg.evaluate.log_days} days before (interactions with source_item_id set), and "
                             f"no held-out listing shares a category with another")

    model_vecs = embed_pixels(loaded.model, loaded.preprocess.decode(items["image"]), loaded.preprocess)
    baseline_version, baseline_dir = serving.ensure_baseline(cfg, ds)
    image_vecs = baseline_vectors(load_projection(baseline_dir / "projection.npz"),
                                  Preprocess(serving.BASELINE_SIZE).decode(items["image"]))
    text_vecs = text_baseline_vectors(items["title"])
    vectors = {"siglip": model_vecs, "image_baseline": image_vecs}
    systems = {
        "siglip": (loaded.version, lambda s, c: model_vecs[c] @ model_vecs[s]),
        "image_baseline": (baseline_version, lambda s, c: image_vecs[c] @ image_vecs[s]),
        "text_baseline": (None, lambda s, c: np.asarray((text_vecs[c] @ text_vecs[s].T).todense()).ravel()),
    }
    production = _production(cfg, loaded.version, lambda pre: pre.decode(items["image"]), image_vecs, baseline_version)
    if production:
        prod_version, prod_vecs = production
        vectors["production"] = prod_vecs
        systems["production"] = (prod_version, lambda s, c: prod_vecs[c] @ prod_vecs[s])
    scored = {system: (version, score_system(sim, queries, ids)) for system, (version, sim) in systems.items()}
    weight = _hybrid_weight(cfg, queries, ids, model_vecs, image_vecs, baseline_version, loaded.version, scored)
    if weight is not None:
        vectors["hybrid"] = serving.combine(model_vecs, image_vecs, weight)
    rows = _metric_rows(cfg, ds, wh, items, queries, scored, vectors)
    summary = {system: per_query[("ndcg", 5)] for system, (_, per_query) in scored.items()}
    out = wh.fresh_work(ds, "eval_metrics")
    write_parquet(pa.Table.from_pylist(rows, schema=schemas.EVAL_METRICS), out / "part-0.parquet")
    log.info("evaluate %s: %d queries (%s); nDCG@5 %s", ds, len(queries), protocol,
             ", ".join(f"{s} {v.mean():.3f}" for s, v in summary.items()))

    scratch = from_scratch(loaded.path)
    if scratch:
        notes.append(scratch)
        log.warning("evaluate %s: %s", ds, scratch)
    decision = {"protocol": protocol, "notes": notes, "trained_from_scratch": bool(scratch),
                **_promotion(cfg, loaded.version, summary, weight, protocol, production is not None)}
    atomic_write_text(wh.work(ds, "model_decision.json"), json.dumps(decision, indent=2))
    return {"eval_metrics": str(out), "queries": len(queries), **decision}


def from_scratch(model_dir) -> str | None:
    """What to expect when the model was trained from scratch (its ``lookalike.json`` names a shape, not
    a checkpoint), and how to start from pretrained weights; None for a fine-tuned checkpoint."""
    from pathlib import Path

    from pipelines.siglip import ARCHITECTURES

    meta = Path(model_dir) / "lookalike.json"
    architecture = json.loads(meta.read_text()).get("architecture") if meta.exists() else None
    if architecture not in ARCHITECTURES:
        return None
    return (f"the model was trained from scratch (model.init: {architecture}): on a catalogue of tens of "
            "thousands of photos expect it to trail hand-made colour and shape features, which is why the "
            "baseline or a blend may be served; start from pretrained weights with model.init: "
            "google/siglip-base-patch16-256-multilingual (docs/models.md, lookalike.production.yaml)")


MIN_SEGMENT_QUERIES = 5  # a category with fewer queries gets no row of its own


def _metric_rows(cfg: Config, ds: str, wh: Warehouse, items: dict, queries: list[Query], scored: dict,
                 vectors: dict[str, np.ndarray]) -> list[dict]:
    """eval_metrics rows: every metric over all queries, nDCG@5 per source category, coverage@k."""
    rows = []

    def add(system, version, metric, k, values, segment=None):
        lo, hi = bootstrap_ci(values)
        rows.append({"ds": ds, "system": system, "model_version": version, "metric": metric, "k": k,
                     "value": float(values.mean()), "ci_low": lo, "ci_high": hi, "n": len(values), "segment": segment})

    categories = np.array([items["category"][q.source] or "" for q in queries], dtype=object)
    for system, (version, per_query) in scored.items():
        for (metric, k), values in per_query.items():
            add(system, version, metric, k, values)
        for category in sorted(set(categories) - {""}):
            mask = categories == category
            if mask.sum() >= MIN_SEGMENT_QUERIES:
                add(system, version, "ndcg", 5, per_query[("ndcg", 5)][mask], f"category={category}")
    catalog = set(pq.read_table(wh.work(ds, "catalog"), columns=["item_id"], partitioning=None)
                  .column("item_id").to_pylist())
    on_catalog = np.array([item in catalog for item in items["item_id"]])
    for system, vecs in vectors.items():
        value, n = coverage(vecs[on_catalog], cfg.neighbors.k)
        rows.append({"ds": ds, "system": system, "model_version": scored[system][0], "metric": "coverage",
                     "k": cfg.neighbors.k, "value": value, "ci_low": None, "ci_high": None, "n": n, "segment": None})
    return rows


def _hybrid_weight(cfg: Config, queries: list[Query], ids: np.ndarray, model_vecs: np.ndarray,
                   image_vecs: np.ndarray, baseline_version: str, model_version: str, scored: dict) -> float | None:
    """The weight of ``evaluate.hybrid_weights`` whose model + baseline blend ranks the log best
    (nDCG@5); its per-query scores join ``scored`` as the system ``hybrid``."""
    blends = {}
    for w in (float(w) for w in cfg.evaluate.hybrid_weights.split(",") if w.strip()):
        blend = serving.combine(model_vecs, image_vecs, w)
        blends[w] = score_system(lambda s, c: blend[c] @ blend[s], queries, ids)
    if not blends:
        return None
    log.info("evaluate: hybrid nDCG@5 by weight on the model: %s",
             ", ".join(f"{w:g} {v[('ndcg', 5)].mean():.4f}" for w, v in blends.items()))
    weight = max(blends, key=lambda w: (float(blends[w][("ndcg", 5)].mean()), w))
    scored["hybrid"] = (serving.hybrid_version(model_version, baseline_version, weight), blends[weight])
    return weight


def _promotion(cfg: Config, version: str, per_query: dict[str, np.ndarray], weight: float | None,
               protocol: str, has_production: bool) -> dict:
    """Promote the candidate when it (alone, or as the hybrid, whichever ranks better) beats the
    best baseline on nDCG@5 with the 95% paired-bootstrap interval of the difference above zero,
    and, with another system in production, beats it the same way on the same queries (the
    interval's low end above −``evaluate.promote_tolerance``). On clicks the baselines are both;
    by category the image baseline only, as titles name their category (the text baseline is
    reported, not a bar)."""
    store = ModelStore.at(cfg.models)
    ndcg = {system: float(values.mean()) for system, values in per_query.items()}
    bars = ("image_baseline", "text_baseline") if protocol == "clicks" else ("image_baseline",)
    best = max(bars, key=lambda b: ndcg[b])
    as_hybrid = "hybrid" in ndcg and ndcg["hybrid"] > ndcg["siglip"]
    chosen = "hybrid" if as_hybrid else "siglip"
    score = ndcg[chosen]
    gain_low, gain_high = bootstrap_ci(per_query[chosen] - per_query[best])
    system = f"the model blended with the image baseline at weight {weight:g}" if as_hybrid else "the model"
    beats_baselines = gain_low > 0
    paired = None
    if has_production:
        low, high = bootstrap_ci(per_query[chosen] - per_query["production"])
        paired = {"production_ndcg@5": ndcg["production"], "gain_low": low, "gain_high": high,
                  "queries": len(per_query[chosen])}
    beats_production = paired is None or paired["gain_low"] > -cfg.evaluate.promote_tolerance
    promoted = beats_baselines and beats_production
    registry.record_metrics(store, version, {"ndcg@5": score, "ndcg@5_model": ndcg["siglip"], "protocol": protocol,
                                             "serve_weight": weight if as_hybrid else 1.0})
    against = f"{best} {ndcg[best]:.4f}, gain 95% interval [{gain_low:+.4f}, {gain_high:+.4f}]"
    if paired:
        against += (f"; production {paired['production_ndcg@5']:.4f} on the same {paired['queries']} queries, "
                    f"gain [{paired['gain_low']:+.4f}, {paired['gain_high']:+.4f}]")
    if promoted:
        registry.promote(store, version, reason=f"{system}: nDCG@5 {score:.4f} beats {against}")
    why = [w for w, failed in (("not above the baselines", not beats_baselines),
                               ("within noise of production or below it", not beats_production)) if failed]
    reason = (f"promoted, served as {system}: nDCG@5 {score:.4f} beats {against}" if promoted else
              f"kept as candidate, not served: {system} nDCG@5 {score:.4f} vs {against} ({'; '.join(why)})")
    log.info("evaluate: model %s %s", version, reason)
    return {"model_version": version, "promoted": promoted, "decision": reason,
            "serve_weight": weight if as_hybrid else 1.0, "vs_production": paired}
