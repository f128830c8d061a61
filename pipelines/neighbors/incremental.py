"""Neighbour lists kept current from what changed, equal to a full rebuild.

Each item keeps a list with a margin: up to ``L = k + m`` neighbours in canonical order (score
descending, then position ascending: positions follow item ids, so a tie is ordered by id), and a
*bar*: every candidate that is not in the list scores at most the bar. The entries scoring above
the bar are *certain*: they are exactly the candidates above it, in the order a full search gives
them. An item's top-k is certain when at least k entries are (or when the list saw every
candidate: bar = -inf).

:func:`update_lists` brings yesterday's lists to today's vectors:

1. an unchanged item keeps its list, less the entries that were removed or changed (their scores
   are stale; a changed item comes back through step 2 with its new vector);
2. the added and changed items that are candidates (``fresh``) form an index, and every unchanged
   item searches it for its top r: the r-th score raises the item's bar when there are more fresh
   items than r (what was not returned scores less), and the fresh entries above the bar are
   merged into the list (the reverse search);
3. every fresh item, and every unchanged item left with fewer than k certain entries (its margin
   ran out), is searched against the whole catalogue (:func:`full_lists`).

With exact search the result equals :func:`full_lists` of every item on the same vectors: same
neighbours, same order (``tests/neighbors/test_incremental.py``, hypothesis). With an approximate
index for step 3 the lists are as good as the index (recall measured against exact search).
Filters (same seller, same photo; a category rule by searching each category as its own group)
hold exactly as in the full search, through the same :class:`~pipelines.neighbors.search.Exclusions`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipelines import faults
from pipelines.neighbors import search
from pipelines.neighbors.search import (NO_POS, Exclusions, FlatSearcher, Lists, Searcher, _keep, canonical,
                                        full_lists, higher_bar)

def update_lists(vectors: np.ndarray, candidates: np.ndarray, queries: np.ndarray, previous: Lists,
                 fresh: np.ndarray, *, k: int, searcher: Searcher | Callable[[], Searcher],
                 exclusions: Exclusions | None = None, block: int = 16_384,
                 reverse_for: Callable[[np.ndarray], Searcher] | None = None) -> tuple[Lists, dict]:
    """Today's lists of ``queries`` from yesterday's (``previous``, one row per query, positions already
    in today's numbering, -1 where the neighbour left the catalogue).

    ``candidates``: positions that may be neighbours; ``fresh`` (N,) bool: added or changed today
    (vector, filter codes or sale status); ``searcher``: today's search over every candidate (exact
    for exact results), or a function that builds it, called only when some list needs it;
    ``reverse_for(fresh candidates)`` builds the reverse search's index (default: exact search).
    Returns (lists, counts of what was done)."""
    exclusions = exclusions or Exclusions()
    length = previous.length
    is_candidate = np.zeros(len(vectors), dtype=bool)
    is_candidate[candidates] = True
    new = candidates[fresh[candidates]]  # the reverse search's index
    stay = np.flatnonzero(~fresh[queries])  # rows whose own vector is yesterday's
    out = Lists.empty(len(queries), length)
    reverse = (reverse_for or (lambda fresh_ones: FlatSearcher(vectors, fresh_ones)))(new) if len(new) else None
    r = min(length + search.EXTRA, len(new))
    for start in range(0, len(stay), block):
        rows = stay[start:start + block]
        old = previous.take(rows)
        safe = np.clip(old.pos, 0, None)
        kept = (old.pos >= 0) & ~fresh[safe] & is_candidate[safe]  # stale: removed, changed, off sale
        pos, scores, bar, bar_pos = np.where(kept, old.pos, -1), old.scores, old.bar, old.bar_pos
        if reverse is not None:
            s, p = reverse.search(vectors[queries[rows]], r)
            if r < len(new):  # fresh items not returned score at most the r-th: nothing at its score is known
                bar, bar_pos = higher_bar(bar, bar_pos, np.where(p[:, r - 1] >= 0, s[:, r - 1], -np.inf),
                                          np.full(len(rows), NO_POS, np.int64))
            valid = _keep(p, queries[rows], exclusions)
            pos, scores = np.hstack([pos, np.where(valid, p, -1)]), np.hstack([scores, s])
        # no entry twice: the kept entries are all unchanged items, the reverse search returns fresh ones
        out.put(rows, canonical(scores, pos, length, bar, bar_pos))
        faults.point("neighbors.mid_update")
    again = np.flatnonzero(fresh[queries])
    ran_out = stay[out.take(stay).certain() < _reachable(out.take(stay), k)]
    todo = np.concatenate([again, ran_out])
    if len(todo):
        searcher = searcher() if callable(searcher) else searcher
        out.put(todo, full_lists(searcher, vectors, queries[todo], n_candidates=len(candidates), k=k, length=length,
                                 exclusions=exclusions))
    return out, {"kept": int(len(stay) - len(ran_out)), "fresh": int(len(again)), "ran_out": int(len(ran_out)),
                 "fresh_candidates": int(len(new))}


def _reachable(lists: Lists, k: int) -> np.ndarray:
    """k, or fewer where the list saw every candidate (bar -inf) and holds fewer valid entries."""
    complete = np.isneginf(lists.bar)
    held = (lists.pos >= 0).sum(axis=1)
    return np.where(complete, np.minimum(k, held), k)
