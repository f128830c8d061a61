"""The all-items search as Spark tasks, for catalogues one machine cannot search overnight.

The driver plans, builds and tunes each group's index as in one process
(:func:`pipelines.neighbors.stage.build_neighbors`) and writes it, once, with the vectors, the
item ids and the filter codes, to a folder of the work area (:class:`SearchFolder`; a shared
volume on a cluster, as for embed). The queries are split into ranges of
``neighbors.block_size``, one Spark task each. A task's Python worker loads the folder once
(vectors memory-mapped, each index read once, worker reuse on), searches its range with
:func:`~pipelines.neighbors.search.search_blocks` — the same blocks, filters and refills as in
one process — and writes its rows itself, as one Parquet part of ``item_neighbors``, handing
back only counts. So the rows are those of the in-process search, and nothing but counts goes
through the driver.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import faults, schemas
from pipelines.neighbors.search import (Exclusions, FaissIndexSearcher, FlatSearcher, Plan, Searcher, TorchSearcher,
                                        search_blocks)

SEARCH_DIR = "_neighbors_search"  # in the ds's work area while the Spark search runs
PARTS_DIR = "_parts"  # inside item_neighbors: the tasks' files, moved up when every task finished
COUNTS = pa.schema([("group", pa.int32()), ("start", pa.int64()), ("items", pa.int64()), ("rows", pa.int64()),
                    ("same_image_rows", pa.int64())])
_LOADED: dict = {}  # search folder → _Loaded, per Python worker


class SearchFolder:
    """What every task needs, written once by the driver: ``vectors.npy``, ``ids.parquet``,
    ``codes.npz`` (same-photo codes, exclusions), per group its members, candidates and FAISS
    index, and ``search.json`` (k, the ds, the model version, each group's index and knob)."""

    def __init__(self, path: Path, vectors: np.ndarray, ids: pa.Array, images: np.ndarray, exclusions: Exclusions,
                 *, k: int, ds: str, version: str, block: int):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        np.save(self.path / "vectors.npy", np.ascontiguousarray(vectors, np.float32))
        pq.write_table(pa.table({"item_id": ids}), self.path / "ids.parquet")
        np.savez(self.path / "codes.npz", images=images, **{f"exclude_{i}": c for i, c in enumerate(exclusions.codes)})
        self.meta = {"k": k, "ds": ds, "version": version, "block": block, "exclusions": len(exclusions.codes),
                     "groups": []}

    def add_group(self, members: np.ndarray, candidates: np.ndarray, plan: Plan, searcher: Searcher,
                  tuning: dict) -> None:
        g = len(self.meta["groups"])
        np.savez(self.path / f"group-{g}.npz", members=members, candidates=candidates)
        entry = {"kind": plan.kind, "items": len(members)}
        if isinstance(searcher, FaissIndexSearcher):
            import faiss

            faiss.write_index(searcher.index, str(self.path / f"group-{g}.faiss"))
            entry.update(knob=searcher.knob, value=int(tuning["value"]))
        self.meta["groups"].append(entry)

    def ranges(self) -> list[tuple[int, int, int]]:
        """(group, start, stop) of every task: the blocks the in-process search would search."""
        block = self.meta["block"]
        return [(g, start, min(start + block, entry["items"])) for g, entry in enumerate(self.meta["groups"])
                for start in range(0, entry["items"], block)]

    def close(self) -> None:
        (self.path / "search.json").write_text(json.dumps(self.meta))


@dataclass
class _Loaded:
    meta: dict
    vectors: np.ndarray
    ids: pa.Array
    images: np.ndarray
    exclusions: Exclusions
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
                                  codes["images"], exclusions)
    return _LOADED[folder]


def _group(loaded: _Loaded, folder: str, g: int, threads: int) -> tuple[Searcher, np.ndarray, np.ndarray]:
    if g not in loaded.searchers:
        loaded.searchers.clear()
        entry = loaded.meta["groups"][g]
        arrays = np.load(Path(folder) / f"group-{g}.npz")
        members, candidates = arrays["members"], arrays["candidates"]
        import faiss

        faiss.omp_set_num_threads(threads)  # Spark's task slots, not FAISS's thread pool, use the cores
        if entry["kind"] == "flat":
            searcher: Searcher = FlatSearcher(loaded.vectors, candidates)
        elif entry["kind"] == "torch":
            from pipelines.embed.stage import task_device

            searcher = TorchSearcher(loaded.vectors, candidates, task_device())
        else:
            index = faiss.read_index(str(Path(folder) / f"group-{g}.faiss"))
            searcher = FaissIndexSearcher(index, entry["knob"], (),
                                          positions=candidates if entry["kind"] == "hnsw" else None)
            searcher.set_knob(entry["value"])
        loaded.searchers[g] = (searcher, members, candidates)
    return loaded.searchers[g]


def search_ranges(batches: Iterator[pa.RecordBatch], folder: str, parts: str, threads: int) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: (group, start, stop) rows → each range searched, its rows written to
    ``parts/part-<group>-<start>.parquet`` (a retried task writes the same file again), its counts."""
    from pipelines.neighbors.output import neighbor_table

    loaded = _load(folder)
    k = loaded.meta["k"]
    for batch in batches:
        counts = []
        for g, start, stop in zip(*(batch.column(i).to_pylist() for i in range(3))):
            searcher, members, candidates = _group(loaded, folder, g, threads)
            tables = [neighbor_table(loaded.meta["ds"], loaded.meta["version"], loaded.ids, loaded.images,
                                     qpos, npos, scores, k)
                      for qpos, npos, scores, _ in search_blocks(searcher, loaded.vectors, members[start:stop], k,
                                                              n_candidates=len(candidates),
                                                              exclusions=loaded.exclusions, block=stop - start,
                                                              progress_every=float("inf"))]
            table = pa.concat_tables(tables) if tables else schemas.ITEM_NEIGHBORS.empty_table()
            name = Path(parts) / f"part-{g:04d}-{start:010d}.parquet"
            tmp = name.with_name(f".{name.name}.{uuid.uuid4().hex[:8]}.tmp")
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, name)
            same = int(np.sum(table.column("same_image").to_numpy(zero_copy_only=False))) if table.num_rows else 0
            counts.append((g, start, stop - start, table.num_rows, same))
        yield pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(zip(*counts), COUNTS)]
                                         if counts else [pa.array([], f.type) for f in COUNTS], schema=COUNTS)


def search_on_spark(cfg, search: SearchFolder, out: Path) -> dict:
    """Every range of ``search`` as a Spark task; the parts moved into ``out`` once all finished.
    Returns {group: {"rows", "items", "same_image_rows"}} and the job's tasks and seconds."""
    from pyspark.sql import types as T

    from pipelines.spark import ship_package, spark_session

    search.close()
    parts = out / PARTS_DIR
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
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
    for name in sorted(written):
        os.replace(parts / name, out / name)
    parts.rmdir()
    by_group: dict = {}
    for row in rows:
        g = by_group.setdefault(row["group"], {"items": 0, "rows": 0, "same_image_rows": 0})
        for key in g:
            g[key] += row[key]
    return {"groups": by_group, "tasks": len(ranges), "seconds": round(seconds, 2)}
