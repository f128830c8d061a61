"""The night's neighbours from the previous night's lists, when little changed.

``rebuild_reason`` and ``decide`` say whether tonight updates the lists or rebuilds them in full, and why:

- in full on request (``lookalike neighbors --full``), when no earlier night kept its lists
  (``neighbor_lists`` in its work area), when the served model or the neighbour settings changed,
  every ``neighbors.full_rebuild_days`` days, when more than ``neighbors.incremental_max_change``
  of the catalogue was added, changed or removed since the previous night, and, with an
  approximate index, once ``neighbors.max_changed_since_full`` of the catalogue changed since the
  last full rebuild (the kept lists came from an index trained on that night's vectors: a new
  index, trained on today's, is due);
- otherwise by :func:`update_neighbors`: an item is *fresh* when it is new or its vector, sale
  status, category, seller or photo changed (``changes``); the rest keep their lists, less what
  left, with the fresh items inserted where they now belong
  (:func:`lookalike.neighbors.incremental.update_lists`).

Both write ``item_neighbors`` and ``neighbor_lists`` the same way, and ``neighbors_stats.json``
says which it did and why (the run record and the summary show it).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike.config import NeighborsConfig
from lookalike.neighbors.incremental import update_lists
from lookalike.neighbors.output import ListsCollector, neighbor_table, positions_in, read_lists, write_rows
from lookalike.neighbors.search import (KEY_SCHEME, NO_POS, FlatSearcher, KeyedSearcher, Lists, Plan, build_searcher,
                                        filters_of, item_keys, plan_index, tune)
from lookalike.storage import Warehouse

log = logging.getLogger(__name__)

# The settings a kept list depends on: any change rebuilds in full.
SETTINGS = ("k", "margin", "index", "recall_target", "exact_max_items", "memory_budget_mb", "same_category",
            "exclude_same_seller", "drop_same_image", "seed")
ATTRIBUTES = ("status", "category", "seller_id", "image_sha256")  # what the filters read: a change makes an item fresh


def settings_of(ncfg: NeighborsConfig) -> dict:
    return {key: getattr(ncfg, key) for key in SETTINGS}


@dataclass
class Previous:
    ds: str
    stats: dict  # its neighbors_stats.json, with "lists"


def find_previous(wh: Warehouse, ds: str) -> Previous | None:
    """The newest earlier night whose work area kept its lists, embeddings and catalogue."""
    for day in reversed([d for d in wh.work_days() if d < ds]):
        stats = wh.work(day, "neighbors_stats.json")
        if all(wh.work(day, name).exists() for name in ("neighbor_lists", "item_embeddings", "catalog")) \
                and stats.exists():
            found = json.loads(stats.read_text())
            if found.get("lists"):
                return Previous(day, found)
    return None


def changes(prev_ids: pa.Array, prev_vectors: np.ndarray, prev_catalog: pa.Table, ids: pa.Array,
            vectors: np.ndarray, catalog: pa.Table) -> tuple[np.ndarray, np.ndarray, int]:
    """(was: the previous night's row of each item or -1, fresh (N,) bool, removed: items gone)."""
    was = positions_in(ids, prev_ids)
    kept = was >= 0
    same = np.zeros(len(ids), dtype=bool)
    same[kept] = (prev_vectors[was[kept]] == vectors[kept]).all(axis=1)
    here = pc.index_in(ids, value_set=catalog.column("item_id"))  # each item's row, once per catalogue
    there = pc.index_in(ids, value_set=prev_catalog.column("item_id"))
    for column in ATTRIBUTES:
        same &= pc.equal(_values(catalog, column, here), _values(prev_catalog, column, there)) \
            .to_numpy(zero_copy_only=False)
    return was, ~same, int(len(prev_ids) - kept.sum())


def _values(catalog: pa.Table, column: str, where: pa.Array) -> pa.Array:
    """``catalog[column]`` at the rows ``where`` as text ("" for null, "\\0" for an item not in it)."""
    values = pc.take(catalog.column(column).cast(pa.string()).combine_chunks(), where)
    return pc.if_else(pc.is_null(where), "\0", pc.fill_null(values, ""))


def rebuild_reason(ncfg: NeighborsConfig, ds: str, version: str, dim: int, previous: Previous | None, *,
                   full: bool) -> str | None:
    """Why tonight must search every item whatever changed, or None (the change decides: ``decide``)."""
    if full:
        return "a full rebuild was asked for (lookalike neighbors --full)"
    if previous is None:
        return "no earlier night kept its lists"
    kept = previous.stats["lists"]
    if kept["version"] != version or previous.stats.get("dim") != dim:
        return f"the served model changed ({kept['version']} -> {version})"
    changed = sorted(key for key, value in settings_of(ncfg).items() if kept["settings"].get(key) != value)
    if changed:
        return f"the neighbour settings changed since {previous.ds} ({', '.join(changed)})"
    days = (date.fromisoformat(ds) - date.fromisoformat(kept["last_full"])).days
    if days >= ncfg.full_rebuild_days:
        return (f"{days} days since the last full rebuild ({kept['last_full']}); "
                f"neighbors.full_rebuild_days = {ncfg.full_rebuild_days}")
    return None


def decide(ncfg: NeighborsConfig, previous: Previous, *, change_share: float, approximate: bool) -> tuple[str, str]:
    """("incremental" | "full", why), once nothing else forces a full rebuild (``rebuild_reason``)."""
    kept = previous.stats["lists"]
    if change_share > ncfg.incremental_max_change:
        return "full", (f"{change_share:.1%} of the catalogue changed since {previous.ds} "
                        f"(> neighbors.incremental_max_change {ncfg.incremental_max_change:.0%})")
    since = kept.get("changed_since_full", 0.0) + change_share
    if approximate and since > ncfg.max_changed_since_full:
        return "full", (f"{since:.1%} of the catalogue changed since the index was trained ({kept['last_full']}; > "
                        f"neighbors.max_changed_since_full {ncfg.max_changed_since_full:.0%})")
    return "incremental", f"{change_share:.2%} of the catalogue changed since {previous.ds}"


def load_previous(wh: Warehouse, previous: Previous, ids: pa.Array, vectors: np.ndarray,
                  catalog: pa.Table) -> tuple[np.ndarray, np.ndarray, int, Lists]:
    """(was: each item's row in the previous night's numbering or -1, fresh, removed, the previous lists in
    tonight's rows and numbering)."""
    stored_ids, stored_vectors = stored_embeddings(wh.work(previous.ds, "item_embeddings"))
    prev_catalog = pq.read_table(wh.work(previous.ds, "catalog"), columns=["item_id", *ATTRIBUTES])
    return carry(wh, previous, stored_ids, stored_vectors, prev_catalog, ids, vectors, catalog)


def carry(wh: Warehouse, previous: Previous, prev_ids: pa.Array, prev_vectors: np.ndarray, prev_catalog: pa.Table,
          ids: pa.Array, vectors: np.ndarray, catalog: pa.Table) -> tuple[np.ndarray, np.ndarray, int, Lists]:
    """``load_previous`` on the previous night's embeddings and catalogue already in hand (in any order)."""
    _, fresh, removed = changes(prev_ids, prev_vectors, prev_catalog, ids, vectors, catalog)
    numbering = prev_ids.take(pc.sort_indices(prev_ids))  # that night's rows: its ids in sorted order
    was = positions_in(ids, numbering)
    return was, fresh, removed, carried_lists(wh.work(previous.ds, "neighbor_lists"), numbering, ids, was)


def stored_embeddings(path) -> tuple[pa.Array, np.ndarray]:
    """(item ids, vectors (N, D) float32) of an item_embeddings folder in the order stored: what telling the
    changed vectors apart needs, without sorting or copying the vectors."""
    table = pq.read_table(path, columns=["item_id", "embedding"])
    flat = table.column("embedding").combine_chunks()
    values = flat.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return table.column("item_id").combine_chunks(), values.reshape(table.num_rows, -1)


def carried_lists(folder, previous_ids: pa.Array, ids: pa.Array, was: np.ndarray) -> Lists:
    """The previous night's lists in tonight's rows and numbering (``was``: each item's previous row, or -1
    for a new item, whose row stays empty)."""
    stored = read_lists(folder, previous_ids, ids)
    new = was < 0
    if new.all():
        return Lists.empty(len(ids), stored.length)
    lists = stored.take(np.where(new, 0, was))
    lists.pos[new], lists.scores[new], lists.bar[new], lists.bar_pos[new] = -1, -np.inf, np.inf, NO_POS
    return lists


REVERSE_INDEX_MIN = 2000  # fresh items from which an approximate group's reverse search uses an inverted file


def save_index(index, keys: np.ndarray, folder, meta: dict) -> None:
    """A group's inverted-file index for the next nights, its ids the items' keys (``neighbor_index``)."""
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / "index.faiss"))
    np.save(folder / "keys.npy", keys)
    (folder / "index.json").write_text(json.dumps({**meta, "keys": KEY_SCHEME}))


def load_index(folder) -> tuple[object, np.ndarray, dict] | None:
    """(index, the keys it holds, its meta) kept by an earlier night, or None (none kept, or keyed by
    another scheme than :data:`~lookalike.neighbors.search.KEY_SCHEME`)."""
    import faiss

    if not (folder / "index.json").exists():
        return None
    meta = json.loads((folder / "index.json").read_text())
    if meta.get("keys") != KEY_SCHEME:
        log.info("neighbors: the index kept in %s is keyed by %s, not %s: not carried forward", folder,
                 meta.get("keys", "an earlier scheme"), KEY_SCHEME)
        return None
    return faiss.read_index(str(folder / "index.faiss")), np.load(folder / "keys.npy"), meta


def carry_index(kept, vectors: np.ndarray, keys: np.ndarray, candidates: np.ndarray, fresh: np.ndarray):
    """The kept index brought to tonight: the keys of items no longer unchanged candidates removed, the
    fresh candidates added. Returns (index, the keys it holds: tonight's candidates'), or None when the
    kept index lacks some unchanged candidate (it was not kept by the night before)."""
    import faiss

    index, held, meta = kept
    stay = np.sort(keys[candidates[~fresh[candidates]]])
    at = np.clip(np.searchsorted(stay, held), 0, max(len(stay) - 1, 0))
    kept_here = (stay[at] == held) if len(stay) else np.zeros(len(held), bool)
    if int(kept_here.sum()) != len(stay):
        log.warning("neighbors: the kept index lacks %d of tonight's unchanged items: not carried forward",
                    len(stay) - int(kept_here.sum()))
        return None
    stale = held[~kept_here]
    if len(stale):
        index.remove_ids(faiss.IDSelectorBatch(stale))
    new = candidates[fresh[candidates]]
    if len(new):
        index.add_with_ids(np.ascontiguousarray(vectors[new]), keys[new])
    return index, keys[candidates]


def update_neighbors(vectors: np.ndarray, ids: pa.Array, *, ncfg: NeighborsConfig, on_sale: np.ndarray,
                     previous: Lists, fresh: np.ndarray, writer, lists_out: ListsCollector, ds: str, version: str,
                     categories: np.ndarray | None = None, sellers: np.ndarray | None = None,
                     images: np.ndarray | None = None, kept_index=None, index_out=None,
                     spark: tuple | None = None) -> dict:
    """Tonight's lists from ``previous`` (tonight's numbering), each group as the full search groups
    them; rows to ``writer`` (item_neighbors; none with None), lists to ``lists_out`` (neighbor_lists).
    With an approximate index, ``kept_index`` (``load_index``) is the earlier night's, carried to tonight
    (``carry_index``) and saved to ``index_out`` for the next (unless None: an intraday hour keeps none). With ``spark`` = (config, search folder,
    output folder), as for ``build_neighbors``, the driver prepares each group and the lists are updated
    as Spark tasks, range by range, by the same code (:mod:`lookalike.neighbors.distributed`).
    Returns statistics in the shape of ``build_neighbors``'."""
    from lookalike.neighbors import distributed
    from lookalike.neighbors.incremental import REVERSE_DEPTH

    k, n = ncfg.k, len(vectors)
    images, exclusions, groups = filters_of(ncfg, n, categories=categories, sellers=sellers, images=images)
    stats = {"items": n, "dim": vectors.shape[1], "k": k, "candidates": int(on_sale.sum()), "groups": [], "rows": 0,
             "short_items": 0, "same_image_rows": 0, "executor": "spark" if spark else "in-process", "kept": 0,
             "fresh": 0, "ran_out": 0, "touched": 0}
    length = ncfg.k + ncfg.margin
    folder = distributed.SearchFolder(spark[1], vectors, ids, images, exclusions, k=k, ds=ds, version=version,
                                      block=ncfg.block_size, length=length, fresh=fresh) if spark else None
    started = time.monotonic()
    for members in groups:
        candidates = members[on_sale[members]]
        if len(candidates) == 0:
            stats["short_items"] += len(members)
            continue
        plan = plan_index(len(candidates), vectors.shape[1], kind=ncfg.index, exact_max_items=ncfg.exact_max_items,
                          memory_budget_mb=ncfg.memory_budget_mb)
        group = {"items": len(members), "candidates": len(candidates), "index": plan.kind, "reason": plan.reason,
                 "nlist": plan.nlist, "recall_at_k": 1.0 if plan.exact else None, "exact": plan.exact}
        carried, saving = None, 0.0
        if not plan.exact and kept_index is not None and len(groups) == 1:
            t0 = time.monotonic()
            keys = item_keys(ids)
            brought = carry_index(kept_index, vectors, keys, candidates, fresh)
            if brought is not None:
                t1 = time.monotonic()
                if index_out is not None:
                    save_index(*brought, index_out, kept_index[2])
                saving = time.monotonic() - t1
                carried = KeyedSearcher(brought[0], keys, "nprobe", kept_index[2]["value"])
                group.update(index=kept_index[2]["kind"], reason=f"the index of {kept_index[2]['built_on']}, carried "
                             "forward (removals and additions by item key)", knob="nprobe",
                             value=kept_index[2]["value"], carry_seconds=round(time.monotonic() - t0 - saving, 2))

        def searcher(plan=plan, candidates=candidates, members=members, group=group, carried=carried):
            if carried is not None:
                return carried
            built = build_searcher(vectors, candidates, plan, seed=ncfg.seed)
            tuning = tune(built, vectors, members, candidates, k, target=ncfg.recall_target,
                          sample=ncfg.recall_sample, seed=ncfg.seed)
            if tuning.get("use_exact"):
                group.update(index="flat", reason=f"{plan.kind} did not pay on the tuning sample")
                return build_searcher(vectors, candidates, Plan("flat"))
            group.update(tuning)
            return built

        def reverse_for(new, exact=plan.exact, members=members):
            if exact or len(new) < REVERSE_INDEX_MIN:
                return FlatSearcher(vectors, new)
            built = build_searcher(vectors, new, plan_index(len(new), vectors.shape[1], kind="ivf"), seed=ncfg.seed)
            tuning = tune(built, vectors, members, new, k, target=ncfg.recall_target, sample=ncfg.recall_sample,
                          seed=ncfg.seed)
            return FlatSearcher(vectors, new) if tuning.get("use_exact") else built

        def from_fresh(new, depth, carried=carried):  # the fresh items search the carried index
            return carried.search(np.ascontiguousarray(vectors[new]), depth)

        whole = len(groups) == 1  # the lists are updated in place, not copied
        if folder is not None:  # updated below, on Spark: what every task shares, prepared once
            new = candidates[fresh[candidates]]
            stay_outside = (~fresh[members] & ~on_sale[members]).any()  # searches the fresh items itself
            ready = searcher()
            reverse = reverse_for(new) if len(new) and (carried is None or stay_outside) else None
            pairs = (new, *from_fresh(new, REVERSE_DEPTH * length)) if carried is not None and len(new) else None
            folder.add_group(members, candidates, plan, ready, group, update=distributed.GroupUpdate(
                previous if whole else previous.take(members),
                None if isinstance(reverse, FlatSearcher) else reverse, pairs))
            stats["groups"].append(group)
            continue
        lists, counts = update_lists(vectors, candidates, members, previous if whole else previous.take(members),
                                     fresh, k=k, searcher=searcher, exclusions=exclusions, block=ncfg.block_size,
                                     reverse_for=reverse_for, from_fresh=from_fresh if carried else None)
        for key in ("kept", "fresh", "ran_out", "touched"):
            stats[key] += counts[key]
        t0 = time.monotonic()
        for start in range(0, len(members) if writer is not None else 0, ncfg.block_size):
            rows = np.arange(start, min(start + ncfg.block_size, len(members)))
            block = lists.take(rows)
            npos, scores = block.top_k(k)
            write_rows(stats, writer, neighbor_table(ds, version, ids, images, members[rows], npos, scores, k),
                        len(rows))
        lists_out.write(members, lists)
        stats["groups"].append(group)
        group["write_seconds"] = round(time.monotonic() - t0 + saving, 2)
    if folder is not None:
        distributed.search_and_count(spark[0], folder, spark[2], lists_out, stats)
    stats["seconds"] = round(time.monotonic() - started, 2)
    weights = [g["items"] for g in stats["groups"] if g.get("recall_at_k") is not None]
    stats["recall_at_k"] = round(float(np.average([g["recall_at_k"] for g in stats["groups"]
                                                   if g.get("recall_at_k") is not None], weights=weights)), 4) \
        if weights else None
    stats["index"] = sorted({g["index"] for g in stats["groups"]})
    return stats
