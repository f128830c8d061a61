"""Ranking metrics for the offline protocol, per query, with bootstrap confidence intervals.

Each query is one source item of the similar-items module; its candidates are the items the
module showed there, and the relevant ones are those users clicked (Similar Looks, §4.1).
"""
from __future__ import annotations

import numpy as np

# (metric, k) pairs reported for every system; k = None for MRR (no cut-off).
REPORTED = (("ndcg", 5), ("precision", 1), ("precision", 3), ("recall", 10), ("mrr", None))


def query_metrics(scores: np.ndarray, relevant: np.ndarray, item_ids: np.ndarray) -> dict[tuple[str, int | None], float]:
    """Metrics of one query: ``scores`` (C,) of its candidates, ``relevant`` (C,) bool.

    Candidates are ranked by score descending, ties broken by item id so results are stable.
    """
    order = np.lexsort((item_ids, -scores))
    rel = relevant[order].astype(np.float64)
    n_rel = rel.sum()
    out: dict[tuple[str, int | None], float] = {}
    for metric, k in REPORTED:
        if metric == "ndcg":
            discounts = 1.0 / np.log2(np.arange(2, k + 2))
            dcg = (rel[:k] * discounts[: len(rel[:k])]).sum()
            ideal = discounts[: int(min(n_rel, k))].sum()
            out[(metric, k)] = dcg / ideal if ideal > 0 else 0.0
        elif metric == "precision":
            out[(metric, k)] = rel[:k].sum() / k
        elif metric == "recall":
            out[(metric, k)] = rel[:k].sum() / n_rel if n_rel else 0.0
        elif metric == "mrr":
            hits = np.flatnonzero(rel)
            out[(metric, k)] = 1.0 / (hits[0] + 1) if len(hits) else 0.0
    return out


def bootstrap_ci(values: np.ndarray, *, resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per query)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))
