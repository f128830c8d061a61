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

from lookalike.systems import HYBRID, IMAGE_BASELINE, MULTIMODAL, PRODUCTION, SIGLIP, TEXT_BASELINE
from lookalike import registry, schemas, serving
from lookalike.config import Config
from lookalike.errors import LookalikeError
from lookalike.projection import load_projection
from lookalike import features
from lookalike.evaluate.baselines import text_baseline_vectors
from lookalike.features import baseline_vectors
from lookalike.events import read_events
from lookalike.evaluate.metrics import REPORTED, bootstrap_ci, coverage, discriminates, query_metrics
from lookalike.siglip import embed_pixels, embed_texts, load_model
from lookalike.atomic import atomic_write_text
from lookalike.texts import TEXT_FIELDS
from lookalike.storage import ModelStore, Warehouse, write_parquet

log = logging.getLogger(__name__)


# What a shopper compares on a similar-items module without clicks yet (the listings protocol): the
# kind of thing (category), its colour, the same product in another variant (product_group) and
# what the same shoppers bought or clicked together (co_purchase); colour and product_group only where
# the source has those optional listing columns, co_purchase where the log's purchases (else clicks)
# tell a query's candidates apart.
FACETS = ("category", "colour", "product_group", "co_purchase")
LISTING_FACETS = FACETS[:3]  # the facets read from the listings' own columns
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


def co_purchases(events: dict[str, list], index: dict[str, int]) -> dict[int, set[int]]:
    """Row index → the rows of the items the same users bought with it (clicked, in a log without purchases)."""
    kind = "purchase" if "purchase" in events["event"] else "click"
    by_user: dict[str, set[int]] = {}
    for user, event, item in zip(events["user_id"], events["event"], events["item_id"]):
        if event == kind and item in index:
            by_user.setdefault(user, set()).add(index[item])
    together: dict[int, set[int]] = {}
    for bought in by_user.values():
        if 1 < len(bought) <= 200:  # a user who bought half the catalogue says little about any pair
            for row in bought:
                together.setdefault(row, set()).update(bought - {row})
    return together


def category_queries(items: dict[str, list], val_fraction: float, limit: int,
                     together: dict[int, set[int]] | None = None) -> list[Query]:
    """The protocol of a catalogue without module clicks yet: every held-out item (the training
    split's validation items, never trained on) is a query over the other held-out items, and
    those of its own category are the relevant ones. Each query also carries its relevance by
    facet (:data:`FACETS`): the same category, the same colour and the same product group, each
    where the item has a value (the optional listing columns) and another held-out item shares it,
    and the held-out items the same shoppers bought with it (``together``: ``co_purchases``) where
    some but not all of them were. Up to ``limit`` items, chosen by id hash."""
    from lookalike.ids import id_hash, is_validation

    pool = [i for i, (item, category) in enumerate(zip(items["item_id"], items["category"]))
            if category and is_validation(item, val_fraction)]
    pool = sorted(sorted(pool, key=lambda i: id_hash(items["item_id"][i]))[:limit])
    rows = np.array(pool, dtype=np.int64)
    values = {facet: np.array([items.get(facet, [None] * len(items["item_id"]))[i] or "" for i in pool],
                              dtype=object) for facet in LISTING_FACETS}
    together = together or {}
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
        bought = np.isin(rows[others], list(together.get(int(row), ())))
        if discriminates(bought):
            facets["co_purchase"] = bought
        queries.append(Query(int(row), rows[others], relevant, facets))
    return queries


def score_system(similarity, queries: list[Query], ids: np.ndarray) -> dict[tuple, np.ndarray]:
    """Per-query metric values of one system; ``similarity(source, candidates)`` → (C,) scores.

    On the listings protocol also, per facet, nDCG@5 and P@5 (``("colour:ndcg", 5)`` …; NaN where a
    query has no such facet) and the shopper's score ``SHOPPER``: per query the mean nDCG@5 over the
    facets it has (category, and colour, product group and co-purchase where the catalogue and its
    log have them), so that a system that gains on one facet by losing the others gains nothing."""
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
    """Snapshot ∪ catalogue rows (item_id, the text fields, image, and colour and product_group when the
    source has them), one per item."""
    seen, cols = set(), {"item_id": [], **{f: [] for f in TEXT_FIELDS}, "image": [], "colour": [], "product_group": []}
    for name in ("listings_snapshot", "catalog"):
        table = pq.read_table(wh.work(ds, name), columns=[c for c in cols if c not in LISTING_FACETS[1:]])
        facets = pq.read_table(wh.work(ds, name), columns=[c for c in LISTING_FACETS[1:]
                                                          if c in pq.read_schema(_first_file(wh.work(ds, name))).names])
        for facet in LISTING_FACETS[1:]:
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


def _production(cfg: Config, ds: str, items: dict, candidate: str) -> tuple[str, np.ndarray] | None:
    """(version, vectors) of the production model as the night serves it (blended, reading titles, as it
    was promoted: ``serving.resolve``); None when no model is in production or it is ``candidate``
    (evaluated again: its forms are the candidate's own)."""
    if registry.production(ModelStore.at(cfg.models)) in (None, candidate):
        return None
    served = serving.resolve(cfg, ds)
    return served.version, _embed_items(serving.load_embedder(served.path), items)


def _embed_items(embedder, items: dict) -> np.ndarray:
    """Every item's vector from a served system's embedder: its photo and, where the system reads it, its text."""
    texts = serving.item_texts(embedder.reads, _rows(items))
    return embedder.embed([embedder.decode(image) for image in items["image"]], 256, texts)


def _rows(items: dict) -> list[dict]:
    return [dict(zip(items, values)) for values in zip(*items.values())]


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
        queries, note = _scored_queries(category_queries(items, cfg.train.val_fraction, cfg.evaluate.category_items,
                                                         co_purchases(events, index)), "category")
        protocol, notes = "category", notes + ([note] if note else [])
        log.info("evaluate %s: no similar-items clicks that discriminate in the %d days before; scoring %d held-out "
                 "items by shared category, colour, product group and co-purchase instead", ds, cfg.evaluate.log_days,
                 len(queries))
    for note in notes:
        log.warning("evaluate %s: %s", ds, note)
    if not queries:
        raise LookalikeError(f"nothing to evaluate on for {ds}: no source item with module clicks that discriminate "
                             f"in the {cfg.evaluate.log_days} days before (interactions with source_item_id set), and "
                             f"no held-out listing shares a category with another")

    model_vecs = embed_pixels(loaded.model, loaded.preprocess.decode(items["image"]), loaded.preprocess)
    texts = serving.item_texts(serving.text_template(loaded.path), _rows(items))
    has_text = np.array([t is not None for t in texts])
    text_model_vecs = np.zeros_like(model_vecs)
    if has_text.any():
        text_model_vecs[has_text] = embed_texts(loaded, [t for t in texts if t is not None])
    baseline_version, baseline_dir = serving.ensure_baseline(cfg, ds)
    image_vecs = baseline_vectors(load_projection(baseline_dir / "projection.npz"),
                                  features.preprocess().decode(items["image"]))
    text_vecs = text_baseline_vectors(items["title"])
    vectors = {SIGLIP: model_vecs, IMAGE_BASELINE: image_vecs}
    scored = {
        SIGLIP: (loaded.version, score_system(_cosine(model_vecs), queries, ids)),
        IMAGE_BASELINE: (baseline_version, score_system(_cosine(image_vecs), queries, ids)),
        TEXT_BASELINE: (None, score_system(
            lambda s, c: np.asarray((text_vecs[c] @ text_vecs[s].T).todense()).ravel(), queries, ids)),
    }
    serve_as = {SIGLIP: (1.0, 0.0)}
    production = _production(cfg, ds, items, loaded.version)
    if production:
        prod_version, prod_vecs = production
        vectors[PRODUCTION] = prod_vecs
        scored[PRODUCTION] = (prod_version, score_system(_cosine(prod_vecs), queries, ids))
    variants = _variants(cfg, model_vecs, text_model_vecs if has_text.any() else None, has_text, image_vecs)
    for system, (weight, text_weight, vecs) in _best_variants(variants, queries, ids, loaded.version,
                                                              baseline_version, scored).items():
        vectors[system], serve_as[system] = vecs, (weight, text_weight)
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
    log.info("evaluate %s: %d queries (%s); %s %s", ds, len(queries), protocol,
             "shopper's score" if SHOPPER in scored[SIGLIP][1] else "nDCG@5",
             ", ".join(f"{s} {v.mean():.3f}" for s, v in summary.items()))

    scratch = from_scratch(loaded.path)
    if scratch:
        notes.append(scratch)
        log.warning("evaluate %s: %s", ds, scratch)
    versions = {system: version for system, (version, _) in scored.items()}
    decision = {"protocol": protocol, "notes": notes, "trained_from_scratch": bool(scratch), "facets@5": facets,
                **_promotion(cfg, loaded.version, summary, serve_as, protocol, facets, versions)}
    atomic_write_text(wh.work(ds, "model_decision.json"), json.dumps(decision, indent=2))
    return {"eval_metrics": str(out), "queries": len(queries), **decision}


def _cosine(vectors: np.ndarray):
    return lambda s, c: vectors[c] @ vectors[s]


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


def _weights(text: str) -> list[float]:
    return [float(w) for w in text.split(",") if w.strip()]


def _variants(cfg: Config, model_vecs: np.ndarray, text_vecs: np.ndarray | None, has_text: np.ndarray,
              image_vecs: np.ndarray) -> dict[str, dict[tuple[float, float], np.ndarray]]:
    """The servable forms of the model, by system and (weight on the model, text weight): the
    photo and title blended (``multimodal``, ``evaluate.text_weights``) and each of those, and the
    photo alone, blended with the image baseline (``hybrid``, ``evaluate.hybrid_weights``)."""
    text_weights = _weights(cfg.evaluate.text_weights) if text_vecs is not None else []
    model = {0.0: model_vecs, **{t: serving.with_text(model_vecs, text_vecs, has_text, t) for t in text_weights}}
    out = {MULTIMODAL: {(1.0, t): model[t] for t in text_weights},
           HYBRID: {(w, t): serving.combine(vecs, image_vecs, w)
                    for w in _weights(cfg.evaluate.hybrid_weights) for t, vecs in model.items()}}
    return {system: grid for system, grid in out.items() if grid}


def _best_variants(variants: dict, queries: list[Query], ids: np.ndarray, model_version: str, baseline_version: str,
                   scored: dict) -> dict[str, tuple[float, float, np.ndarray]]:
    """Each variant system at the weights that rank the log best (the ranking score); its per-query
    scores join ``scored`` under the version it would be served as."""
    best = {}
    for system, grid in variants.items():
        per_weights = {weights: score_system(_cosine(vecs), queries, ids) for weights, vecs in grid.items()}
        log.info("evaluate: %s by (weight on the model, text weight): %s", system, ", ".join(
            f"({w:g}, {t:g}) {ranking_score(v).mean():.4f}" for (w, t), v in per_weights.items()))
        (w, t) = max(per_weights, key=lambda key: (float(ranking_score(per_weights[key]).mean()), key))
        scored[system] = (serving.hybrid_version(model_version, baseline_version, w, t), per_weights[(w, t)])
        best[system] = (w, t, grid[(w, t)])
    return best


def describe(system: str, weights: tuple[float, float] | None) -> str:
    """A servable system in words."""
    if system == IMAGE_BASELINE:
        return "the image baseline"
    if system == PRODUCTION:
        return "the production model as it is served"
    w, t = weights or (1.0, 0.0)
    parts = (["its title at weight " + f"{t:g}"] if t > 0 else []) + \
        ([f"the image baseline at weight {1 - w:g}"] if w < 1 else [])
    return "the model" + (f" with {' and '.join(parts)}" if parts else "")


def facet_loss(facets: dict[str, dict[str, float]], system: str) -> tuple[float, str | None]:
    """(the most ``system`` trails the image baseline by on a facet@5, that facet); (0, None) when it trails on none."""
    own, bar = facets.get(system, {}), facets.get(IMAGE_BASELINE, {})
    losses = {facet: bar[facet] - own[facet] for facet in own.keys() & bar.keys()}
    worst = max(losses, key=losses.get, default=None)
    return (losses[worst], worst) if worst is not None and losses[worst] > 0 else (0.0, None)


def choose(per_query: dict[str, np.ndarray], current: str, eligible: list[str],
           tolerance: float = 0.0) -> tuple[str, list[dict]]:
    """The system to serve and the table it was chosen from. Start from ``current`` (what is served
    now); while an ``eligible`` system beats the one chosen, with the 95% paired-bootstrap interval
    of its gain above zero (above −``tolerance`` against production), take the best-scoring such
    challenger. So a system is replaced only by one that beats it beyond noise, and the one chosen is
    beaten so by no eligible system."""
    served = current if current in eligible else IMAGE_BASELINE
    while True:
        challengers = []
        for system in eligible:
            if system == served:
                continue
            low, _ = bootstrap_ci(per_query[system] - per_query[served])
            bar = -tolerance if served == PRODUCTION else 0.0
            if low > bar and per_query[system].mean() > per_query[served].mean():
                challengers.append(system)
        if not challengers:
            break
        served = max(challengers, key=lambda s: per_query[s].mean())
    table = []
    for system in sorted(per_query, key=lambda s: -per_query[s].mean()):
        low, high = bootstrap_ci(per_query[system] - per_query[served])
        table.append({"system": system, "score": float(per_query[system].mean()), "gain_low": low, "gain_high": high,
                      "servable": system in eligible, "served": system == served})
    return served, table


def _promotion(cfg: Config, version: str, per_query: dict[str, np.ndarray],
               serve_as: dict[str, tuple[float, float]], protocol: str,
               facets: dict[str, dict[str, float]] | None = None, versions: dict[str, str] | None = None) -> dict:
    """Serve the best servable system (``choose``): the candidate model alone, reading titles
    (``multimodal``) or blended with the image baseline (``hybrid``), the production system or the
    image baseline, ranked by the shopper's score (every facet the catalogue can judge) or, on
    clicks, nDCG@5. A system whose facet@5 trails the image baseline's by more than
    ``evaluate.max_facet_loss`` on any facet is not servable. On clicks a form of the model must also
    beat the text baseline beyond noise (it is reported, never served; by category titles name it).
    A form of the candidate chosen is promoted with its weights; the image baseline chosen over
    production retires the production model (``lookalike models rollback`` restores it)."""
    store = ModelStore.at(cfg.models)
    facets, versions = facets or {}, versions or {}
    measure = "shopper's score" if protocol == "category" and facets.get(SIGLIP, {}).keys() - {"category"} \
        else "nDCG@5"
    has_production = PRODUCTION in per_query
    current = PRODUCTION if has_production else IMAGE_BASELINE
    in_production = registry.production(store)
    if in_production == version:  # evaluated again: what is served now is the form it was promoted as
        info = registry.version_info(store, version).get("eval", {})
        promoted_as = (float(info.get("serve_weight", 1.0)), float(info.get("text_weight", 0.0)))
        current = next((s for s, weights in serve_as.items() if weights == promoted_as), IMAGE_BASELINE)
    losses = {s: facet_loss(facets, s) for s in per_query}
    servable = [s for s in (IMAGE_BASELINE, PRODUCTION, *serve_as) if s in per_query]
    eligible = [s for s in servable if losses[s][0] <= cfg.evaluate.max_facet_loss or s == IMAGE_BASELINE]
    if protocol == "clicks" and TEXT_BASELINE in per_query:
        eligible = [s for s in eligible if s not in serve_as or
                    bootstrap_ci(per_query[s] - per_query[TEXT_BASELINE])[0] > 0]
    served, table = choose(per_query, current, eligible, cfg.evaluate.promote_tolerance)
    for row in table:
        row["version"] = versions.get(row["system"])
        row["facet_loss"], row["worst_facet"] = losses[row["system"]]
    scores = {system: float(values.mean()) for system, values in per_query.items()}
    model_form = max(serve_as, key=lambda s: (scores[s], s == SIGLIP))  # the candidate's best form
    chosen = served if served in serve_as else model_form
    weight, text_weight = serve_as[chosen]
    promoted = served in serve_as
    retired = served == IMAGE_BASELINE and in_production is not None
    registry.record_metrics(store, version, {"ndcg@5": scores[chosen], "ndcg@5_model": scores[SIGLIP],
                                             "protocol": protocol, "measure": measure, "serve_weight": weight,
                                             "text_weight": text_weight, "facets@5": facets.get(chosen)})

    def gain(system: str, against: str) -> str:
        low, high = bootstrap_ci(per_query[system] - per_query[against])
        return f"{against} {scores[against]:.4f}, gain 95% interval [{low:+.4f}, {high:+.4f}]"

    bound = cfg.evaluate.max_facet_loss
    excluded = [f"{s} loses {losses[s][1]}@5 by {losses[s][0]:.3f} to the image baseline (> evaluate.max_facet_loss "
                f"{bound:g})" for s in servable if s not in eligible and losses[s][0] > bound]
    if promoted:
        against = current if current != chosen else IMAGE_BASELINE  # evaluated again: against the baseline
        reason = f"{describe(chosen, serve_as[chosen])}: {measure} {scores[chosen]:.4f} beats {gain(chosen, against)}"
        registry.promote(store, version, reason=reason)
        decision = f"promoted, served as {reason}"
    elif retired:
        reason = (f"the image baseline beats the production model {registry.production(store)} beyond noise: "
                  f"{measure} {scores[IMAGE_BASELINE]:.4f} against {gain(IMAGE_BASELINE, PRODUCTION)}")
        registry.retire(store, reason)
        decision = f"kept as candidate, not served; {reason}"
    else:
        why = []
        if model_form not in eligible:
            why.append(f"{describe(model_form, serve_as[model_form])} is not servable"
                       + ("" if losses[model_form][0] <= bound else " (it loses a facet beyond the bound)"))
        else:
            low = bootstrap_ci(per_query[model_form] - per_query[served])[0]
            why.append("within noise of production or below it" if served == PRODUCTION and low <= 0 else
                       "not above the baselines" if low <= 0 else "another system ranks higher")
        decision = (f"kept as candidate, not served: {describe(model_form, serve_as[model_form])} {measure} "
                    f"{scores[model_form]:.4f} vs {gain(model_form, served)}; {describe(served, None)} stays served "
                    f"({'; '.join(why)})")
    if excluded:
        decision += "; " + "; ".join(excluded)
    log.info("evaluate: model %s %s", version, decision)
    for row in table:
        log.info("evaluate:   %-15s %-55s %s %.4f  gain vs served [%+.4f, %+.4f]%s%s", row["system"],
                 row["version"] or "", measure, row["score"], row["gain_low"], row["gain_high"],
                 "  SERVED" if row["served"] else "", "" if row["servable"] else "  (not servable)")
    paired = None
    if has_production:
        low, high = bootstrap_ci(per_query[model_form] - per_query[PRODUCTION])
        paired = {"production_ndcg@5": scores[PRODUCTION], "gain_low": low, "gain_high": high,
                  "queries": len(per_query[model_form])}
    return {"model_version": version, "promoted": promoted, "retired_production": retired, "decision": decision,
            "measure": measure, "served_system": served, "served_version": versions.get(served),
            "serve_weight": weight if promoted else 1.0, "text_weight": text_weight if promoted else 0.0,
            "chosen_from": table, "vs_production": paired}
