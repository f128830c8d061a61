"""The incremental neighbour update against a full rebuild, side by side in one run.

For each n: clustered synthetic unit vectors (``neighbors_scale.clustered_vectors``, k = 20,
dim 128), a first night searched in full by the stage's own code (``build_neighbors``: index planned,
built, tuned to recall 0.95, every item searched; its lists with their margin and its inverted file
kept). Then, for each change share c, a next night with c/3 of the items replaced by new ones, c/3
moved to new vectors and c/3 sold, computed both ways, each in a subprocess of its own (its peak RSS
its own, process start and loading the vectors excluded from the time):

- ``full``: ``build_neighbors`` on the next night's vectors (build, tune, search every item);
- ``full_same_index``: every item searched in a new index with the first night's settings (its
  nprobe, no tuning): "a full rebuild with the same index", what the update's recall is held to;
- ``incremental``: ``update_neighbors`` from the first night's lists (``neighbor_lists``) and its
  index carried forward.

Each writes what the stage writes: the item_neighbors rows to Parquet, the lists with their margin and
(full, incremental) the index for the next night, the same data either way. Seconds are reported as a
whole and split into writing those and computing them ("compute": for the update, reading the kept
lists and index included). recall@20 of each against exact search on 2,000 sampled items. 10M is
estimated from 100k and 1M (see docs/benchmarks.md). ``--index ivfpq`` or ``hnsw`` runs every night with
that index instead of the automatic choice (an inverted file): a compressed inverted file is carried
forward as the plain one is; a graph index cannot drop items, so the update builds and tunes a new one
for the fresh items' search. The "same index" rebuild uses the index the first night ended with and its
knob (exact search, where the first night's tuning found the approximate index not worth it).

    .venv/bin/python benchmarks/neighbors_incremental.py --n 100000 1000000 --changes 0.001 0.02 0.1
    .venv/bin/python benchmarks/neighbors_incremental.py --n 100000 --index ivfpq hnsw
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

K, DIM, MARGIN, SAMPLE = 20, 128, 10, 2000
MODES = ("full", "full_same_index", "incremental")


def _ids(n: int, prefix: str = "i"):
    import pyarrow as pa

    return pa.array([f"{prefix}{i:08d}" for i in range(n)])


def _config(seed: int, index: str):
    from lookalike.config import NeighborsConfig

    return NeighborsConfig(k=K, margin=MARGIN, device="cpu", seed=seed, index=index)


def first_night(n: int, folder: Path, seed: int, index: str) -> dict:
    """Vectors, lists and the kept index of the first night, into ``folder``."""
    from lookalike import schemas
    from lookalike.neighbors import update
    from lookalike.neighbors.output import ListsCollector, StreamingParquet
    from lookalike.neighbors.search import item_keys, rekey
    from lookalike.neighbors.stage import build_neighbors

    vectors = _pool(n, seed)[:n]
    ids = _ids(n)
    ncfg = _config(seed, index)

    def keep(index, plan, tuning):
        keys = item_keys(ids)
        rekey(index, keys)
        update.save_index(index, keys, folder / "index", {"kind": plan.kind, "knob": "nprobe",
                                                          "value": int(tuning["value"]), "built_on": "day1"})

    started = time.perf_counter()
    lists = ListsCollector(n, K + MARGIN)
    with StreamingParquet(folder / "day1.parquet", schemas.ITEM_NEIGHBORS) as rows:
        stats = build_neighbors(vectors, ids, ncfg=ncfg, on_sale=np.ones(n, bool), writer=rows, ds="day1",
                                version="v", lists_out=lists, keep_index=keep)
    lists.save(folder / "lists")
    (folder / "first.json").write_text(json.dumps(stats["groups"][0]))  # its index, knob and value
    return {"seconds": round(time.perf_counter() - started, 1), "index": stats["index"]}


def _pool(n: int, seed: int) -> np.ndarray:
    """The first night's n vectors and, after them, the new photos of the next nights: one catalogue's
    clusters (the same categories and sub-clusters), so what arrives looks like what is there."""
    from neighbors_scale import clustered_vectors

    return clustered_vectors(int(n * 1.1) + 10, DIM, seed=seed)


def next_day(n: int, change: float, seed: int) -> tuple:
    """(vectors, ids, on_sale, fresh) of the next night: change/3 replaced, moved and sold each."""
    rng = np.random.default_rng(seed + 7)
    pool = _pool(n, seed)
    vectors = pool[:n].copy()
    part = max(1, int(round(n * change / 3)))
    touched = rng.choice(n, 3 * part, replace=False)
    replaced, moved, sold = touched[:part], touched[part:2 * part], touched[2 * part:]
    others = pool[n:n + 2 * part]  # new photos from the same catalogue
    vectors[replaced], vectors[moved] = others[:part], others[part:]
    ids = np.array(_ids(n).to_pylist(), dtype=object)
    ids[replaced] = [f"n{i:08d}" for i in range(part)]
    order = np.argsort(ids, kind="stable")
    on_sale = ~np.isin(order, sold)
    fresh = np.isin(order, touched)
    return vectors[order], ids[order], on_sale, fresh


def worker(n: int, change: float, mode: str, folder: Path, seed: int, index: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lookalike import schemas
    from lookalike.neighbors import update
    from lookalike.neighbors.output import ListsCollector, StreamingParquet, positions_in
    from lookalike.neighbors.search import FlatSearcher, recall_at_k
    from lookalike.neighbors.stage import build_neighbors

    vectors, id_list, on_sale, fresh = next_day(n, change, seed)
    ids = pa.array(id_list.tolist())
    ncfg = _config(seed, index)
    out = folder / f"{mode}-{change}.parquet"
    started = time.perf_counter()
    lists_out = ListsCollector(n, K + MARGIN)
    with StreamingParquet(out, schemas.ITEM_NEIGHBORS) as rows:
        if mode == "full":
            stats = build_neighbors(vectors, ids, ncfg=ncfg, on_sale=on_sale, writer=rows, ds="day2", version="v",
                                    lists_out=lists_out)
        elif mode == "full_same_index":  # the full rebuild with the first night's index settings, untuned
            from lookalike.neighbors.output import neighbor_table
            from lookalike.neighbors.search import build_searcher, plan_index, search_blocks

            candidates = np.flatnonzero(on_sale)
            first = json.loads((folder / "first.json").read_text())  # the index the first night used
            plan = plan_index(len(candidates), DIM, kind=first["index"])
            searcher = build_searcher(vectors, candidates, plan, seed=seed)
            if not first.get("exact"):
                searcher.set_knob(first["value"])
            writing = 0.0
            for qpos, npos, scores, block in search_blocks(searcher, vectors, np.arange(n), K,
                                                           n_candidates=len(candidates), margin=MARGIN):
                t0 = time.perf_counter()
                rows.write_table(neighbor_table("day2", "v", ids, np.full(n, -1), qpos, npos, scores, K))
                lists_out.write(qpos, block)
                writing += time.perf_counter() - t0
            stats = {"index": [plan.kind], "groups": [{"write_seconds": writing}]}
        else:
            previous = update.carried_lists(folder / "lists", _ids(n), ids, positions_in(ids, _ids(n)))
            stats = update.update_neighbors(vectors, ids, ncfg=ncfg, on_sale=on_sale, previous=previous, fresh=fresh,
                                            writer=rows, lists_out=lists_out, ds="day2", version="v",
                                            kept_index=update.load_index(folder / "index"),
                                            index_out=folder / f"index-{change}")
        t0 = time.perf_counter()
    lists_out.save(folder / f"{mode}-{change}-lists")
    seconds = time.perf_counter() - started
    writing = sum(g.get("write_seconds", 0.0) for g in stats["groups"]) + time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(seed + 1000)
    queries = np.sort(rng.choice(np.flatnonzero(on_sale), size=min(SAMPLE, n), replace=False))
    _, exact = FlatSearcher(vectors, np.flatnonzero(on_sale)).search(vectors[queries], K + 1)
    wanted = ids.take(pa.array(queries))
    import pyarrow.compute as pc

    table = pq.read_table(out, columns=["item_id", "rank", "neighbor_id"], filters=pc.field("item_id").isin(wanted))
    position = {item: i for i, item in enumerate(id_list.tolist())}
    row_of = {q: r for r, q in enumerate(queries)}
    found = np.full((len(queries), K), -1, np.int64)
    for item, rank, neighbour in zip(*(table.column(c).to_pylist() for c in ("item_id", "rank", "neighbor_id"))):
        found[row_of[position[item]], rank - 1] = position[neighbour]
    return {"n": n, "change": change, "mode": mode, "seconds": round(seconds, 2),
            "compute_seconds": round(seconds - writing, 2), "write_seconds": round(writing, 2),
            "recall_at_20": round(recall_at_k(found, exact, queries, K), 4), "peak_rss_mb": round(peak_mb),
            "fresh": stats.get("fresh"), "ran_out": stats.get("ran_out"), "index": "+".join(stats["index"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--changes", type=float, nargs="+", default=[0.001, 0.02, 0.1])
    parser.add_argument("--index", nargs="+", default=["auto"], choices=["auto", "ivf", "ivfpq", "hnsw"],
                        help="neighbors.index of every night, one run each (auto: the stage's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--worker", nargs=4, metavar=("N", "CHANGE", "MODE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--first", nargs=2, metavar=("N", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    if args.worker:
        n, change, mode, folder = args.worker
        print(json.dumps(worker(int(n), float(change), mode, Path(folder), args.seed, args.index[0])))
        return
    if args.first:
        print(json.dumps(first_night(int(args.first[0]), Path(args.first[1]), args.seed, args.index[0])))
        return
    from lookalike.tools.summary import format_table

    rows = []
    for index, n in itertools.product(args.index, args.n):
        with tempfile.TemporaryDirectory() as tmp:
            first = _run(["--first", str(n), tmp], args.seed, index)
            print(f"n={n}: first night {first['seconds']} s ({'+'.join(first['index'])})", flush=True)
            for change in args.changes:
                runs = {mode: _run(["--worker", str(n), str(change), mode, tmp], args.seed, index) for mode in MODES}
                for mode in MODES:  # the recall gap: against the full rebuild with the same index settings
                    rows.append({**runs[mode],
                                 "compute_ratio": round(runs[mode]["compute_seconds"]
                                                        / runs["full"]["compute_seconds"], 3),
                                 "ratio": round(runs[mode]["seconds"] / runs["full"]["seconds"], 3),
                                 "recall_gap": round(runs[mode]["recall_at_20"]
                                                     - runs["full_same_index"]["recall_at_20"], 4)})
                    print(rows[-1], flush=True)
    columns = ["n", "change", "mode", "compute_seconds", "compute_ratio", "write_seconds", "seconds", "ratio",
               "recall_at_20", "recall_gap", "peak_rss_mb", "fresh",
               "ran_out", "index"]
    print()
    print(format_table(columns, [tuple(r.get(c) for c in columns) for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _run(extra: list[str], seed: int, index: str) -> dict:
    done = subprocess.run([sys.executable, __file__, *extra, "--seed", str(seed), "--index", index],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(extra)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
