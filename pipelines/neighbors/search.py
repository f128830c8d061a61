"""Top-k cosine neighbours for every item, at catalogue scale.

Vectors are L2-normalised, so cosine similarity is the inner product. The index is chosen by
the number of candidates and the memory budget (:func:`plan_index`):

- ``flat``   exact search (``faiss.knn`` over candidate chunks, no copy of the vectors);
- ``ivf``    an inverted file of full vectors (memory: one more copy of the candidates);
- ``ivfpq``  an inverted file of product-quantised codes (when two copies do not fit the budget);
- ``hnsw``   a graph index (asked for by name: it builds slowly on few cores);
- ``torch``  exact search with torch matrix products on a CUDA device (the GPU path).

An approximate index's search knob (``nprobe`` or ``efSearch``) is raised step by step until
recall@k against exact search on a sample of queries reaches the target; the sample's recall is
returned and recorded with the run. Where the index cannot reach the target, or reaches it no
faster than exact search (data without cluster structure), exact search is used instead. Every item is then searched in blocks, and each block's
rows are filtered (self by position, optionally the same seller or the same photo), put in
canonical order (score descending, then item order, so ties are ordered by item id) and handed
to the caller before the next block is searched, so memory holds the vectors, the index and
one block of results. A row that filtering left short is searched again with a deeper list.
Each list may keep a margin beyond k with a bar (:class:`Lists`), from which
:mod:`lookalike.neighbors.incremental` updates it the next night.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from lookalike.config import CHOICES
from lookalike.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = CHOICES["neighbors.index"]
CANDIDATE_CHUNK = 131_072  # rows of candidates per exact-search pass (bounds the score buffers)
MIN_SPEEDUP = 1.5  # an approximate index must beat exact search by this much on the tuning sample


@dataclass(frozen=True)
class Plan:
    kind: str
    nlist: int = 0  # inverted lists (ivf, ivfpq)
    pq_m: int = 0  # sub-quantisers (ivfpq)
    reason: str = ""

    @property
    def exact(self) -> bool:
        return self.kind in ("flat", "torch")


def plan_index(n: int, dim: int, *, kind: str = "auto", exact_max_items: int = 50_000,
               memory_budget_mb: int = 0, cuda: bool = False) -> Plan:
    """Which index to search ``n`` candidates of ``dim`` dimensions with."""
    if kind not in KINDS:
        raise ConfigError(f"neighbors.index must be one of {', '.join(KINDS)}; got {kind!r}")
    raw_mb = n * dim * 4 / 2**20
    nlist = int(min(max(16, 4 * math.sqrt(n)), max(1, n // 39)))  # FAISS wants >= 39 training rows per list
    pq_m = next(m for m in (dim // 4, dim // 8, dim // 16, 1) if m >= 1 and dim % m == 0)
    if kind == "auto":
        if cuda:
            return Plan("torch", reason="a CUDA device is present: exact search on the GPU")
        if n <= exact_max_items:
            return Plan("flat", reason=f"{n:,} candidates <= neighbors.exact_max_items ({exact_max_items:,})")
        if memory_budget_mb and 2 * raw_mb > memory_budget_mb:
            return Plan("ivfpq", nlist=nlist, pq_m=pq_m,
                        reason=f"two copies of the vectors ({2 * raw_mb:,.0f} MB) exceed neighbors.memory_budget_mb")
        return Plan("ivf", nlist=nlist, reason=f"{n:,} candidates > neighbors.exact_max_items ({exact_max_items:,})")
    return Plan(kind, nlist=nlist if kind in ("ivf", "ivfpq") else 0, pq_m=pq_m if kind == "ivfpq" else 0,
                reason="neighbors.index")


# ---------------------------------------------------------------- searchers

def _merge_top(scores: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row, descending (positions -1 sort last)."""
    scores = np.where(pos >= 0, scores, -np.inf)
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, pos = np.take_along_axis(scores, part, 1), np.take_along_axis(pos, part, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(pos, order, 1)


class Searcher:
    """search(queries, k) → (scores (B, k) float32 descending, positions (B, k) int64 into the full
    vector array, -1 where there are fewer than k candidates)."""

    knob: str | None = None
    knob_values: tuple[int, ...] = ()

    def set_knob(self, value: int) -> None:  # pragma: no cover - exact searchers have no knob
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class FlatSearcher(Searcher):
    """Exact search: FAISS's blocked inner-product k-NN over chunks of the candidates."""

    def __init__(self, vectors: np.ndarray, candidates: np.ndarray, chunk: int = CANDIDATE_CHUNK):
        self.vectors, self.candidates, self.chunk = vectors, candidates, chunk
        self._contiguous = bool(len(candidates)) and candidates[0] == 0 and candidates[-1] == len(candidates) - 1 \
            and len(candidates) == len(vectors)

    def search(self, queries, k):
        import faiss

        best_s = np.full((len(queries), 0), -np.inf, np.float32)
        best_p = np.full((len(queries), 0), -1, np.int64)
        for start in range(0, len(self.candidates), self.chunk):
            chunk = self.candidates[start:start + self.chunk]
            base = self.vectors[start:start + len(chunk)] if self._contiguous else self.vectors[chunk]
            kk = min(k, len(chunk))
            s, p = faiss.knn(queries, base, kk, metric=faiss.METRIC_INNER_PRODUCT)
            p = np.where(p >= 0, chunk[np.clip(p, 0, None)], -1)
            best_s, best_p = _merge_top(np.hstack([best_s, s]), np.hstack([best_p, p]), min(k, best_s.shape[1] + kk))
        return _pad(best_s, best_p, k)


class TorchSearcher(Searcher):
    """Exact search with torch matrix products: the GPU path (also runs on CPU, for tests)."""

    def __init__(self, vectors: np.ndarray, candidates: np.ndarray, device: str):
        import torch

        self.torch, self.device = torch, torch.device(device)
        self.candidates = torch.from_numpy(candidates).to(self.device)
        self.base = torch.from_numpy(vectors[candidates]).to(self.device)

    def search(self, queries, k):
        torch = self.torch
        q = torch.from_numpy(np.ascontiguousarray(queries)).to(self.device)
        best_s = torch.empty((len(q), 0), device=self.device)
        best_p = torch.empty((len(q), 0), dtype=torch.long, device=self.device)
        for start in range(0, len(self.base), CANDIDATE_CHUNK):
            s = q @ self.base[start:start + CANDIDATE_CHUNK].T
            s, p = torch.topk(s, min(k, s.shape[1]), dim=1)
            best_s, p_all = torch.cat([best_s, s], 1), torch.cat([best_p, p + start], 1)
            best_s, top = torch.topk(best_s, min(k, best_s.shape[1]), dim=1)
            best_p = torch.gather(p_all, 1, top)
        pos = self.candidates[best_p]
        return _pad(best_s.float().cpu().numpy(), pos.cpu().numpy(), k)


class FaissIndexSearcher(Searcher):
    """An approximate FAISS index whose ids are positions in the full vector array."""

    def __init__(self, index, knob: str, values: tuple[int, ...], positions: np.ndarray | None = None):
        self.index, self.knob, self.knob_values, self.positions = index, knob, values, positions

    def set_knob(self, value: int) -> None:
        if self.knob == "nprobe":
            self.index.nprobe = value
        else:
            self.index.hnsw.efSearch = value

    def search(self, queries, k):
        if self.knob == "efSearch":  # a list of k needs efSearch >= k, for this search only
            import faiss

            params = faiss.SearchParametersHNSW(efSearch=max(self.index.hnsw.efSearch, k))
            s, p = self.index.search(queries, k, params=params)
        else:
            s, p = self.index.search(queries, k)
        if self.positions is not None:  # HNSW numbers its rows itself
            p = np.where(p >= 0, self.positions[np.clip(p, 0, None)], -1)
        return s, p


class KeyedSearcher(Searcher):
    """A FAISS index whose ids are stable item keys (:func:`item_keys`), not positions: it outlives the
    night it was built on (removals and additions by key); its results are mapped to today's positions
    (-1 for a key that is not among today's items)."""

    def __init__(self, index, keys: np.ndarray, knob: str, value: int):
        self.index, self.knob, self.keys = index, knob, keys
        self.order = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.order]
        self.set_knob(value)

    def set_knob(self, value: int) -> None:
        self.index.nprobe = value

    def search(self, queries, k):
        s, ids = self.index.search(queries, k)
        at = np.clip(np.searchsorted(self.sorted_keys, ids), 0, len(self.sorted_keys) - 1)
        found = (ids >= 0) & (self.sorted_keys[at] == ids)
        return s, np.where(found, self.order[at], -1)


KEY_SCHEME = "fnv1a64"  # recorded with a kept index: keys of another scheme are not carried forward


def item_keys(ids) -> np.ndarray:
    """A stable 63-bit key per item id: 64-bit FNV-1a over its UTF-8 bytes, top bit cleared (the ids of
    a kept FAISS index). Computed a byte column at a time over every id together, not an id at a time."""
    import pyarrow as pa

    ids = (ids if isinstance(ids, pa.Array) else pa.array(ids)).cast(pa.large_string())
    offsets = np.frombuffer(ids.buffers()[1], np.int64)[ids.offset:ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8) if ids.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: the ids still being read are a prefix
    starts, lengths = offsets[order], lengths[order]
    h = np.full(len(ids), 0xCBF29CE484222325, np.uint64)
    for j in range(int(lengths[0]) if len(ids) else 0):
        live = int(np.searchsorted(-lengths, -j, side="left"))  # ids longer than j
        h[:live] = (h[:live] ^ data[starts[:live] + j]) * np.uint64(0x100000001B3)
    keys = np.empty(len(ids), np.int64)
    keys[order] = (h >> np.uint64(1)).astype(np.int64)
    return keys


def rekey(index, keys: np.ndarray) -> None:
    """Replace the ids of an inverted-file index built with positions by ``keys[position]``, in place."""
    import faiss

    invlists = faiss.extract_index_ivf(index).invlists
    for list_no in range(invlists.nlist):
        size = invlists.list_size(list_no)
        if size:
            ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
            ids[:] = keys[ids]


def _pad(s: np.ndarray, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if s.shape[1] < k:
        s = np.hstack([s, np.full((len(s), k - s.shape[1]), -np.inf, np.float32)])
        p = np.hstack([p, np.full((len(p), k - p.shape[1]), -1, np.int64)])
    return s.astype(np.float32, copy=False), p.astype(np.int64, copy=False)


def knob_grid(low: int, high: int) -> tuple[int, ...]:
    """Settings tried in turn, in steps of about √2 (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, …), ending at
    ``high``: fine enough that the first setting reaching the target does not overshoot it by much."""
    steps = int(np.ceil(2 * np.log2(high / low))) if high > low else 0
    return tuple(sorted({min(high, int(round(low * 2 ** (i / 2)))) for i in range(steps + 1)} | {high}))


def build_searcher(vectors: np.ndarray, candidates: np.ndarray, plan: Plan, *, seed: int = 0,
                   device: str = "cpu") -> Searcher:
    """The searcher of ``plan`` over ``vectors[candidates]`` (trained and filled)."""
    if plan.kind == "flat":
        return FlatSearcher(vectors, candidates)
    if plan.kind == "torch":
        return TorchSearcher(vectors, candidates, device)
    import faiss

    dim = vectors.shape[1]
    rng = np.random.default_rng(seed)
    if plan.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        for start in range(0, len(candidates), CANDIDATE_CHUNK):
            index.add(vectors[candidates[start:start + CANDIDATE_CHUNK]])
        return FaissIndexSearcher(index, "efSearch", knob_grid(16, 1024), positions=candidates)
    quantizer = faiss.IndexFlatIP(dim)
    if plan.kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, plan.nlist, plan.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    train_rows = min(len(candidates), plan.nlist * 64)  # 64 rows per list: enough for k-means, bounded time
    sample = np.sort(rng.choice(candidates, size=train_rows, replace=False))
    index.train(vectors[sample])
    index.quantizer_trains_alone = 0
    for start in range(0, len(candidates), CANDIDATE_CHUNK):  # add in chunks: no full copy of the candidates
        chunk = candidates[start:start + CANDIDATE_CHUNK]
        index.add_with_ids(vectors[chunk], chunk.astype(np.int64))
    return FaissIndexSearcher(index, "nprobe", knob_grid(1, plan.nlist))


# ---------------------------------------------------------------- tuning

def _top_sets(pos: np.ndarray, own: np.ndarray, k: int) -> list[set]:
    return [set(row[(row >= 0) & (row != me)][:k].tolist()) for row, me in zip(pos, own)]


def recall_per_query(approx: np.ndarray, exact: np.ndarray, own: np.ndarray, k: int,
                     vectors: np.ndarray | None = None) -> np.ndarray:
    """Share of each query's exact top-k (self excluded) that the approximate top-k found. With
    ``vectors``, an approximate neighbour scoring at least the exact k-th score counts as found too:
    among copies of one photo (reposts, variants with one picture) any k are an exact answer."""
    if vectors is None:
        return np.array([len(a & e) / len(e) for a, e in zip(_top_sets(approx, own, k), _top_sets(exact, own, k))
                         if e])
    out = []
    for a_row, e_row, me in zip(approx, exact, own):
        e = e_row[(e_row >= 0) & (e_row != me)][:k]
        if not len(e):
            continue
        a = a_row[(a_row >= 0) & (a_row != me)][:k]
        q = vectors[me]
        tied = (vectors[a] @ q) >= float(vectors[e[-1]] @ q) - 1e-6
        out.append(min(len(e), int((np.isin(a, e) | tied).sum())) / len(e))
    return np.array(out)


def recall_at_k(approx: np.ndarray, exact: np.ndarray, own: np.ndarray, k: int) -> float:
    hits = recall_per_query(approx, exact, own, k)
    return float(hits.mean()) if len(hits) else 1.0


def tune(searcher: Searcher, vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int, *,
         target: float, sample: int, seed: int = 0, min_speedup: float = MIN_SPEEDUP) -> dict:
    """Raise the searcher's knob until recall@k on a sample of ``queries`` (positions) reaches ``target``.

    The knob stops where the sample's mean recall minus two standard errors reaches the target,
    so that the target holds for the whole run, not only for the sample (~97.5% one-sided). Exact
    search of the same sample is timed too: ``use_exact`` is set when the index misses the target
    at its largest setting, or reaches it no more than ``min_speedup`` times faster than exact
    search (structureless data defeats every approximate index) — exact search is then the better
    choice, and the caller switches to it.
    """
    if searcher.knob is None:
        return {"recall_at_k": 1.0, "exact": True}
    rng = np.random.default_rng(seed + 1)
    queries = np.sort(rng.choice(queries, size=min(sample, len(queries)), replace=False))
    q = vectors[queries]
    started = time.perf_counter()
    _, exact = FlatSearcher(vectors, candidates).search(q, k + 1)
    exact_seconds = time.perf_counter() - started
    trials = []
    for value in searcher.knob_values:
        searcher.set_knob(value)
        started = time.perf_counter()
        _, approx = searcher.search(q, k + 1)
        seconds = time.perf_counter() - started
        hits = recall_per_query(approx, exact, queries, k, vectors)
        mean = float(hits.mean()) if len(hits) else 1.0
        low = mean - 2 * float(hits.std(ddof=1)) / np.sqrt(len(hits)) if len(hits) > 1 else mean
        trials.append((value, round(mean, 4), round(low, 4), round(seconds, 3)))
        if low >= target or seconds * min_speedup > exact_seconds:  # reached, or already too slow to pay
            break
    value, recall, low, seconds = trials[-1]
    reached, pays = low >= target, seconds * min_speedup <= exact_seconds
    if not (reached and pays):
        log.warning("neighbors: %s at %s=%d gives recall@%d %.3f (lower bound %.3f, target %.3f) in %.2f s vs exact "
                    "%.2f s on %d queries: searching exactly instead", type(searcher).__name__, searcher.knob, value,
                    k, recall, low, target, seconds, exact_seconds, len(queries))
    return {"knob": searcher.knob, "value": value, "recall_at_k": recall, "recall_low": low,
            "sample": len(queries), "trials": [list(t) for t in trials], "exact": False,
            "sample_seconds": seconds, "exact_sample_seconds": round(exact_seconds, 3),
            "use_exact": not (reached and pays)}


# ---------------------------------------------------------------- lists with a margin

EXTRA = 8  # candidates fetched beyond the list length, so that a few filtered ones cost no second search


NO_POS = -1  # a bar's position when nothing at its score is known: only higher scores are certain


@dataclass
class Lists:
    """Every query item's list: positions (N, L) into the vectors (-1: empty) and scores (N, L) float32
    (-inf: empty) in canonical order (score descending, then position ascending), and a bar per row,
    (bar (N,) float32, bar_pos (N,) int64): every candidate not in the row ranks at or below it in that
    order. An entry ranks above the bar when its score is higher, or equal with a lower position (never
    when bar_pos is ``NO_POS``): such entries are *certain*, exactly the candidates above the bar."""
    pos: np.ndarray
    scores: np.ndarray
    bar: np.ndarray
    bar_pos: np.ndarray

    @property
    def length(self) -> int:
        return self.pos.shape[1]

    def certain(self) -> np.ndarray:
        """(N,) the number of entries above the bar: the list's exactly known prefix."""
        above = (self.scores > self.bar[:, None]) | ((self.scores == self.bar[:, None]) &
                                                     (self.pos < self.bar_pos[:, None]))
        return ((self.pos >= 0) & above).sum(axis=1)

    def top_k(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions (N, k), scores (N, k)): the certain top-k of each list; -1 / NaN beyond what is certain."""
        pos, scores = self.pos[:, :k].copy(), self.scores[:, :k].astype(np.float32)
        known = np.arange(k)[None, :] < self.certain()[:, None]
        return np.where(known, pos, -1), np.where(known, scores, np.nan).astype(np.float32)

    @classmethod
    def empty(cls, n: int, length: int) -> "Lists":
        return cls(np.full((n, length), -1, np.int64), np.full((n, length), -np.inf, np.float32),
                   np.full(n, np.inf, np.float32), np.full(n, NO_POS, np.int64))

    def take(self, rows: np.ndarray) -> "Lists":
        return Lists(self.pos[rows], self.scores[rows], self.bar[rows], self.bar_pos[rows])

    def put(self, rows: np.ndarray, other: "Lists") -> None:
        self.pos[rows], self.scores[rows] = other.pos, other.scores
        self.bar[rows], self.bar_pos[rows] = other.bar, other.bar_pos


def higher_bar(bar: np.ndarray, bar_pos: np.ndarray, other: np.ndarray,
               other_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the bar that ranks higher (the one fewer entries clear)."""
    take = (other > bar) | ((other == bar) & (other_pos < bar_pos))
    return np.where(take, other, bar).astype(np.float32), np.where(take, other_pos, bar_pos).astype(np.int64)


def _sort_key(scores: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """One uint64 per entry whose ascending order is the canonical one: the float32 score's bits made
    order-preserving and inverted (high scores first) above the position (low first; empty last)."""
    bits = np.ascontiguousarray(scores, np.float32).view(np.uint32)
    ordered = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))  # ascending like the floats
    position = np.where(pos >= 0, pos, 0xFFFFFFFF).astype(np.uint64)
    return ((~ordered).astype(np.uint64) << np.uint64(32)) | position


def canonical(scores: np.ndarray, pos: np.ndarray, length: int, bar: np.ndarray, bar_pos: np.ndarray) -> Lists:
    """The first ``length`` entries of each row in canonical order (score descending, position ascending,
    empty entries last), the row's bar raised to the first entry cut."""
    scores = np.where(pos >= 0, scores, -np.inf).astype(np.float32)
    order = np.argsort(_sort_key(scores, pos), axis=1)
    scores, pos = np.take_along_axis(scores, order, 1), np.take_along_axis(pos, order, 1)
    bar, bar_pos = bar.astype(np.float32), bar_pos.astype(np.int64)
    if scores.shape[1] > length:
        cut = pos[:, length] >= 0
        bar, bar_pos = higher_bar(bar, bar_pos, np.where(cut, scores[:, length], -np.inf),
                                  np.where(cut, pos[:, length], NO_POS))
        scores, pos = scores[:, :length], pos[:, :length]
    elif scores.shape[1] < length:
        pad = length - scores.shape[1]
        scores = np.hstack([scores, np.full((len(scores), pad), -np.inf, np.float32)])
        pos = np.hstack([pos, np.full((len(pos), pad), -1, np.int64)])
    return Lists(pos, scores, bar, bar_pos)


def full_lists(searcher: Searcher, vectors: np.ndarray, queries: np.ndarray, *, n_candidates: int, k: int,
               length: int, exclusions: Exclusions | None = None) -> Lists:
    """Each query's list of ``length`` searched against every candidate of ``searcher``; a row with fewer
    than k certain entries is searched again with a doubled depth until it has k or saw everything."""
    exclusions = exclusions or Exclusions()
    out = Lists.empty(len(queries), length)
    todo, depth = np.arange(len(queries)), min(length + 1 + EXTRA, n_candidates)
    while len(todo):
        s, p = searcher.search(vectors[queries[todo]], depth)
        seen_all = depth >= n_candidates
        bar = np.where(p[:, depth - 1] >= 0, s[:, depth - 1], -np.inf) if not seen_all else \
            np.full(len(todo), -np.inf, np.float32)
        valid = _keep(p, queries[todo], exclusions)
        rows = canonical(s, np.where(valid, p, -1), length, bar, np.full(len(todo), NO_POS, np.int64))
        out.put(todo, rows)
        short = rows.certain() < k
        if depth >= n_candidates or not short.any():
            break
        todo, depth = todo[short], min(depth * 2, n_candidates)
    return out



# ---------------------------------------------------------------- all-items search

@dataclass
class Exclusions:
    """Per-item integer codes; a neighbour sharing a non-negative code with its query is dropped."""

    codes: list[np.ndarray] = field(default_factory=list)

    def add(self, codes: np.ndarray) -> None:
        self.codes.append(codes)


def filters_of(ncfg, n: int, *, categories: np.ndarray | None, sellers: np.ndarray | None,
               images: np.ndarray | None) -> tuple[np.ndarray, Exclusions, list[np.ndarray]]:
    """(photo codes, the exclusions, the groups searched apart) the neighbours settings ask for: the
    seller's own items and the same photo excluded when configured, one group per category with
    ``same_category``."""
    images = images if images is not None else np.full(n, -1, np.int64)
    exclusions = Exclusions()
    if ncfg.exclude_same_seller and sellers is not None:
        exclusions.add(sellers)
    if ncfg.drop_same_image:
        exclusions.add(images)
    groups = [np.arange(n)]
    if ncfg.same_category and categories is not None:
        groups = [np.flatnonzero(categories == c) for c in np.unique(categories)]
    return images, exclusions, groups


def _keep(pos: np.ndarray, queries: np.ndarray, exclusions: Exclusions) -> np.ndarray:
    valid = (pos >= 0) & (pos != queries[:, None])
    safe = np.clip(pos, 0, None)
    for codes in exclusions.codes:
        own = codes[queries][:, None]
        valid &= ~((codes[safe] == own) & (own >= 0))
    return valid


def search_blocks(searcher: Searcher, vectors: np.ndarray, queries: np.ndarray, k: int, *, n_candidates: int,
                  exclusions: Exclusions | None = None, block: int = 16_384, margin: int = 0,
                  progress_every: float = 30.0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, Lists]]:
    """Yield (query positions (B,), neighbour positions (B, k), scores (B, k), the lists with their
    margin (B, k + margin)) block by block.

    Each block's lists come from :func:`full_lists`: canonical order (score descending, then item
    order), filtered, a row short of k certain entries searched again deeper. A row with fewer than
    k neighbours is padded with -1 / NaN.
    """
    exclusions = exclusions or Exclusions()
    started = last = time.monotonic()
    for start in range(0, len(queries), block):
        qpos = queries[start:start + block]
        lists = full_lists(searcher, vectors, qpos, n_candidates=n_candidates, k=k, length=k + margin,
                           exclusions=exclusions)
        npos, scores = lists.top_k(k)
        yield qpos, npos, scores, lists
        now = time.monotonic()
        if now - last >= progress_every:
            last = now
            searched = min(start + block, len(queries))
            log.info("neighbors: %d / %d items searched (%.0f items/s)", searched, len(queries),
                     searched / (now - started))
