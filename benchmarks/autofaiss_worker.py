"""autofaiss's side of ``neighbors_scale.py --autofaiss PYTHON``, run by that interpreter.

autofaiss pins its own numpy, so it lives in a virtual environment of its own and this script
imports nothing of Lookalike's. It reads ``vectors.npy`` and ``queries.npy`` from the folder the
Lookalike run left, builds an index with ``autofaiss.build_index`` under the memory and
query-time budgets given, searches every vector for its k + 1 nearest (itself included) in
blocks, keeps the rows of the sampled queries in ``autofaiss_sample.npy`` for the recall, and
prints one JSON line: build and search seconds, the index autofaiss chose, peak RSS.

    <venv>/bin/python benchmarks/autofaiss_worker.py FOLDER --k 20 --memory 1G --query-ms 10
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--memory", default="1G", help="build_index's max_index_memory_usage")
    parser.add_argument("--available", default="4G", help="build_index's current_memory_available")
    parser.add_argument("--query-ms", type=float, default=10.0, help="build_index's max_index_query_time_ms")
    parser.add_argument("--block", type=int, default=16_384)
    args = parser.parse_args()

    import faiss
    from autofaiss import build_index

    vectors = np.load(args.folder / "vectors.npy")
    queries = np.load(args.folder / "queries.npy")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        index, infos = build_index(embeddings=vectors, index_path=os.path.join(tmp, "knn.index"),
                                   index_infos_path=os.path.join(tmp, "infos.json"), save_on_disk=False,
                                   metric_type="ip", max_index_memory_usage=args.memory,
                                   current_memory_available=args.available, max_index_query_time_ms=args.query_ms,
                                   min_nearest_neighbors_to_retrieve=args.k + 1, nb_cores=os.cpu_count(),
                                   verbose=logging.WARNING)
    build_seconds = time.perf_counter() - started
    faiss.omp_set_num_threads(os.cpu_count())
    sample = np.full((len(queries), args.k + 1), -1, np.int64)  # queries: sorted positions
    started = time.perf_counter()
    for start in range(0, len(vectors), args.block):  # every item searched, as the stage does
        _, pos = index.search(vectors[start:start + args.block], args.k + 1)
        rows = np.arange(start, start + len(pos))
        hit = np.isin(rows, queries)
        sample[np.searchsorted(queries, rows[hit])] = pos[hit]
    search_seconds = time.perf_counter() - started
    np.save(args.folder / "autofaiss_sample.npy", sample)
    print(json.dumps({"build_seconds": round(build_seconds, 1), "search_seconds": round(search_seconds, 1),
                      "seconds": round(build_seconds + search_seconds, 1),
                      "index_key": (infos or {}).get("index_key"), "index_param": (infos or {}).get("index_param"),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "memory": args.memory, "query_ms": args.query_ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
