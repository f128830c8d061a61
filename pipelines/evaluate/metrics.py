"""Ranking metrics for the offline protocol, per query, with bootstrap confidence intervals.

Each query is one source item of the similar-items module; its candidates are the items the
module showed there, and the relevant ones are those users clicked (Similar Looks, §4.1).
"""
from __future__ import annotations

import numpy as np

# (metric, k) pairs reported for every system; k = None for MRR (no cut-off).
REPORTED = (("ndcg", 5), ("ndcg", 10), ("precision", 1), ("precision", 3), ("precision", 5), ("recall", 10),
            ("mrr", None))
COVERAGE_QUERIES = 20_000  # item lists sampled (seeded) to measure catalogue coverage


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


def discriminates(relevant: np.ndarray) -> bool:
    """Whether a query can tell rankings apart: it has a relevant and a non-relevant candidate
    (with every candidate clicked, or none, every ranking scores the same)."""
    return bool(relevant.any()) and not bool(relevant.all())


def coverage(vectors: np.ndarray, k: int, *, max_queries: int = COVERAGE_QUERIES, seed: int = 0) -> tuple[float, int]:
    """(share of the items that appear in at least one item's top-k by cosine, items whose lists
    were searched): the catalogue coverage of a system's neighbour lists. Exact search (FAISS
    inner product) over every item, from up to ``max_queries`` items chosen with ``seed``."""
    import faiss

    n = len(vectors)
    if n <= k:
        return float("nan"), 0
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    queries = np.arange(n) if n <= max_queries else np.sort(np.random.default_rng(seed).choice(n, max_queries,
                                                                                               replace=False))
    seen = np.zeros(n, bool)
    for start in range(0, len(queries), 4096):
        block = queries[start:start + 4096]
        _, found = index.search(vectors[block], k + 1)
        for row, query in zip(found, block):
            seen[[j for j in row if j >= 0 and j != query][:k]] = True
    return float(seen.mean()), len(queries)
