"""Exact inner-product top-k over L2-normalised vectors with FAISS: cosine nearest neighbours."""
from __future__ import annotations

import numpy as np


def top_k_neighbors(vectors: np.ndarray, ids: np.ndarray, k: int, *, candidate_mask: np.ndarray | None = None,
                    block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``vectors`` (N, D), its k most similar candidates.

    Candidates are the rows where ``candidate_mask`` is true (default: all). The query item is
    removed from its own list by id, not by position, so an identical vector under another id
    still counts as a neighbour and ties cannot drop the wrong row. Returns (neighbour ids
    (N, k) object, scores (N, k) float32), scores descending; rows with fewer than k candidates
    are padded with None / NaN.
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if candidate_mask is None:
        candidate_mask = np.ones(len(vectors), dtype=bool)
    cand_idx = np.flatnonzero(candidate_mask)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors[cand_idx])
    cand_ids = ids[cand_idx]
    n = len(vectors)
    search_k = min(k + 1, len(cand_idx))
    out_ids = np.full((n, k), None, dtype=object)
    out_scores = np.full((n, k), np.nan, dtype=np.float32)
    for start in range(0, n, block):  # memory: one block of (block, k+1) results at a time
        scores, pos = index.search(vectors[start:start + block], search_k)
        for row in range(len(pos)):
            own = ids[start + row]
            kept = [(cand_ids[p], s) for p, s in zip(pos[row], scores[row]) if p >= 0 and cand_ids[p] != own][:k]
            for j, (nid, s) in enumerate(kept):
                out_ids[start + row, j] = nid
                out_scores[start + row, j] = s
    return out_ids, out_scores
