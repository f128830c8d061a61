"""Quality checks a partition must pass before it is published. Each returns a list of failures."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCORE_TOLERANCE = 1e-4  # float32 dot products of unit vectors can exceed 1 by rounding


def check_neighbors(table: pa.Table, *, k: int, active_ids: set[str], embedded_ids: set[str]) -> list[str]:
    """k rows per item, ranks 1..k in order, descending scores in [-1, 1], no self or inactive neighbour."""
    failures = []
    if table.num_rows == 0:
        return ["item_neighbors is empty"]
    if table.num_rows % k:
        failures.append(f"{table.num_rows} rows is not a multiple of k={k}")
    t = table.sort_by([("item_id", "ascending"), ("rank", "ascending")])
    items = np.array(t.column("item_id").to_pylist(), dtype=object)
    ranks = t.column("rank").to_numpy()
    scores = t.column("score").to_numpy()
    nbrs = np.array(t.column("neighbor_id").to_pylist(), dtype=object)
    _, counts = np.unique(items, return_counts=True)
    if (counts != k).any():
        failures.append(f"{int((counts != k).sum())} items do not have exactly k={k} neighbours")
    elif (ranks.reshape(-1, k) != np.arange(1, k + 1)).any():
        failures.append("ranks are not 1..k for every item")
    else:
        if (np.diff(scores.reshape(-1, k), axis=1) > SCORE_TOLERANCE).any():
            failures.append("scores are not descending by rank")
    if (items == nbrs).any():
        failures.append(f"{int((items == nbrs).sum())} items list themselves as a neighbour")
    inactive = {n for n in set(nbrs) if n not in active_ids}
    if inactive:
        failures.append(f"{len(inactive)} neighbours are not on sale, e.g. {sorted(inactive)[:3]}")
    if not np.isfinite(scores).all() or (np.abs(scores) > 1 + SCORE_TOLERANCE).any():
        failures.append("scores outside [-1, 1] or not finite")
    unknown = set(items) - embedded_ids
    if unknown:
        failures.append(f"{len(unknown)} items have neighbours but no embedding")
    return failures


def check_embeddings(table: pa.Table) -> list[str]:
    failures = []
    if table.num_rows == 0:
        return ["item_embeddings is empty"]
    if pc.count_distinct(table.column("item_id")).as_py() != table.num_rows:
        failures.append("duplicate item_id in item_embeddings")
    flat = table.column("embedding").combine_chunks()
    lengths = pc.list_value_length(flat).to_numpy()
    if len(set(lengths.tolist())) != 1:
        failures.append("embeddings have different dimensions")
    else:
        vectors = flat.values.to_numpy(zero_copy_only=False).reshape(len(lengths), -1)
        norms = np.linalg.norm(vectors, axis=1)
        if not np.isfinite(vectors).all() or (np.abs(norms - 1) > 1e-3).any():
            failures.append("embeddings are not finite, L2-normalised vectors")
    return failures


def check_rows(table: pa.Table, name: str) -> list[str]:
    return [] if table.num_rows else [f"{name} is empty"]
