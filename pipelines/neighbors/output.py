"""What the neighbors stage writes: ``item_neighbors`` rows from positions and scores, a Parquet file
streamed block by block and moved into place only when complete, and the lists with their margin
(``neighbor_lists``: per item its ids, scores and bar) that the next night's update starts from."""
from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import faults, schemas
from pipelines.neighbors.search import Lists

# One row per query item: its list with the margin, in canonical order, and the bar (search.Lists):
# its score, and the item at it (null when nothing at that score is known).
LISTS = pa.schema([pa.field("item_id", pa.string(), nullable=False), pa.field("ids", pa.list_(pa.string())),
                   pa.field("scores", pa.list_(pa.float32())), pa.field("bar", pa.float32()),
                   pa.field("bar_id", pa.string())])


def neighbor_table(ds: str, version: str, ids: pa.Array, image_codes: np.ndarray,
                   qpos: np.ndarray, npos: np.ndarray, scores: np.ndarray, k: int) -> pa.Table:
    """The ``item_neighbors`` rows of one block (rows whose list is complete)."""
    full = (npos >= 0).all(axis=1)
    qpos, npos, scores = qpos[full], npos[full], scores[full]
    n = len(qpos)
    q_rep = np.repeat(qpos, k)
    flat = npos.ravel()
    same = (image_codes[q_rep] == image_codes[flat]) & (image_codes[q_rep] >= 0)
    return pa.table({
        "ds": pa.array([ds] * (n * k), pa.string()),
        "item_id": ids.take(pa.array(q_rep)),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
        "neighbor_id": ids.take(pa.array(flat)),
        "score": scores.ravel(),
        "same_image": same,
        "model_version": pa.array([version] * (n * k), pa.string()),
    }, schema=schemas.ITEM_NEIGHBORS)


class StreamingParquet:
    """One Parquet file written block by block, moved into place only when complete."""

    def __init__(self, path, schema: pa.Schema):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self.writer.write_table(table)
            faults.point("neighbors.mid_stream")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.writer.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def lists_table(ids: pa.Array, qpos: np.ndarray, lists: Lists) -> pa.Table:
    """``neighbor_lists`` rows of one block: each query's ids and scores (empty entries left out), its bar."""
    valid = lists.pos >= 0
    counts = valid.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    flat_pos = lists.pos[valid]
    return pa.table({"item_id": ids.take(pa.array(qpos)),
                     "ids": pa.ListArray.from_arrays(offsets, ids.take(pa.array(flat_pos))),
                     "scores": pa.ListArray.from_arrays(offsets, pa.array(lists.scores[valid], pa.float32())),
                     "bar": pa.array(lists.bar, pa.float32()),
                     "bar_id": _bar_ids(ids, lists.bar_pos)}, schema=LISTS)


def _bar_ids(ids: pa.Array, bar_pos: np.ndarray) -> pa.Array:
    """The id at each bar's position. A bar past the last item keeps no id: nothing at its score counts
    as certain (a stricter bar is always safe). A bar at an insertion point (its item left) names the
    next item: among items that were there yesterday, the same ones rank above it, and new ones are
    fresh, searched on their own."""
    named = (bar_pos >= 0) & (bar_pos < len(ids))
    taken = ids.take(pa.array(np.where(named, bar_pos, 0))) if len(ids) else pa.array([None] * len(bar_pos), pa.string())
    return pc.if_else(pa.array(named), taken, pa.scalar(None, pa.string()))


def read_lists(source, ids: pa.Array, length: int) -> tuple[np.ndarray, Lists]:
    """(today's row of each stored list or -1, the stored lists in today's numbering: neighbours no longer
    among ``ids`` (sorted) become -1, each bar's item its position or where it would be) from a
    ``neighbor_lists`` folder or table."""
    table = source if isinstance(source, pa.Table) else pq.read_table(source)
    row = pc.index_in(table.column("item_id"), value_set=ids).to_numpy(zero_copy_only=False)
    row = np.nan_to_num(row.astype(float), nan=-1).astype(np.int64)
    flat = pc.list_flatten(table.column("ids"))
    pos = pc.index_in(flat, value_set=ids).to_numpy(zero_copy_only=False)
    pos = np.nan_to_num(pos.astype(float), nan=-1).astype(np.int64)
    scores = pc.list_flatten(table.column("scores")).to_numpy(zero_copy_only=False).astype(np.float32)
    counts = pc.list_value_length(table.column("ids")).to_numpy(zero_copy_only=False)
    lists = Lists.empty(table.num_rows, length)
    column = np.arange(len(pos)) - np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    line = np.repeat(np.arange(table.num_rows), counts)
    fits = column < length
    lists.pos[line[fits], column[fits]] = pos[fits]
    lists.scores[line[fits], column[fits]] = scores[fits]
    lists.bar[:] = table.column("bar").to_numpy(zero_copy_only=False)
    # the bar's item in today's numbering: its position, or where it would be (ids are sorted)
    bar_ids = table.column("bar_id").to_numpy(zero_copy_only=False)
    named = np.array([b is not None for b in bar_ids], dtype=bool)
    if named.any():
        today = ids.to_numpy(zero_copy_only=False).astype(object)
        lists.bar_pos[named] = np.searchsorted(today, bar_ids[named].astype(object), side="left")
    return row, lists
