"""The all-items search as Spark tasks, for catalogues one machine cannot search overnight.

The driver plans, builds and tunes each group's index as in one process
(:func:`lookalike.neighbors.stage.build_neighbors`) and writes it, once, with the vectors, the
item ids and the filter codes, to a folder of the work area (:class:`SearchFolder`; a shared
volume on a cluster, as for embed). The queries are split into ranges of
``neighbors.block_size``, one Spark task each. A task's Python worker loads the folder once
(vectors memory-mapped, each index read once, worker reuse on), searches its range with
:func:`~lookalike.neighbors.search.search_blocks` — the same blocks, filters and refills as in
one process — and writes its rows itself, as one Parquet part of ``item_neighbors``, handing
back only counts. So the rows are those of the in-process search, and nothing but counts goes
through the driver.

The night's update runs the same way (``add_group(..., update=...)``): the driver saves each
group's previous lists, its reverse-search index and the fresh items' own reverse search once,
and each task brings its range's lists up to date with
:func:`~lookalike.neighbors.incremental.update_lists`, the in-process code. Either way each task
also writes its range's lists with their margin (``lists-*.npz``), which the driver gathers into
``neighbor_lists`` for the next night.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike import faults, schemas
from lookalike.atomic import atomic_path
from lookalike.storage import write_parquet
from lookalike.neighbors.search import (Exclusions, FaissIndexSearcher, FlatSearcher, KeyedSearcher, Lists, Plan,
                                        Searcher, TorchSearcher, search_blocks)

SEARCH_DIR = "_neighbors_search"  # in the ds's work area while the Spark search runs
PARTS_DIR = "_parts"  # inside item_neighbors: the tasks' files, moved up when every task finished
LISTS_DIR = "_lists"  # inside the search folder: each task's lists with their margin
COUNTS = pa.schema([("group", pa.int32()), ("start", pa.int64()), ("items", pa.int64()), ("rows", pa.int64()),
                    ("same_image_rows", pa.int64()), ("kept", pa.int64()), ("fresh", pa.int64()),
                    ("ran_out", pa.int64()), ("touched", pa.int64())])
_LOADED: dict = {}  # search folder → _Loaded, per Python worker


class SearchFolder:
    """What every task needs, written once by the driver: ``vectors.npy``, ``ids.parquet``,
    ``codes.npz`` (same-photo codes, exclusions), per group its members, candidates and FAISS
    index, and ``search.json`` (k, the ds, the model version, each group's index and knob)."""

    def __init__(self, path: Path, vectors: np.ndarray, ids: pa.Array, images: np.ndarray, exclusions: Exclusions,
                 *, k: int, ds: str, version: str, block: int, length: int = 0, fresh: np.ndarray | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        np.save(self.path / "vectors.npy", np.ascontiguousarray(vectors, np.float32))
        pq.write_table(pa.table({"item_id": ids}), self.path / "ids.parquet")
        extra = {"fresh": fresh} if fresh is not None else {}
        np.savez(self.path / "codes.npz", images=images, **extra,
                 **{f"exclude_{i}": c for i, c in enumerate(exclusions.codes)})
        self.meta = {"k": k, "ds": ds, "version": version, "block": block, "exclusions": len(exclusions.codes),
                     "length": length, "groups": []}

    def add_group(self, members: np.ndarray, candidates: np.ndarray, plan: Plan, searcher: Searcher,
                  tuning: dict, update: "GroupUpdate | None" = None) -> None:
        g = len(self.meta["groups"])
        np.savez(self.path / f"group-{g}.npz", members=members, candidates=candidates)
        entry = {"kind": plan.kind, "items": len(members)}
        entry.update(_save_searcher(searcher, self.path / f"group-{g}", tuning))
        if update is not None:
            entry["update"] = update.save(self.path / f"group-{g}-update")
        self.meta["groups"].append(entry)

    def ranges(self) -> list[tuple[int, int, int]]:
        """(group, start, stop) of every task: the blocks the in-process search would search."""
        block = self.meta["block"]
        return [(g, start, min(start + block, entry["items"])) for g, entry in enumerate(self.meta["groups"])
                for start in range(0, entry["items"], block)]

    def close(self) -> None:
        (self.path / "search.json").write_text(json.dumps(self.meta))


@dataclass
class GroupUpdate:
    """What a group's update tasks share: the group's previous lists (one row per member), the index the
    unchanged members search the fresh items in (None: exact search), and the fresh items' own reverse
    search (``from_fresh``: their positions and the (scores, positions) they found), when there is one."""
    previous: Lists
    reverse: Searcher | None
    from_fresh: tuple[np.ndarray, np.ndarray, np.ndarray] | None

    def save(self, stem: Path) -> dict:
        stem.mkdir()
        for name in ("pos", "scores", "bar", "bar_pos"):  # memory-mapped by the tasks: each reads its range
            np.save(stem / f"{name}.npy", getattr(self.previous, name))
        entry = {"reverse": _save_searcher(self.reverse, stem / "reverse", {}) if self.reverse else None,
                 "from_fresh": self.from_fresh is not None}
        if self.from_fresh is not None:
            np.savez(stem / "from_fresh.npz", new=self.from_fresh[0], s=self.from_fresh[1], p=self.from_fresh[2])
        return entry


def _save_searcher(searcher: Searcher, stem: Path, tuning: dict) -> dict:
    """An approximate index written beside ``stem`` for the tasks to read; {} for an exact one."""
    import faiss

    if isinstance(searcher, KeyedSearcher):
        faiss.write_index(searcher.index, f"{stem}.faiss")
        np.save(f"{stem}-keys.npy", searcher.keys)
        return {"kind": "keyed", "knob": "nprobe", "value": int(searcher.index.nprobe)}
    if isinstance(searcher, FaissIndexSearcher):
        faiss.write_index(searcher.index, f"{stem}.faiss")
        value = tuning.get("value", searcher.index.nprobe if searcher.knob == "nprobe" else None)
        return {"knob": searcher.knob, "value": int(value)}
    return {}


def _read_searcher(entry: dict, stem: Path, vectors: np.ndarray, candidates: np.ndarray) -> Searcher:
    import faiss

    if entry.get("kind") == "keyed":
        return KeyedSearcher(faiss.read_index(f"{stem}.faiss"), np.load(f"{stem}-keys.npy"), "nprobe",
                             entry["value"])
    if "knob" not in entry:
        return FlatSearcher(vectors, candidates)
    searcher = FaissIndexSearcher(faiss.read_index(f"{stem}.faiss"), entry["knob"], (),
                                  positions=candidates if entry.get("kind") == "hnsw" else None)
    searcher.set_knob(entry["value"])
    return searcher


@dataclass
class _Loaded:
    meta: dict
    vectors: np.ndarray
    ids: pa.Array
    images: np.ndarray
    exclusions: Exclusions
    fresh: np.ndarray | None
    searchers: dict = field(default_factory=dict)  # group → (searcher, members, candidates), one at a time


def _load(folder: str) -> _Loaded:
    if folder not in _LOADED:
        _LOADED.clear()
        path = Path(folder)
        meta = json.loads((path / "search.json").read_text())
        codes = np.load(path / "codes.npz")
        exclusions = Exclusions([codes[f"exclude_{i}"] for i in range(meta["exclusions"])])
        _LOADED[folder] = _Loaded(meta, np.load(path / "vectors.npy", mmap_mode="r"),
                                  pq.read_table(path / "ids.parquet").column("item_id").combine_chunks(),
                                  codes["images"], exclusions, codes["fresh"] if "fresh" in codes else None)
    return _LOADED[folder]


def _group(loaded: _Loaded, folder: str, g: int, threads: int) -> tuple[Searcher, np.ndarray, np.ndarray]:
    if g not in loaded.searchers:
        loaded.searchers.clear()
        entry = loaded.meta["groups"][g]
        arrays = np.load(Path(folder) / f"group-{g}.npz")
        members, candidates = arrays["members"], arrays["candidates"]
        import faiss

        faiss.omp_set_num_threads(threads)  # Spark's task slots, not FAISS's thread pool, use the cores
        if entry["kind"] == "torch":
            from lookalike.spark import task_device

            searcher: Searcher = TorchSearcher(loaded.vectors, candidates, task_device())
        else:
            searcher = _read_searcher(entry, Path(folder) / f"group-{g}", loaded.vectors, candidates)
        loaded.searchers[g] = (searcher, members, candidates)
    return loaded.searchers[g]


def _update_range(loaded: _Loaded, folder: str, g: int, start: int, stop: int, searcher: Searcher,
                  members: np.ndarray, candidates: np.ndarray) -> tuple[Lists, dict]:
    """The range's lists brought up to date, as :func:`lookalike.neighbors.update.update_neighbors` does
    for the whole group in one process."""
    from lookalike.neighbors.incremental import update_lists

    entry, stem = loaded.meta["groups"][g]["update"], Path(folder) / f"group-{g}-update"
    previous = Lists(*(np.array(np.load(stem / f"{name}.npy", mmap_mode="r")[start:stop])
                       for name in ("pos", "scores", "bar", "bar_pos")))
    reverse = (lambda new: _read_searcher(entry["reverse"], stem / "reverse", loaded.vectors, new)) \
        if entry["reverse"] else None
    from_fresh = _driver_search(np.load(stem / "from_fresh.npz")) if entry["from_fresh"] else None
    return update_lists(loaded.vectors, candidates, members[start:stop], previous, loaded.fresh,
                        k=loaded.meta["k"], searcher=searcher, exclusions=loaded.exclusions, block=stop - start,
                        reverse_for=reverse, from_fresh=from_fresh)


def search_ranges(batches: Iterator[pa.RecordBatch], folder: str, parts: str, threads: int) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: (group, start, stop) rows → each range searched, its rows written to
    ``parts/part-<group>-<start>.parquet`` (a retried task writes the same file again), its counts."""
    from lookalike.neighbors.output import neighbor_table

    loaded = _load(folder)
    k, length = loaded.meta["k"], loaded.meta["length"]
    for batch in batches:
        counts = []
        for g, start, stop in zip(*(batch.column(i).to_pylist() for i in range(3))):
            searcher, members, candidates = _group(loaded, folder, g, threads)
            done = {"kept": 0, "fresh": 0, "ran_out": 0, "touched": 0}
            if "update" in loaded.meta["groups"][g]:
                lists, done = _update_range(loaded, folder, g, start, stop, searcher, members, candidates)
                blocks = [(members[start:stop], *lists.top_k(k), lists)]
            else:
                blocks = list(search_blocks(searcher, loaded.vectors, members[start:stop], k,
                                            n_candidates=len(candidates), exclusions=loaded.exclusions,
                                            block=stop - start, margin=max(length - k, 0),
                                            progress_every=float("inf")))
            tables = [neighbor_table(loaded.meta["ds"], loaded.meta["version"], loaded.ids, loaded.images,
                                     qpos, npos, scores, k) for qpos, npos, scores, _ in blocks]
            table = pa.concat_tables(tables) if tables else schemas.ITEM_NEIGHBORS.empty_table()
            write_parquet(table, Path(parts) / f"part-{g:04d}-{start:010d}.parquet")  # a retried task: the same file
            if length and blocks:  # the lists the next night starts from
                got = blocks[0][3]
                with (atomic_path(Path(folder) / LISTS_DIR / f"lists-{g:04d}-{start:010d}.npz") as tmp,
                      open(tmp, "wb") as fh):
                    np.savez(fh, pos=got.pos, scores=got.scores, bar=got.bar, bar_pos=got.bar_pos)
            same = int(np.sum(table.column("same_image").to_numpy(zero_copy_only=False))) if table.num_rows else 0
            counts.append((g, start, stop - start, table.num_rows, same, done["kept"], done["fresh"],
                           done["ran_out"], done["touched"]))
        yield pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(zip(*counts), COUNTS)]
                                         if counts else [pa.array([], f.type) for f in COUNTS], schema=COUNTS)


def _driver_search(saved):
    every, s, p = saved["new"], saved["s"], saved["p"]

    def from_fresh(new, depth):  # searched once by the driver for every task: its rows of these fresh items
        at = np.searchsorted(every, new)
        assert np.array_equal(every[at], new) and depth == p.shape[1]
        return s[at], p[at]
    return from_fresh


def search_on_spark(cfg, search: SearchFolder, out: Path, lists_out=None) -> dict:
    """Every range of ``search`` as a Spark task; the parts moved into ``out`` once all finished, and
    each range's lists into ``lists_out`` (a ``ListsCollector``) when the folder keeps a margin.
    Returns {group: {"rows", "items", "same_image_rows", ...}} and the job's tasks and seconds."""
    from pyspark.sql import types as T

    from lookalike.spark import ship_package, spark_session

    search.close()
    parts = out / PARTS_DIR
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    shutil.rmtree(search.path / LISTS_DIR, ignore_errors=True)
    (search.path / LISTS_DIR).mkdir()
    ranges = search.ranges()
    spark = spark_session(cfg, app_name=f"lookalike-neighbors-{search.meta['ds']}")
    ship_package(spark, cfg, search.path)
    started = time.monotonic()
    schema = T.StructType([T.StructField("group", T.IntegerType()), T.StructField("start", T.LongType()),
                           T.StructField("stop", T.LongType())])
    frame = spark.createDataFrame(spark.sparkContext.parallelize(ranges, max(1, len(ranges))), schema)
    folder, threads = str(search.path), cfg.neighbors.threads or 1
    faults.point_when("neighbors.mid_spark", lambda: any(parts.glob("part-*.parquet")))
    rows = frame.mapInArrow(lambda it: search_ranges(it, folder, str(parts), threads),
                            T.StructType([T.StructField(f.name, T.IntegerType() if f.name == "group" else T.LongType())
                                          for f in COUNTS])).collect()
    seconds = time.monotonic() - started
    expected = {f"part-{g:04d}-{start:010d}.parquet" for g, start, _ in ranges}
    written = {p.name for p in parts.glob("part-*.parquet")}
    if written != expected:  # a task that reported but left no file: never publish a partial table
        raise RuntimeError(f"neighbors on Spark: {len(expected - written)} of {len(expected)} parts missing in {parts}")
    if lists_out is not None and search.meta["length"]:
        members = {g: np.load(search.path / f"group-{g}.npz")["members"] for g in {r[0] for r in ranges}}
        for g, start, stop in ranges:
            with np.load(search.path / LISTS_DIR / f"lists-{g:04d}-{start:010d}.npz") as got:
                lists_out.write(members[g][start:stop], Lists(got["pos"], got["scores"], got["bar"], got["bar_pos"]))
    for name in sorted(written):
        os.replace(parts / name, out / name)
    parts.rmdir()
    by_group: dict = {}
    for row in rows:
        g = by_group.setdefault(row["group"], {"items": 0, "rows": 0, "same_image_rows": 0, "kept": 0, "fresh": 0,
                                               "ran_out": 0, "touched": 0})
        for key in g:
            g[key] += row[key]
    return {"groups": by_group, "tasks": len(ranges), "seconds": round(seconds, 2)}


def search_and_count(cfg, search: SearchFolder, out: Path, lists_out, stats: dict) -> None:
    """:func:`search_on_spark`, the search folder removed after, whatever happened; each group's counts
    added to ``stats`` (rows, same-image rows, short items, and an update's kept, fresh, ran-out and
    touched lists) with the job's tasks and seconds."""
    try:
        searched = search_on_spark(cfg, search, out, lists_out)
    finally:
        shutil.rmtree(search.path, ignore_errors=True)
    for i, group in enumerate(stats["groups"]):
        counts = searched["groups"].get(i, {})
        for key in ("rows", "same_image_rows", "kept", "fresh", "ran_out", "touched"):
            if key in stats:
                stats[key] += counts.get(key, 0)
        stats["short_items"] += group["items"] - counts.get("rows", 0) // stats["k"]
    stats["spark"] = {"tasks": searched["tasks"], "seconds": searched["seconds"]}
