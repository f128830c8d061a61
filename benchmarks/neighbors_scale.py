"""Neighbour tables at catalogue scale: the automatic index against exact search, in one run.

For each (n, dim), in a subprocess of its own (so its peak RSS is its own):

- the stage's own code path (``lookalike.neighbors.stage.build_neighbors``: index planned by
  size, built, tuned to ``neighbors.recall_target`` on a query sample, every item searched in
  blocks, rows streamed into a Parquet file) over n vectors, all on sale, k = 20 — ``seconds``;
- exact search (FAISS blocked inner product over every candidate) on a sample of 2,000 queries,
  timed and **extrapolated** to all n queries — ``exact_seconds`` (``exact_extrapolated``: true);
- recall@20 of the written table against that exact search, on the same 2,000 sampled queries
  (a different sample from the one the stage tuned on);
- peak RSS of the subprocess (``ru_maxrss``: data, index, libraries, everything), with the
  bound 2 x raw vectors + 1 GB beside it.

Data: clustered synthetic unit vectors (``--data synthetic``, the only kind at these sizes: the
CPU model embeds in 64-d): 1 category per 20k items, 1 sub-cluster per 100 items with
log-normal sizes, points at cosine ~0.86 from their sub-cluster centre (``--spread 0.6``), so
that top-20 scores (~0.75-0.8) look like the sample marketplace's; a larger ``--spread``
loosens the clusters and makes every approximate index work harder. Structureless random data is the worst case for
any approximate index and is not what embeddings look like; ``--data random`` runs it anyway.

    .venv/bin/python benchmarks/neighbors_scale.py --n 100000 1000000 --dim 128 256 --json out.json

Side by side with the usual choice: ``--autofaiss PYTHON`` runs autofaiss (``build_index`` under
``--autofaiss-memory`` and each ``--autofaiss-query-ms``, then every item searched for its
k + 1 nearest in blocks) on the same vectors, in its own virtual environment (its numpy pin
differs from Lookalike's), with recall@20 on the same sampled queries against the same exact
lists. Lookalike's seconds include writing the table; autofaiss's are build and search only.

    python3 -m venv /tmp/autofaiss && /tmp/autofaiss/bin/pip install autofaiss 'pyarrow<18'
    .venv/bin/python benchmarks/neighbors_scale.py --n 1000000 --dim 128 --autofaiss /tmp/autofaiss/bin/python

With one (n, dim) the JSON file holds a list of one object per system.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

K = 20
SAMPLE = 2000


def clustered_vectors(n: int, dim: int, *, kind: str = "synthetic", spread: float = 0.6, seed: int = 0,
                      chunk: int = 65_536) -> np.ndarray:
    """(n, dim) float32 unit vectors, generated in chunks (memory: the array plus one chunk).

    ``spread``: a point's noise relative to its sub-cluster centre (cosine to it ~1/sqrt(1+spread²)).
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    if kind == "random":
        for start in range(0, n, chunk):
            out[start:start + chunk] = unit(rng.normal(size=(min(chunk, n - start), dim)))
        return out
    categories = unit(rng.normal(size=(max(10, n // 20_000), dim)))
    subs = max(1, n // 100)
    sub_centres = unit(categories[rng.integers(0, len(categories), subs)]
                       + 0.8 * rng.normal(size=(subs, dim)) / np.sqrt(dim)).astype(np.float32)
    weights = rng.lognormal(0, 1, subs)
    weights /= weights.sum()
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        members = rng.choice(subs, size=m, p=weights)
        out[start:start + m] = unit(sub_centres[members] + spread * rng.normal(size=(m, dim)) / np.sqrt(dim))
    return out


def worker(n: int, dim: int, data: str, spread: float, index: str, seed: int, save: Path | None = None) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from lookalike import schemas
    from lookalike.config import NeighborsConfig
    from lookalike.neighbors.search import FlatSearcher, recall_at_k
    from lookalike.neighbors.stage import StreamingParquet, build_neighbors

    vectors = clustered_vectors(n, dim, kind=data, spread=spread, seed=seed)
    ids = pa.array([f"i{i:08d}" for i in range(n)])
    ncfg = NeighborsConfig(k=K, index=index, device="cpu", seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "item_neighbors.parquet"
        started = time.perf_counter()
        with StreamingParquet(out, schemas.ITEM_NEIGHBORS) as writer:
            stats = build_neighbors(vectors, ids, ncfg=ncfg, on_sale=np.ones(n, bool), writer=writer, ds="bench",
                                    version="bench")
        seconds = time.perf_counter() - started

        rng = np.random.default_rng(seed + 1000)
        queries = np.sort(rng.choice(n, size=min(SAMPLE, n), replace=False))
        t0 = time.perf_counter()
        _, exact = FlatSearcher(vectors, np.arange(n)).search(vectors[queries], K + 1)
        exact_sample_seconds = time.perf_counter() - t0

        if save is not None:  # for the autofaiss run: the same vectors, queries and exact lists
            np.save(save / "vectors.npy", vectors)
            np.save(save / "queries.npy", queries)
            np.save(save / "exact.npy", exact)
        wanted = ids.take(pa.array(queries))
        table = pq.read_table(out, columns=["item_id", "rank", "neighbor_id"],
                              filters=pc.field("item_id").isin(wanted)).sort_by([("item_id", "ascending"),
                                                                                 ("rank", "ascending")])
        written = np.full((len(queries), K), -1, np.int64)  # positions, from the ids "i<position>"
        row_of = {q: r for r, q in enumerate(queries)}
        for item, rank, neighbour in zip(*(table.column(c).to_pylist() for c in ("item_id", "rank", "neighbor_id"))):
            written[row_of[int(item[1:])], rank - 1] = int(neighbour[1:])
        recall = recall_at_k(written, exact, queries, K)

    group = stats["groups"][0]
    exact_seconds = exact_sample_seconds * n / len(queries)
    raw_mb = n * dim * 4 / 2**20
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n, "dim": dim, "data": data, "spread": spread if data == "synthetic" else None, "index": group["index"], "index_reason": group["reason"],
        "nlist": group.get("nlist"), "knob": group.get("knob"), "knob_value": group.get("value"),
        "tuned_recall_at_20": group["recall_at_k"], "tuned_recall_low": group.get("recall_low"),
        "seconds": round(seconds, 1), "build_seconds": group["build_seconds"],
        "tune_seconds": group["tune_seconds"], "search_seconds": group["search_seconds"],
        "exact_seconds": round(exact_seconds, 1), "exact_extrapolated": len(queries) < n,
        "exact_sample": len(queries), "exact_sample_seconds": round(exact_sample_seconds, 2),
        "speedup": round(exact_seconds / seconds, 2), "recall_at_20": round(recall, 4),
        "peak_rss_mb": round(peak_mb), "raw_vectors_mb": round(raw_mb),
        "rss_bound_mb": round(2 * raw_mb + 1024), "rows": stats["rows"],
    }


def run_autofaiss(python: str, folder: Path, n: int, dim: int, memory: str, query_ms: float) -> dict:
    """``autofaiss_worker.py`` in autofaiss's own environment on the vectors the Lookalike run saved;
    its recall@20 on the same sampled queries, against the same exact lists."""
    from lookalike.neighbors.search import recall_at_k

    proc = subprocess.run([python, str(Path(__file__).with_name("autofaiss_worker.py")), str(folder), "--k", str(K),
                           "--memory", memory, "--query-ms", str(query_ms)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"autofaiss failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    queries, exact = np.load(folder / "queries.npy"), np.load(folder / "exact.npy")
    recall = recall_at_k(np.load(folder / "autofaiss_sample.npy"), exact, queries, K)
    return {"system": "autofaiss", "n": n, "dim": dim, **result, "recall_at_20": round(recall, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, nargs="+", default=[128])
    parser.add_argument("--data", choices=["synthetic", "random"], default="synthetic")
    parser.add_argument("--spread", type=float, default=0.6,
                        help="synthetic: noise around each sub-cluster centre (larger = harder for any index)")
    parser.add_argument("--index", default="auto", help="neighbors.index (default: the automatic choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--autofaiss", metavar="PYTHON",
                        help="also run autofaiss's build_index + every item searched on the same vectors, with "
                             "this interpreter (a virtual environment with autofaiss installed)")
    parser.add_argument("--autofaiss-memory", default="1G", help="its max_index_memory_usage")
    parser.add_argument("--autofaiss-query-ms", type=float, nargs="+", default=[10.0],
                        help="its max_index_query_time_ms (several: one autofaiss row each)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.n[0], args.dim[0], args.data, args.spread, args.index, args.seed, args.save)))
        return 0

    results = []
    for n in args.n:
        for dim in args.dim:
            print(f"n={n:,} dim={dim} ({args.data}, spread {args.spread}) …", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix="neighbors-scale-") as tmp:
                proc = subprocess.run([sys.executable, __file__, "--worker", "--n", str(n), "--dim", str(dim),
                                       "--data", args.data, "--spread", str(args.spread), "--index", args.index,
                                       "--seed", str(args.seed), *(["--save", tmp] if args.autofaiss else [])],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                results.append({"system": "lookalike", **json.loads(proc.stdout.strip().splitlines()[-1])})
                for query_ms in args.autofaiss_query_ms if args.autofaiss else []:
                    print(f"  autofaiss (max_index_memory_usage {args.autofaiss_memory}, max_index_query_time_ms "
                          f"{query_ms:g}) …", file=sys.stderr, flush=True)
                    results.append(run_autofaiss(args.autofaiss, Path(tmp), n, dim, args.autofaiss_memory, query_ms))
            if args.json:  # written after every run: a long sweep keeps what it measured
                args.json.write_text(json.dumps(results, indent=2))

    header = ["system", "n", "dim", "index", "knob", "seconds", "exact s (extrapolated)", "speedup", "recall@20",
              "peak RSS MB", "bound MB"]
    exact_s = {(r["n"], r["dim"]): r["exact_seconds"] for r in results if r["system"] == "lookalike"}
    rows = []
    for r in results:
        if r["system"] == "lookalike":
            index, knob = r["index"], f"{r['knob']}={r['knob_value']}" if r["index"] != "flat" else "-"
            bound = r["rss_bound_mb"]
        else:
            index, knob = r["index_key"], r["index_param"] or "-"
            bound = f"{r['memory']} index, {r['query_ms']:g} ms/query"
        exact = exact_s[(r["n"], r["dim"])]
        rows.append([r["system"], f"{r['n']:,}", r["dim"], index, knob, r["seconds"], exact,
                     f"{exact / r['seconds']:.1f}x", f"{r['recall_at_20']:.3f}", r["peak_rss_mb"], bound])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
