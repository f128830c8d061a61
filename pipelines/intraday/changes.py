"""What changed since the night, as one table: the pure part of an intraday hour.

An hour reads the listings whose ``updated_at`` moved in [since, until) and merges them into the
changes it inherited from the hour before (the latest update of an item wins), so each hour holds
*every* change since the night it builds on: an hour that was killed, or a source that was down,
is caught up by the next hour, and rerunning an hour gives the same result.

An item of the changes is *listed* when it is on sale with a usable photo and a vector; any other
change (sold, deleted, a photo that was rejected) takes the item out of the catalogue.

:func:`patched` applies the changes to the night's catalogue: the items, vectors and filter
attributes the hour's lists are computed from (``lookalike.neighbors.update.update_neighbors``),
and :func:`changed_lists` tells which lists now differ from the night's.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lookalike import schemas
from lookalike.neighbors.output import positions_in
from lookalike.neighbors.update import ATTRIBUTES  # what the night's filters read
from lookalike.online.lists import list_text

# One row per item changed since the night: its latest state.
CHANGES = pa.schema([
    *(f for f in schemas.LISTING_FIELDS if f.name in ("item_id", "title", "category", "price", "status", "seller_id",
                                                      "image_key", "created_at", "updated_at")),
    pa.field("image_source", pa.string()),  # how its photo was normalised, from which object (extract.photos)
    pa.field("image_sha256", pa.string()),
    pa.field("reason", pa.string()),  # why the item is out of the catalogue, when it was rejected
    pa.field("embedding", pa.list_(pa.float32())),  # null unless listed
])


def merged(earlier: pa.Table, latest: pa.Table) -> pa.Table:
    """The changes since the night: ``earlier``'s items not in ``latest``, and ``latest``, by item_id."""
    kept = earlier.filter(pc.invert(pc.is_in(earlier.column("item_id"), value_set=latest.column("item_id"))))
    return pa.concat_tables([kept, latest.select(CHANGES.names).cast(CHANGES)]).sort_by("item_id")


def listed(changes: pa.Table) -> np.ndarray:
    """Per change, whether the item is in the catalogue now: on sale, no reject, a vector."""
    ok = pc.and_(pc.equal(changes.column("status"), "on_sale"), pc.is_null(changes.column("reason")))
    ok = pc.and_(pc.fill_null(ok, False), pc.is_valid(changes.column("embedding")))
    return ok.to_numpy(zero_copy_only=False).astype(bool)


def patched(night_ids: pa.Array, night_vectors: np.ndarray, night_catalog: pa.Table,
            changes: pa.Table) -> tuple[pa.Array, np.ndarray, pa.Table]:
    """(ids sorted, vectors (N, D) float32, catalogue: item_id and the filters' attributes) of the night's
    catalogue with ``changes`` applied: changed items replaced, those no longer listed left out."""
    touched = changes.column("item_id")
    keep = pc.invert(pc.is_in(night_ids, value_set=touched)).to_numpy(zero_copy_only=False)
    live = changes.filter(pa.array(listed(changes)))
    ids = pa.concat_arrays([night_ids.filter(pa.array(keep)), live.column("item_id").combine_chunks()])
    dim = night_vectors.shape[1]
    fresh = live.column("embedding").combine_chunks()
    fresh_vectors = fresh.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim) \
        if live.num_rows else np.zeros((0, dim), np.float32)
    vectors = np.concatenate([night_vectors[keep], fresh_vectors])
    order = pc.sort_indices(ids).to_numpy(zero_copy_only=False)
    ids, vectors = ids.take(pa.array(order)), vectors[order]
    rows = night_catalog.filter(pc.invert(pc.is_in(night_catalog.column("item_id"), value_set=touched)))
    catalog = pa.concat_tables([rows.select(["item_id", *ATTRIBUTES]),
                                live.select(["item_id", *ATTRIBUTES]).cast(rows.select(["item_id", *ATTRIBUTES]).schema)])
    return ids, np.ascontiguousarray(vectors), catalog


def changed_lists(night: tuple[np.ndarray, np.ndarray], now: tuple[np.ndarray, np.ndarray],
                  also: np.ndarray) -> np.ndarray:
    """(N,) bool: the items whose top-k (positions, scores; -1 / NaN where short) differs from the night's,
    both in the hour's numbering, or that ``also`` marks (listed by an earlier hour of the same night:
    a list changed once stays in the hour's table, even if it changed back)."""
    (night_pos, night_scores), (pos, scores) = night, now
    differs = (night_pos != pos).any(axis=1)
    same_nan = np.isnan(night_scores) & np.isnan(scores)
    differs |= ((night_scores != scores) & ~same_nan).any(axis=1)
    return differs | also


def withdrawn(night_ids: pa.Array, ids: pa.Array) -> pa.Array:
    """The night's items that are no longer in the catalogue (their lists are withdrawn)."""
    return night_ids.filter(pa.array(positions_in(night_ids, ids) < 0))


def since(now: tuple[pa.Table, pa.Array], then: tuple[pa.Table, pa.Array]) -> tuple[pa.Table, list[str]]:
    """What a store holding the lists ``then`` needs to hold ``now``: (the lists that are new or differ, the items
    newly withdrawn). Each is (lists: item_id, ids, scores; the withdrawn item ids), as an hour serves them; the
    hours' lists only grow, so nothing of ``then`` goes back to the night's."""
    def signature(lists: pa.Table) -> pa.Table:
        text = list_text(lists, ids=("", ",", ""), scores=("", ",", ""), between="|")
        return pa.table({"item_id": lists.column("item_id"), "signature": text})

    joined = signature(now[0]).join(signature(then[0]), "item_id", join_type="left outer", right_suffix="_then")
    differs = pc.or_kleene(pc.is_null(joined.column("signature_then")),
                           pc.not_equal(joined.column("signature"), joined.column("signature_then")))
    changed = joined.filter(pc.fill_null(differs, True)).column("item_id")
    lists = now[0].filter(pc.is_in(now[0].column("item_id"), value_set=changed))
    withdrawn = now[1].filter(pc.invert(pc.is_in(now[1], value_set=then[1])))
    return lists, withdrawn.to_pylist()
