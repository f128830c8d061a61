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

from dataclasses import dataclass

import numpy as np

from pipelines import faults
from pipelines.neighbors.search import Exclusions, FlatSearcher, Searcher, _keep

EXTRA = 8  # candidates fetched beyond the list length, so that a few filtered ones cost no second search


@dataclass
class Lists:
    """Every query item's list: positions (N, L) into the vectors (-1: empty), scores (N, L) float32
    (-inf: empty), bar (N,) float32 (every candidate not in the row scores <= bar)."""
    pos: np.ndarray
    scores: np.ndarray
    bar: np.ndarray

    @property
    def length(self) -> int:
        return self.pos.shape[1]

    def certain(self) -> np.ndarray:
        """(N,) the number of entries above the bar: the list's exactly known prefix."""
        return ((self.pos >= 0) & (self.scores > self.bar[:, None])).sum(axis=1)

    def top_k(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions (N, k), scores (N, k)): the certain top-k of each list; -1 / NaN beyond what is certain."""
        pos, scores = self.pos[:, :k].copy(), self.scores[:, :k].astype(np.float32)
        known = np.arange(k)[None, :] < self.certain()[:, None]
        return np.where(known, pos, -1), np.where(known, scores, np.nan).astype(np.float32)

    @classmethod
    def empty(cls, n: int, length: int) -> "Lists":
        return cls(np.full((n, length), -1, np.int64), np.full((n, length), -np.inf, np.float32),
                   np.full(n, np.inf, np.float32))

    def take(self, rows: np.ndarray) -> "Lists":
        return Lists(self.pos[rows], self.scores[rows], self.bar[rows])

    def put(self, rows: np.ndarray, other: "Lists") -> None:
        self.pos[rows], self.scores[rows], self.bar[rows] = other.pos, other.scores, other.bar


def canonical(scores: np.ndarray, pos: np.ndarray, length: int, bar: np.ndarray) -> Lists:
    """The first ``length`` entries of each row in canonical order, and the row's bar raised past what
    was cut: (score descending, position ascending), empty entries (-1) last."""
    scores = np.where(pos >= 0, scores, -np.inf).astype(np.float32)
    order = np.lexsort((np.where(pos >= 0, pos, np.iinfo(np.int64).max), -scores.astype(np.float64)), axis=1)
    scores, pos = np.take_along_axis(scores, order, 1), np.take_along_axis(pos, order, 1)
    bar = bar.astype(np.float32).copy()
    if scores.shape[1] > length:
        cut = scores[:, length]
        bar = np.maximum(bar, np.where(pos[:, length] >= 0, cut, -np.inf)).astype(np.float32)
        scores, pos = scores[:, :length], pos[:, :length]
    elif scores.shape[1] < length:
        pad = length - scores.shape[1]
        scores = np.hstack([scores, np.full((len(scores), pad), -np.inf, np.float32)])
        pos = np.hstack([pos, np.full((len(pos), pad), -1, np.int64)])
    return Lists(pos, scores, bar)


def _dedupe(pos: np.ndarray) -> np.ndarray:
    """``pos`` with a repeated position in a row replaced by -1 (its first occurrence kept)."""
    order = np.argsort(pos, axis=1, kind="stable")
    sorted_pos = np.take_along_axis(pos, order, 1)
    repeat = np.zeros_like(pos, dtype=bool)
    repeat[:, 1:] = (sorted_pos[:, 1:] == sorted_pos[:, :-1]) & (sorted_pos[:, 1:] >= 0)
    out = pos.copy()
    np.put_along_axis(out, order, np.where(repeat, -1, sorted_pos), 1)
    return out


def full_lists(searcher: Searcher, vectors: np.ndarray, queries: np.ndarray, *, n_candidates: int, k: int,
               length: int, exclusions: Exclusions | None = None) -> Lists:
    """Each query's list of ``length`` searched against every candidate of ``searcher``; a row with fewer
    than k certain entries is searched again with a doubled depth until it has k or saw everything."""
    exclusions = exclusions or Exclusions()
    out = Lists.empty(len(queries), length)
    todo, depth = np.arange(len(queries)), min(length + 1 + EXTRA, n_candidates)
    while len(todo):
        s, p = searcher.search(vectors[queries[todo]], depth)
        bar = s[:, depth - 1] if depth < n_candidates else np.full(len(todo), -np.inf, np.float32)
        bar = np.where(p[:, depth - 1] >= 0, bar, -np.inf) if depth < n_candidates else bar
        valid = _keep(p, queries[todo], exclusions)
        rows = canonical(s, np.where(valid, p, -1), length, bar)
        out.put(todo, rows)
        short = rows.certain() < k
        if depth >= n_candidates or not short.any():
            break
        todo, depth = todo[short], min(depth * 2, n_candidates)
    return out


def update_lists(vectors: np.ndarray, candidates: np.ndarray, queries: np.ndarray, previous: Lists,
                 fresh: np.ndarray, *, k: int, searcher: Searcher, exclusions: Exclusions | None = None,
                 block: int = 16_384) -> tuple[Lists, dict]:
    """Today's lists of ``queries`` from yesterday's (``previous``, one row per query, positions already
    in today's numbering, -1 where the neighbour left the catalogue).

    ``candidates``: positions that may be neighbours; ``fresh`` (N,) bool: added or changed today
    (vector, filter codes or sale status); ``searcher``: today's search over every candidate (exact
    for exact results). Returns (lists, counts of what was done)."""
    exclusions = exclusions or Exclusions()
    length = previous.length
    is_candidate = np.zeros(len(vectors), dtype=bool)
    is_candidate[candidates] = True
    new = candidates[fresh[candidates]]  # the reverse search's index
    stay = np.flatnonzero(~fresh[queries])  # rows whose own vector is yesterday's
    out = Lists.empty(len(queries), length)
    reverse = FlatSearcher(vectors, new) if len(new) else None
    r = min(length + EXTRA, len(new))
    for start in range(0, len(stay), block):
        rows = stay[start:start + block]
        old = previous.take(rows)
        safe = np.clip(old.pos, 0, None)
        kept = (old.pos >= 0) & ~fresh[safe] & is_candidate[safe]  # stale: removed, changed, off sale
        pos, scores, bar = np.where(kept, old.pos, -1), old.scores, old.bar
        if reverse is not None:
            s, p = reverse.search(vectors[queries[rows]], r)
            if r < len(new):
                bar = np.maximum(bar, np.where(p[:, r - 1] >= 0, s[:, r - 1], -np.inf))
            valid = _keep(p, queries[rows], exclusions)
            pos, scores = np.hstack([pos, np.where(valid, p, -1)]), np.hstack([scores, s])
        out.put(rows, canonical(scores, _dedupe(pos), length, bar))
        faults.point("neighbors.mid_update")
    again = np.flatnonzero(fresh[queries])
    ran_out = stay[out.take(stay).certain() < _reachable(out.take(stay), k)]
    todo = np.concatenate([again, ran_out])
    if len(todo):
        out.put(todo, full_lists(searcher, vectors, queries[todo], n_candidates=len(candidates), k=k, length=length,
                                 exclusions=exclusions))
    return out, {"kept": int(len(stay) - len(ran_out)), "fresh": int(len(again)), "ran_out": int(len(ran_out)),
                 "fresh_candidates": int(len(new))}


def _reachable(lists: Lists, k: int) -> np.ndarray:
    """k, or fewer where the list saw every candidate (bar -inf) and holds fewer valid entries."""
    complete = ~np.isfinite(lists.bar) & (lists.bar < 0)
    held = (lists.pos >= 0).sum(axis=1)
    return np.where(complete, np.minimum(k, held), k)
