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
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.systems import HYBRID, IMAGE_BASELINE, PRODUCTION, SIGLIP, TEXT_BASELINE
from lookalike import registry, schemas, serving
from lookalike.config import Config
from lookalike.errors import LookalikeError
from lookalike.projection import load_projection
from lookalike import features
from lookalike.evaluate.baselines import text_baseline_vectors
from lookalike.features import baseline_vectors
from lookalike.events import read_events
from lookalike.evaluate.metrics import REPORTED, bootstrap_ci, coverage, discriminates, query_metrics
from lookalike.siglip import embed_pixels, load_model
from lookalike.atomic import atomic_write_text
from lookalike.storage import ModelStore, Warehouse, write_parquet

log = logging.getLogger(__name__)


# What a shopper compares on a similar-items module without clicks yet (the listings protocol): the
# kind of thing (category), its colour and the same product in another variant (product_group);
# colour and product_group only where the source has those optional listing columns.
FACETS = ("category", "colour", "product_group")
SHOPPER = ("shopper", 5)  # the combined score (``score_system``): what promotion and the blend weight use


@dataclass
class Query:
    source: int  # row index of the source item
    candidates: np.ndarray  # (C,) row indices of the items shown
    relevant: np.ndarray  # (C,) bool: clicked (by category on the listings protocol)
    facets: dict[str, np.ndarray] = field(default_factory=dict)  # facet → (C,) bool, the listings protocol


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
    those of its own category are the relevant ones. Each query also carries its relevance by
    facet (:data:`FACETS`): the same category, the same colour and the same product group, each
    where the item has a value (the optional listing columns) and another held-out item shares it.
    Up to ``limit`` items, chosen by id hash."""
    from lookalike.ids import id_hash, is_validation

    pool = [i for i, (item, category) in enumerate(zip(items["item_id"], items["category"]))
            if category and is_validation(item, val_fraction)]
    pool = sorted(sorted(pool, key=lambda i: id_hash(items["item_id"][i]))[:limit])
    rows = np.array(pool, dtype=np.int64)
    values = {facet: np.array([items.get(facet, [None] * len(items["item_id"]))[i] or "" for i in pool],
                              dtype=object) for facet in FACETS}
    queries = []
    for j, row in enumerate(rows):
        others = np.delete(np.arange(len(rows)), j)
        relevant = values["category"][others] == values["category"][j]
        if not relevant.any():
            continue
        facets = {}
        for facet, labels in values.items():
            if labels[j]:
                same = labels[others] == labels[j]
                if same.any():
                    facets[facet] = same
        queries.append(Query(int(row), rows[others], relevant, facets))
    return queries


def score_system(similarity, queries: list[Query], ids: np.ndarray) -> dict[tuple, np.ndarray]:
    """Per-query metric values of one system; ``similarity(source, candidates)`` → (C,) scores.

    On the listings protocol also, per facet, nDCG@5 and P@5 (``("colour:ndcg", 5)`` …; NaN where a
    query has no such facet) and the shopper's score ``SHOPPER``: per query the mean nDCG@5 over the
    facets it has (category, and colour and product group where the catalogue has them), so that a
    model that gains on the kind of thing but loses colour gains nothing."""
    per_query: dict[tuple, list[float]] = {key: [] for key in REPORTED}
    with_facets = any(q.facets for q in queries)
    if with_facets:
        per_query.update({(f"{facet}:{metric}", 5): [] for facet in FACETS for metric in ("ndcg", "precision")})
        per_query[SHOPPER] = []
    for q in queries:
        scores = similarity(q.source, q.candidates)
        for key, value in query_metrics(scores, q.relevant, ids[q.candidates]).items():
            per_query[key].append(value)
        if with_facets:
            gained = []
            for facet in FACETS:
                m = query_metrics(scores, q.facets[facet], ids[q.candidates]) if facet in q.facets else {}
                per_query[(f"{facet}:ndcg", 5)].append(m.get(("ndcg", 5), np.nan))
                per_query[(f"{facet}:precision", 5)].append(m.get(("precision", 5), np.nan) if m else np.nan)
                if m:
                    gained.append(m[("ndcg", 5)])
            per_query[SHOPPER].append(float(np.mean(gained)))
    return {key: np.array(v, dtype=np.float64) for key, v in per_query.items()}


def ranking_score(per_query: dict[tuple, np.ndarray]) -> np.ndarray:
    """The per-query score that ranks systems: the shopper's score where there are facets, else nDCG@5."""
    return per_query[SHOPPER] if SHOPPER in per_query else per_query[("ndcg", 5)]


def _items(wh: Warehouse, ds: str) -> dict[str, list]:
    """Snapshot ∪ catalogue rows (item_id, title, category, image, and colour and product_group when the
    source has them), one per item."""
    seen, cols = set(), {"item_id": [], "title": [], "category": [], "image": [], "colour": [], "product_group": []}
    for name in ("listings_snapshot", "catalog"):
        table = pq.read_table(wh.work(ds, name), columns=[c for c in cols if c not in FACETS[1:]])
        facets = pq.read_table(wh.work(ds, name), columns=[c for c in FACETS[1:]
                                                          if c in pq.read_schema(_first_file(wh.work(ds, name))).names])
        for facet in FACETS[1:]:
            table = table.append_column(facet, facets.column(facet) if facet in facets.column_names
                                        else pa.nulls(table.num_rows, pa.string()))
        for row in table.to_pylist():
            if row["item_id"] not in seen:
                seen.add(row["item_id"])
                for key in cols:
                    cols[key].append(row[key])
    return cols


def _first_file(path):
    from pathlib import Path

    path = Path(path)
    return path if path.is_file() else next(iter(sorted(path.rglob("*.parquet"))))


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
                                  features.preprocess().decode(items["image"]))
    text_vecs = text_baseline_vectors(items["title"])
    vectors = {SIGLIP: model_vecs, IMAGE_BASELINE: image_vecs}
    systems = {
        SIGLIP: (loaded.version, lambda s, c: model_vecs[c] @ model_vecs[s]),
        IMAGE_BASELINE: (baseline_version, lambda s, c: image_vecs[c] @ image_vecs[s]),
        TEXT_BASELINE: (None, lambda s, c: np.asarray((text_vecs[c] @ text_vecs[s].T).todense()).ravel()),
    }
    production = _production(cfg, loaded.version, lambda pre: pre.decode(items["image"]), image_vecs, baseline_version)
    if production:
        prod_version, prod_vecs = production
        vectors[PRODUCTION] = prod_vecs
        systems[PRODUCTION] = (prod_version, lambda s, c: prod_vecs[c] @ prod_vecs[s])
    scored = {system: (version, score_system(sim, queries, ids)) for system, (version, sim) in systems.items()}
    weight = _hybrid_weight(cfg, queries, ids, model_vecs, image_vecs, baseline_version, loaded.version, scored)
    if weight is not None:
        vectors[HYBRID] = serving.combine(model_vecs, image_vecs, weight)
    rows = _metric_rows(cfg, ds, wh, items, queries, scored, vectors)
    summary = {system: ranking_score(per_query) for system, (_, per_query) in scored.items()}
    facets = {system: {facet: float(np.nanmean(per_query[(f"{facet}:precision", 5)]))
                       for facet in FACETS if (f"{facet}:precision", 5) in per_query
                       and not np.isnan(per_query[(f"{facet}:precision", 5)]).all()}
              for system, (_, per_query) in scored.items()}
    if protocol == "category" and not any("colour" in f for f in facets.values()):
        notes.append("colour was not evaluated: the source's listings have no colour column (docs/pipeline.md, "
                     "'Source contract'); the model was scored by category alone")
    out = wh.fresh_work(ds, "eval_metrics")
    write_parquet(pa.Table.from_pylist(rows, schema=schemas.EVAL_METRICS), out / "part-0.parquet")
    log.info("evaluate %s: %d queries (%s); nDCG@5 %s", ds, len(queries), protocol,
             ", ".join(f"{s} {v.mean():.3f}" for s, v in summary.items()))

    scratch = from_scratch(loaded.path)
    if scratch:
        notes.append(scratch)
        log.warning("evaluate %s: %s", ds, scratch)
    decision = {"protocol": protocol, "notes": notes, "trained_from_scratch": bool(scratch), "facets@5": facets,
                **_promotion(cfg, loaded.version, summary, weight, protocol, production is not None, facets)}
    atomic_write_text(wh.work(ds, "model_decision.json"), json.dumps(decision, indent=2))
    return {"eval_metrics": str(out), "queries": len(queries), **decision}


def from_scratch(model_dir) -> str | None:
    """What to expect when the model was trained from scratch (its ``lookalike.json`` names a shape, not
    a checkpoint), and how to start from pretrained weights; None for a fine-tuned checkpoint."""
    from pathlib import Path

    from lookalike.siglip import ARCHITECTURES

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
            facet, _, name = metric.rpartition(":")
            if not facet:
                add(system, version, metric, k, values)
            elif not np.isnan(values).all():  # a facet's figure over the queries that have it
                add(system, version, name, k, values[~np.isnan(values)], f"facet={facet}")
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
    log.info("evaluate: the hybrid's %s by weight on the model: %s", "shopper's score" if SHOPPER in
             next(iter(blends.values())) else "nDCG@5",
             ", ".join(f"{w:g} {ranking_score(v).mean():.4f}" for w, v in blends.items()))
    weight = max(blends, key=lambda w: (float(ranking_score(blends[w]).mean()), w))
    scored[HYBRID] = (serving.hybrid_version(model_version, baseline_version, weight), blends[weight])
    return weight


def _promotion(cfg: Config, version: str, per_query: dict[str, np.ndarray], weight: float | None,
               protocol: str, has_production: bool, facets: dict[str, dict[str, float]] | None = None) -> dict:
    """Promote the candidate when it (alone, or as the hybrid, whichever ranks better) beats the
    best baseline on the ranking score (``ranking_score``: the shopper's score where the catalogue
    has facets, else nDCG@5) with the 95% paired-bootstrap interval of the difference above zero,
    and, with another system in production, beats it the same way on the same queries (the
    interval's low end above −``evaluate.promote_tolerance``). On clicks the baselines are both;
    by category the image baseline only, as titles name their category (the text baseline is
    reported, not a bar). Whatever it gains, a system whose colour@5 (``facets``) trails the image
    baseline's by more than ``evaluate.max_colour_loss`` is not served: the model alone then gives
    way to the blend, and with the blend losing colour too the baseline stays."""
    store = ModelStore.at(cfg.models)
    facets = facets or {}
    measure = "shopper's score" if protocol == "category" and facets.get(SIGLIP, {}).keys() - {"category"} \
        else "nDCG@5"
    ndcg = {system: float(values.mean()) for system, values in per_query.items()}
    bars = (IMAGE_BASELINE, TEXT_BASELINE) if protocol == "clicks" else (IMAGE_BASELINE,)
    best = max(bars, key=lambda b: ndcg[b])

    def colour_loss(system: str) -> float | None:
        own, bar = facets.get(system, {}).get("colour"), facets.get(IMAGE_BASELINE, {}).get("colour")
        return None if own is None or bar is None else bar - own

    fair = {s: colour_loss(s) is None or colour_loss(s) <= cfg.evaluate.max_colour_loss
            for s in (SIGLIP, HYBRID) if s in ndcg}
    eligible = [s for s in fair if fair[s]] or [SIGLIP]
    chosen = max(eligible, key=lambda s: (ndcg[s], s == SIGLIP))
    as_hybrid = chosen == HYBRID
    score = ndcg[chosen]
    gain_low, gain_high = bootstrap_ci(per_query[chosen] - per_query[best])
    system = f"the model blended with the image baseline at weight {weight:g}" if as_hybrid else "the model"
    beats_baselines = gain_low > 0
    keeps_colour = fair.get(chosen, True)
    paired = None
    if has_production:
        low, high = bootstrap_ci(per_query[chosen] - per_query[PRODUCTION])
        paired = {"production_ndcg@5": ndcg[PRODUCTION], "gain_low": low, "gain_high": high,
                  "queries": len(per_query[chosen])}
    beats_production = paired is None or paired["gain_low"] > -cfg.evaluate.promote_tolerance
    promoted = beats_baselines and beats_production and keeps_colour
    registry.record_metrics(store, version, {"ndcg@5": score, "ndcg@5_model": ndcg[SIGLIP], "protocol": protocol,
                                             "measure": measure, "serve_weight": weight if as_hybrid else 1.0,
                                             "facets@5": facets.get(chosen)})
    against = f"{best} {ndcg[best]:.4f}, gain 95% interval [{gain_low:+.4f}, {gain_high:+.4f}]"
    if paired:
        against += (f"; production {paired['production_ndcg@5']:.4f} on the same {paired['queries']} queries, "
                    f"gain [{paired['gain_low']:+.4f}, {paired['gain_high']:+.4f}]")
    if not fair.get(SIGLIP, True):
        loss = colour_loss(SIGLIP)
        against += (f"; the model alone loses colour@5 by {loss:.3f} to the image baseline "
                    f"(> evaluate.max_colour_loss {cfg.evaluate.max_colour_loss:g})")
    if promoted:
        registry.promote(store, version, reason=f"{system}: {measure} {score:.4f} beats {against}")
    why = [w for w, failed in (("not above the baselines", not beats_baselines),
                               ("within noise of production or below it", not beats_production),
                               ("it loses colour beyond the bound", not keeps_colour)) if failed]
    reason = (f"promoted, served as {system}: {measure} {score:.4f} beats {against}" if promoted else
              f"kept as candidate, not served: {system} {measure} {score:.4f} vs {against} ({'; '.join(why)})")
    log.info("evaluate: model %s %s", version, reason)
    return {"model_version": version, "promoted": promoted, "decision": reason, "measure": measure,
            "serve_weight": weight if as_hybrid else 1.0, "vs_production": paired}
