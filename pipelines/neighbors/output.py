"""What the neighbors stage writes: ``item_neighbors`` rows from positions and scores, a Parquet file
streamed block by block and moved into place only when complete, and the lists with their margin
(``neighbor_lists``: per item its neighbours' positions, scores and bar, as numpy arrays) that the
next night's update starts from, read back in that night's numbering."""
from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lookalike import faults, schemas
from lookalike.atomic import atomic_path
from lookalike.neighbors.search import NO_POS, Lists


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


def write_rows(stats: dict, writer, table: pa.Table, items: int) -> None:
    """One block's item_neighbors rows to ``writer``, counted in ``stats``."""
    stats["short_items"] += items - table.num_rows // stats["k"]
    stats["rows"] += table.num_rows
    stats["same_image_rows"] += int(pc.sum(table.column("same_image")).as_py() or 0)
    writer.write_table(table)


class StreamingParquet:
    """One Parquet file written block by block, moved into place only when complete."""

    def __init__(self, path, schema: pa.Schema):
        self.path = path
        self._atomic = atomic_path(path)
        self.writer = pq.ParquetWriter(self._atomic.__enter__(), schema, compression="zstd")

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self.writer.write_table(table)
            faults.point("neighbors.mid_stream")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.writer.close()
        return self._atomic.__exit__(exc_type, exc, tb)


class ListsCollector:
    """The night's lists with their margin, filled block by block (rows: the night's items in id order),
    saved as ``neighbor_lists``: positions into that order (int32) and scores (N, L), each row's bar and
    its position. The stage writes ``neighbors_stats.json`` after it: lists without it are not used."""

    def __init__(self, n: int, length: int):
        self.lists = Lists.empty(n, length)

    def write(self, qpos: np.ndarray, lists: Lists) -> None:
        if len(qpos) == len(self.lists.pos) and np.array_equal(qpos, np.arange(len(qpos))):
            self.lists = lists  # every row at once, in order: kept as it is, not copied
        else:
            self.lists.put(qpos, lists)

    def save(self, folder) -> None:
        """A bar past the last item keeps no position: nothing at its score counts as certain (a stricter
        bar is always safe). A bar at an insertion point (its item left) keeps it: the next item then
        stands for it, and among items that were there tonight the same ones rank above it (new ones are
        fresh, searched on their own)."""
        n = len(self.lists.bar_pos)
        bar_pos = np.where(self.lists.bar_pos < n, self.lists.bar_pos, NO_POS)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "lists.npz", pos=self.lists.pos.astype(np.int32), scores=self.lists.scores,
                 bar=self.lists.bar, bar_pos=bar_pos)


def positions_in(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    """The position of each value in ``value_set``, -1 where absent."""
    found = pc.index_in(values, value_set=value_set).to_numpy(zero_copy_only=False)
    return np.nan_to_num(found.astype(float), nan=-1).astype(np.int64)


def read_lists(folder, previous_ids: pa.Array, ids: pa.Array) -> Lists:
    """The previous night's lists, in its own row order and tonight's numbering (neighbours no longer among
    ``ids`` become -1; a bar's item its position tonight, or where it would be if it left, ids being
    sorted), from a ``neighbor_lists`` folder."""
    with np.load(folder / "lists.npz") as saved:
        pos, scores, bar, bar_pos = saved["pos"], saved["scores"], saved["bar"], saved["bar_pos"]
    today_of = np.append(positions_in(previous_ids, ids), -1)  # the last entry: for -1 (empty)
    mapped = today_of[np.where(pos >= 0, pos, len(today_of) - 1)]
    named = bar_pos >= 0
    moved = np.where(named, today_of[np.where(named, bar_pos, len(today_of) - 1)], bar_pos)
    left = named & (moved < 0)
    if left.any():  # the bar's item left: where it would be among tonight's (sorted) ids
        gone = previous_ids.take(pa.array(bar_pos[left])).to_numpy(zero_copy_only=False).astype(object)
        moved[left] = np.searchsorted(ids.to_numpy(zero_copy_only=False).astype(object), gone)
    return Lists(mapped.astype(np.int64), scores, bar, moved.astype(np.int64))
