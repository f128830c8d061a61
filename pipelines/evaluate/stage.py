"""The evaluate stage: the Similar Looks offline protocol on the held-out interaction logs.

For every source item whose similar-items module got clicks in [ds - evaluate.log_days, ds),
rank the items shown there by each system's similarity to the source and score the ranking
against the clicks (nDCG@5, P@1, P@3, Recall@10, MRR), with bootstrap 95% intervals over
source items. Systems: the candidate SigLIP model, the hand-made image baseline and the TF-IDF
text baseline. The candidate is promoted to production when it beats both baselines on nDCG@5
and is not worse than the current production model.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import registry, schemas
from pipelines.config import Config
from pipelines.errors import LookalikeError
from pipelines.evaluate.baselines import image_baseline_vectors, text_baseline_vectors
from pipelines.extract.stage import read_events
from pipelines.evaluate.metrics import REPORTED, bootstrap_ci, query_metrics
from pipelines.siglip import Preprocess, embed_pixels, load_model
from pipelines.storage import ModelStore, Warehouse, atomic_write_text, write_parquet

log = logging.getLogger(__name__)
BASELINE_SIZE = 64  # px at which the hand-made features are computed


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


def score_system(similarity, queries: list[Query], ids: np.ndarray) -> dict[tuple, np.ndarray]:
    """Per-query metric values of one system; ``similarity(source, candidates)`` → (C,) scores."""
    per_query: dict[tuple, list[float]] = {key: [] for key in REPORTED}
    for q in queries:
        m = query_metrics(similarity(q.source, q.candidates), q.relevant, ids[q.candidates])
        for key, value in m.items():
            per_query[key].append(value)
    return {key: np.array(v) for key, v in per_query.items()}


def _items(wh: Warehouse, ds: str) -> dict[str, list]:
    """Snapshot ∪ catalogue rows (item_id, title, image), one per item."""
    seen, cols = set(), {"item_id": [], "title": [], "image": []}
    for name in ("listings_snapshot", "catalog"):
        table = pq.read_table(wh.work(ds, name), columns=["item_id", "title", "image"])
        for row in table.to_pylist():
            if row["item_id"] not in seen:
                seen.add(row["item_id"])
                for key in cols:
                    cols[key].append(row[key])
    return cols


def run_evaluate(cfg: Config, ds: str, model_uri: str) -> dict:
    wh = Warehouse.of(cfg)
    loaded = load_model(model_uri)
    items = _items(wh, ds)
    ids = np.array(items["item_id"], dtype=object)
    index = {item: i for i, item in enumerate(items["item_id"])}
    events = read_events(wh, ds, cfg.evaluate.log_days).to_pydict()
    queries = build_queries(events, index, cfg.evaluate.min_candidates)
    if not queries:
        raise LookalikeError(f"no source item with module clicks in the {cfg.evaluate.log_days} days before {ds}: "
                             f"the offline evaluation needs interactions with source_item_id set")

    model_vecs = embed_pixels(loaded.model, loaded.preprocess.decode(items["image"]), loaded.preprocess)
    image_vecs = image_baseline_vectors(Preprocess(BASELINE_SIZE).decode(items["image"]), cfg.evaluate.baseline_dim)
    text_vecs = text_baseline_vectors(items["title"])
    systems = {
        "siglip": (loaded.version, lambda s, c: model_vecs[c] @ model_vecs[s]),
        "image_baseline": (None, lambda s, c: image_vecs[c] @ image_vecs[s]),
        "text_baseline": (None, lambda s, c: np.asarray((text_vecs[c] @ text_vecs[s].T).todense()).ravel()),
    }
    rows, summary = [], {}
    for system, (version, sim) in systems.items():
        per_query = score_system(sim, queries, ids)
        for (metric, k), values in per_query.items():
            lo, hi = bootstrap_ci(values)
            rows.append({"ds": ds, "system": system, "model_version": version, "metric": metric, "k": k,
                         "value": float(values.mean()), "ci_low": lo, "ci_high": hi, "n": len(values)})
        summary[system] = float(per_query[("ndcg", 5)].mean())
    out = wh.fresh_work(ds, "eval_metrics")
    write_parquet(pa.Table.from_pylist(rows, schema=schemas.EVAL_METRICS), out / "part-0.parquet")
    log.info("evaluate %s: %d queries; nDCG@5 %s", ds, len(queries),
             ", ".join(f"{s} {v:.3f}" for s, v in summary.items()))

    decision = _promotion(cfg, loaded.version, summary)
    atomic_write_text(wh.work(ds, "model_decision.json"), json.dumps(decision, indent=2))
    return {"eval_metrics": str(out), "queries": len(queries), **decision}


def _promotion(cfg: Config, version: str, ndcg: dict[str, float]) -> dict:
    """Promote the candidate when it beats both baselines and is not worse than production by more
    than ``evaluate.promote_tolerance``."""
    store = ModelStore.at(cfg.models)
    best_baseline = max(ndcg["image_baseline"], ndcg["text_baseline"])
    current = registry.production(store)
    current_ndcg = None
    if current and current != version:
        current_ndcg = registry.version_info(store, current).get("eval", {}).get("ndcg@5")
    beats_baselines = ndcg["siglip"] > best_baseline
    not_worse = current_ndcg is None or ndcg["siglip"] >= current_ndcg - cfg.evaluate.promote_tolerance
    promoted = beats_baselines and not_worse
    registry.record_metrics(store, version, {"ndcg@5": ndcg["siglip"]})
    if promoted:
        registry.promote(store, version, reason=f"nDCG@5 {ndcg['siglip']:.4f} beats baselines ({best_baseline:.4f})")
    reason = ("promoted" if promoted else
              f"kept as candidate: nDCG@5 {ndcg['siglip']:.4f} vs best baseline {best_baseline:.4f}"
              + (f", production {current_ndcg:.4f}" if current_ndcg is not None else ""))
    log.info("evaluate: model %s %s", version, reason)
    return {"model_version": version, "promoted": promoted, "decision": reason}
