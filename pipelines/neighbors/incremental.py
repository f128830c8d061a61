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
hold exactly as in the full search, through the same :class:`~lookalike.neighbors.search.Exclusions`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from lookalike import faults
from lookalike.neighbors import search
from lookalike.neighbors.search import (NO_POS, Exclusions, FlatSearcher, Lists, Searcher, _keep, _sort_key,
                                        canonical, full_lists, higher_bar)

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # (row, neighbour position, score), one entry each


def update_lists(vectors: np.ndarray, candidates: np.ndarray, queries: np.ndarray, previous: Lists,
                 fresh: np.ndarray, *, k: int, searcher: Searcher | Callable[[], Searcher],
                 exclusions: Exclusions | None = None, block: int = 16_384,
                 reverse_for: Callable[[np.ndarray], Searcher] | None = None,
                 from_fresh: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None = None,
                 ) -> tuple[Lists, dict]:
    """Today's lists of ``queries`` from yesterday's (``previous``, one row per query, positions already
    in today's numbering, -1 where the neighbour left the catalogue). ``previous`` is updated in place
    and returned.

    ``candidates``: positions that may be neighbours; ``fresh`` (N,) bool: added or changed today
    (vector, filter codes or sale status); ``searcher``: today's search over every candidate (exact
    for exact results), or a function that builds it, called only when some list needs it.

    The reverse search, by default, has every unchanged query search the fresh candidates
    (``reverse_for(fresh candidates)`` builds that index; exact search when not given). With an
    approximate index over every candidate, ``from_fresh(fresh candidates, depth)`` turns it round:
    each fresh candidate searches that index for its nearest ``depth`` items, and joins those lists it
    beats. Its cost follows the change, not the catalogue; the queries that are not candidates (not in
    that index) still search the fresh ones.
    Returns (lists, counts of what was done)."""
    exclusions = exclusions or Exclusions()
    lists, length = previous, previous.length
    is_candidate = np.zeros(len(vectors), dtype=bool)
    is_candidate[candidates] = True
    new = candidates[fresh[candidates]]  # the reverse search's index
    stay = ~fresh[queries]  # rows whose own vector is yesterday's
    dropped = np.zeros(len(queries), dtype=bool)  # rows that lost entries: to be re-sorted
    touched = np.zeros(len(queries), dtype=bool)  # rows whose entries changed (re-sorted)
    raised = np.zeros(len(queries), dtype=bool)  # rows whose bar rose

    def merge(pairs: list[Pairs], rows: np.ndarray) -> None:  # the rows' dropped entries and the pairs
        changed, rose = _join(lists, pairs, length, also=rows[dropped[rows] & stay[rows] & ~touched[rows]])
        touched[changed], raised[rose] = True, True

    for start in range(0, len(queries), block):  # stale entries out: removed, changed, off sale
        rows = slice(start, start + block)
        pos, scores = lists.pos[rows], lists.scores[rows]
        safe = np.clip(pos, 0, None)
        stale = (pos >= 0) & (~is_candidate[safe] | fresh[safe])
        stale |= (pos < 0) & (scores > -np.inf)  # left the catalogue (no position tonight)
        pos[stale], scores[stale] = -1, -np.inf
        dropped[rows] = stale.any(axis=1)
    if len(new):
        by_query = np.flatnonzero(stay)
        if from_fresh is not None:
            by_query = by_query[~is_candidate[queries[by_query]]]
        reverse = (reverse_for or (lambda fresh_ones: FlatSearcher(vectors, fresh_ones)))(new) if len(by_query) \
            else None
        r = min(length + search.EXTRA, len(new))
        for start in range(0, len(by_query), block):
            rows = by_query[start:start + block]
            s, p = reverse.search(vectors[queries[rows]], r)
            if r < len(new):  # fresh items not returned score at most the r-th: nothing at its score is known
                lists.bar[rows], lists.bar_pos[rows] = higher_bar(
                    lists.bar[rows], lists.bar_pos[rows], np.where(p[:, r - 1] >= 0, s[:, r - 1], -np.inf),
                    np.full(len(rows), NO_POS, np.int64))
                raised[rows] = True
            p = np.where(_keep(p, queries[rows], exclusions), p, -1)
            enters = _ranks_above(s, p, lists.scores[rows, -1], lists.pos[rows, -1])
            _raise_bars(lists, rows, np.where(enters, -1, p), s)  # what cannot enter only raises the bar
            raised[rows] = True
            hit = enters.any(axis=1)
            merge([(np.repeat(rows[hit], r), np.where(enters[hit], p[hit], -1).ravel(), s[hit].ravel())], rows)
            faults.point("neighbors.mid_update")
        if from_fresh is not None:  # a block of fresh items at a time: memory holds one block's pairs
            row_of = np.full(len(vectors), -1, np.int64)
            row_of[queries] = np.arange(len(queries))
            for start in range(0, len(new), block):
                merge([_pairs_from_fresh(from_fresh, new[start:start + block], row_of, queries, stay, exclusions,
                                         length)], np.zeros(0, np.int64))
                faults.point("neighbors.mid_update")
    merge([], np.flatnonzero(dropped))
    faults.point("neighbors.mid_update")
    again = np.flatnonzero(~stay)
    check = np.flatnonzero(stay & (touched | raised | np.isneginf(lists.bar)))
    sub = lists.take(check)
    ran_out = check[sub.certain() < _reachable(sub, k)]
    todo = np.concatenate([again, ran_out])
    if len(todo):
        searcher = searcher() if callable(searcher) else searcher
        lists.put(todo, full_lists(searcher, vectors, queries[todo], n_candidates=len(candidates), k=k,
                                   length=length, exclusions=exclusions))
    return lists, {"kept": int(stay.sum() - len(ran_out)), "fresh": int(len(again)), "ran_out": int(len(ran_out)),
                   "fresh_candidates": int(len(new)), "touched": int((touched & stay).sum())}


def _pairs_from_fresh(from_fresh, new: np.ndarray, row_of: np.ndarray, queries: np.ndarray, stay: np.ndarray,
                      exclusions: Exclusions, length: int) -> Pairs:
    """(row, fresh position, score) for each unchanged query among the nearest items of a fresh candidate
    (``row_of``: each position's row among the queries, or -1): the reverse search from the fresh side (a
    score is symmetric)."""
    s, p = from_fresh(new, REVERSE_DEPTH * length)
    rows = np.where(p >= 0, row_of[np.clip(p, 0, None)], -1)
    fresh_pos = np.broadcast_to(new[:, None], p.shape)
    hit = rows >= 0
    hit[hit] = stay[rows[hit]]
    rows, fresh_pos, s = rows[hit], fresh_pos[hit], s[hit]
    valid = _keep(fresh_pos[:, None], queries[rows], exclusions)[:, 0]
    return rows[valid], fresh_pos[valid], s[valid]


REVERSE_DEPTH = 6  # a fresh item's reverse search reaches its 6 x L nearest items (L: the list length)


def _join(lists: Lists, pairs: list[Pairs], length: int, also: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge the (row, position, score) entries into their rows in canonical order, in place, and re-sort
    the rows ``also`` (entries were dropped). An entry ranking below a full row's last one
    cannot enter it: it only raises that row's bar. Returns (rows re-sorted, rows whose bar alone rose)."""
    rows, pos, scores = (np.concatenate([p[i] for p in pairs]) if pairs else np.zeros(0) for i in range(3))
    useful = pos >= 0
    rows, pos, scores = rows[useful].astype(np.int64), pos[useful].astype(np.int64), \
        scores[useful].astype(np.float32)
    order = np.lexsort((_sort_key(scores, pos), rows))  # by row, then canonically
    rows, pos, scores = rows[order], pos[order], scores[order]
    last_pos, last_score = lists.pos[rows, -1], lists.scores[rows, -1]
    enters = (last_pos < 0) | (scores > last_score) | ((scores == last_score) & (pos < last_pos))
    below = np.flatnonzero(~enters)
    at = np.zeros(0, np.int64)
    if len(below):  # the best entry of each row that none enters; rows it enters raise their bar in canonical
        first = below[np.unique(rows[below], return_index=True)[1]]
        at = rows[first]
        lists.bar[at], lists.bar_pos[at] = higher_bar(lists.bar[at], lists.bar_pos[at], scores[first], pos[first])
    rows, pos, scores = rows[enters], pos[enters], scores[enters]
    target = np.union1d(rows, also)
    if not len(target):
        return target, at
    starts = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - starts
    width = min(length + 1, int(rank.max()) + 1) if len(rows) else 0  # the first cut entry raises the bar
    keep = rank < width
    add_pos = np.full((len(target), width), -1, np.int64)
    add_scores = np.full((len(target), width), -np.inf, np.float32)
    at = np.searchsorted(target, rows[keep])
    add_pos[at, rank[keep]], add_scores[at, rank[keep]] = pos[keep], scores[keep]
    old = lists.take(target)
    lists.put(target, canonical(np.hstack([old.scores, add_scores]), np.hstack([old.pos, add_pos]), length,
                                old.bar, old.bar_pos))
    return target, at


def _ranks_above(scores: np.ndarray, pos: np.ndarray, last_score: np.ndarray, last_pos: np.ndarray) -> np.ndarray:
    """(B, R) bool: the entries (valid ones, pos >= 0) that rank above their row's last entry in canonical
    order, or any valid entry where the row is not full (its last entry empty)."""
    return (pos >= 0) & ((last_pos[:, None] < 0) | (scores > last_score[:, None]) |
                         ((scores == last_score[:, None]) & (pos < last_pos[:, None])))


def _raise_bars(lists: Lists, rows: np.ndarray, pos: np.ndarray, scores: np.ndarray) -> None:
    """Raise each row's bar to its best valid entry (pos >= 0) in canonical order, in place."""
    key = np.where(pos >= 0, _sort_key(scores, pos), np.iinfo(np.uint64).max)
    best = np.argmin(key, axis=1)
    has = pos[np.arange(len(rows)), best] >= 0
    at, pick = rows[has], best[has]
    lists.bar[at], lists.bar_pos[at] = higher_bar(lists.bar[at], lists.bar_pos[at],
                                                  scores[has, pick], pos[has, pick])


def _reachable(lists: Lists, k: int) -> np.ndarray:
    """k, or fewer where the list saw every candidate (bar -inf) and holds fewer valid entries."""
    complete = np.isneginf(lists.bar)
    held = (lists.pos >= 0).sum(axis=1)
    return np.where(complete, np.minimum(k, held), k)
