"""The online hand-off at catalogue scale: each store side by side with DuckDB over the Parquet, in one run.

For each n (items, k = 20 neighbours each, synthetic lists published in a real warehouse):

- the whole hand-off per store (``lookalike.online.handoff.run_handoff`` with that store alone:
  published Parquet read and grouped into lists, written, counted, a 500-list sample compared
  with the Parquet rows, switched, retention) — ``handoff_s``, its write part as rows/s
  (``(item, rank)`` rows per second) and the switch alone (``switch_s``);
- lookup latency of one item's list as a site reads it (``store.lookup``: PostgreSQL one
  statement on the live view, Redis one round trip), with 1 and 8 concurrent reader processes,
  each looking up random items at ``--rate`` lookups per second (a site's request stream, not a
  closed loop: 8 processes looping flat out on 2 cores measure the scheduler's time slices, and
  ``--rate 0`` does exactly that) — p50 and p99 in ms; DuckDB the same over the published Parquet
  (``select … from read_parquet(files) where item_id = ?``, in-process);
- Redis memory per item (``used_memory`` before and after one generation of ``item_neighbors``);
- the writer's lease alone, taken and let go with no other writer (``lease_ms``): every hand-off,
  hour and rollback holds it;
- each figure again on a three-master Redis Cluster on loopback (``redis cluster``: the lists
  spread over its nodes by bucket, a lookup the pointer and then the field), memory summed over
  the nodes.

``--layouts`` also measures the layouts considered and not chosen, at the smallest n: PostgreSQL one
row per (item, rank) against one row per item with arrays (rows/s, bytes on disk, lookup p50), and
Redis one key per item, one hash per generation and table, and the 1,024 bucket hashes per
generation and table chosen (memory per item, time to remove a generation).

The servers are started here, on loopback (PostgreSQL 15 and Redis from Debian), and stopped at the
end; ``--postgres-url`` / ``--redis-url`` use running ones instead.

    .venv/bin/python benchmarks/handoff.py --n 100000 1000000 --layouts --json handoff.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]

K = 20


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_postgres(root: Path) -> tuple[str, callable]:
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    data, port = root / "pg", _port()
    root.mkdir(parents=True, exist_ok=True)
    shutil.chown(root, "postgres")
    as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "bench", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "pg.log"), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c shared_buffers=512MB "
                    "-c max_wal_size=4GB -c synchronous_commit=off", "start"], check=True, capture_output=True)

    def stop():
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
    return f"postgresql://bench@127.0.0.1:{port}/postgres", stop


def start_redis(root: Path) -> tuple[str, callable]:
    port = _port()
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(root),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return f"redis://127.0.0.1:{port}/0", lambda: (proc.terminate(), proc.wait())


def start_redis_cluster(root: Path) -> tuple[str, callable]:
    """Three masters on loopback, joined with ``redis-cli --cluster create``; the URL of one node."""
    import sys

    sys.path.insert(0, str(REPO))  # the tests' port picker: one place knows the cluster bus rule
    from tests.conftest import free_cluster_port

    ports, procs = [free_cluster_port() for _ in range(3)], []
    for port in ports:
        node = root / f"node{port}"
        node.mkdir(parents=True)
        procs.append(subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(node),
                                       "--save", "", "--appendonly", "no", "--cluster-enabled", "yes"],
                                      stdout=subprocess.DEVNULL))
    time.sleep(0.5)
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                    "--cluster-yes"], check=True, capture_output=True)
    while "cluster_state:ok" not in subprocess.run(["redis-cli", "-p", str(ports[0]), "cluster", "info"],
                                                   capture_output=True, text=True).stdout:
        time.sleep(0.2)

    def stop():
        for proc in procs:
            proc.terminate()
            proc.wait()
    return f"redis://127.0.0.1:{ports[0]}/0", stop


def synthetic_night(n: int, ds: str, seed: int) -> dict[str, pa.Table]:
    """item_neighbors for n items × K: random neighbours, descending scores (vectorised)."""
    from lookalike import schemas

    rng = np.random.default_rng(seed)
    ids = np.array([f"item-{i:08d}" for i in range(n)], dtype=object)
    neighbours = rng.integers(0, n - 1, size=(n, K))
    neighbours += neighbours >= np.arange(n)[:, None]  # never itself
    scores = -np.sort(-rng.random((n, K), dtype=np.float32), axis=1)
    return {"item_neighbors": pa.table({
        "ds": pa.array([ds] * (n * K)), "item_id": pa.array(np.repeat(ids, K)),
        "rank": pa.array(np.tile(np.arange(1, K + 1, dtype=np.int32), n)),
        "neighbor_id": pa.array(ids[neighbours.ravel()]), "score": pa.array(scores.ravel()),
        "same_image": pa.array(np.zeros(n * K, dtype=bool)), "model_version": pa.array(["v"] * (n * K))},
        schema=schemas.ITEM_NEIGHBORS)}


def _reader(args) -> list[float]:
    """One reader process: ``count`` lookups of random items; their latencies in ms."""
    kind, cfg_path, n, count, seed, files, rate = args
    rng = np.random.default_rng(seed)
    interval = 1 / rate if rate else 0.0
    keys = [f"item-{i:08d}" for i in rng.integers(0, n, size=count)]
    out = []
    if kind == "duckdb":
        import duckdb

        con = duckdb.connect()
        sql = f"select neighbor_id, score from read_parquet({files!r}) where item_id = ? order by rank"
        con.execute(sql, [keys[0]]).fetchall()
        for key in keys:
            _pace(interval)
            t = time.perf_counter()
            con.execute(sql, [key]).fetchall()
            out.append((time.perf_counter() - t) * 1000)
        return out
    from lookalike.config import load_config
    from lookalike.online.lists import BY_NAME
    from lookalike.online.handoff import open_store

    store = open_store(load_config(cfg_path, environ={}), kind)
    spec = BY_NAME["item_neighbors"]
    store.lookup(spec, (keys[0],))  # connect, prepare
    for key in keys:
        _pace(interval)
        t = time.perf_counter()
        found = store.lookup(spec, (key,))
        out.append((time.perf_counter() - t) * 1000)
        assert found is not None
    store.close()
    return out


def _pace(interval: float) -> None:
    """Wait out a random share of ``interval`` (readers' requests arrive spread out, not in step)."""
    if interval:
        time.sleep(interval * np.random.random() * 2)


def latency(kind: str, cfg_path: str, n: int, readers: int, count: int, files: list[str],
            rate: float) -> tuple[float, float]:
    with mp.get_context("spawn").Pool(readers) as pool:
        parts = pool.map(_reader, [(kind, cfg_path, n, count, seed, files, rate) for seed in range(readers)])
    values = np.concatenate(parts)
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def redis_memory(url: str) -> int:
    """``used_memory`` of the server, or summed over a cluster's masters."""
    import redis
    from redis.cluster import RedisCluster

    r = redis.Redis.from_url(url)
    if r.info("cluster").get("cluster_enabled"):
        per_node = RedisCluster.from_url(url).info("memory", target_nodes=RedisCluster.PRIMARIES)
        return sum(int(node["used_memory"]) for node in per_node.values())
    return int(r.info("memory")["used_memory"])


def lease_ms(cfg, sink: str, times: int = 20) -> float:
    """The writer's lease taken and let go with no other writer: the median, in ms."""
    from lookalike.online.handoff import open_store

    store = open_store(cfg, sink)
    took = []
    for _ in range(times):
        started = time.perf_counter()
        with store.lease("items"):
            pass
        took.append((time.perf_counter() - started) * 1000)
    store.close()
    return round(float(np.median(took)), 2)


def run_size(n: int, root: Path, urls: dict, lookups: int, rate: float) -> list[dict]:
    import yaml

    from lookalike.config import load_config
    from lookalike.online.handoff import run_handoff
    from lookalike.storage import Warehouse, write_parquet

    ds = "2026-11-01"
    wh_root = root / f"n{n}"
    rows = []
    night = synthetic_night(n, ds, seed=n)
    files = None
    for system, sink in (("postgres", "postgres"), ("redis", "redis"), ("redis cluster", "redis")):
        redis_url = urls["redis cluster" if system == "redis cluster" else "redis"]
        path = wh_root / f"{system.replace(' ', '-')}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"warehouse": str(wh_root / "warehouse"), "serving": {
            "sinks": sink, "tables": "item_neighbors", "postgres": {"url": urls["postgres"], "schema": f"n{n}"},
            "redis": {"url": redis_url, "prefix": f"n{n}"}}}))
        cfg = load_config(path, environ={})
        wh = Warehouse.of(cfg)
        if files is None:  # published once, as the nightly publish would (a real manifest switch)
            publication = wh.begin(ds)
            part = write_parquet(night["item_neighbors"], root / f"n{n}-part-0.parquet")
            publication.add("item_neighbors", [part], rows=n * K)
            publication.commit(retain=14)
            files = wh.partition_files("item_neighbors", ds)
        before = redis_memory(redis_url) if sink == "redis" else 0
        started = time.perf_counter()
        result = run_handoff(cfg, ds)["sinks"][sink]
        total = time.perf_counter() - started
        per_item = (redis_memory(redis_url) - before) / n if sink == "redis" else None
        p50_1, p99_1 = latency(sink, str(path), n, 1, lookups, files, rate)
        p50_8, p99_8 = latency(sink, str(path), n, 8, lookups, files, rate)
        rows.append({"n": n, "system": system, "handoff_s": round(total, 1), "write_s": result["write_s"],
                     "lease_ms": lease_ms(cfg, sink),
                     "rows_per_s": round(n * K / result["write_s"]), "switch_s": result["switch_s"],
                     "p50_1_ms": round(p50_1, 3), "p99_1_ms": round(p99_1, 3), "p50_8_ms": round(p50_8, 3),
                     "p99_8_ms": round(p99_8, 3), "bytes_per_item": round(per_item) if per_item else None})
        print(rows[-1], flush=True)
    few = max(50, lookups // 20)  # a Parquet scan per lookup: fewer of them
    p50_1, p99_1 = latency("duckdb", "", n, 1, few, files, rate)
    p50_8, p99_8 = latency("duckdb", "", n, 8, few, files, rate)
    rows.append({"n": n, "system": "duckdb over Parquet", "p50_1_ms": round(p50_1, 3), "p99_1_ms": round(p99_1, 3),
                 "p50_8_ms": round(p50_8, 3), "p99_8_ms": round(p99_8, 3)})
    print(rows[-1], flush=True)
    return rows


def layouts(n: int, urls: dict, lookups: int) -> list[dict]:
    """The layouts considered: PostgreSQL rows per (item, rank) vs arrays per item; Redis a key per item
    vs a hash per generation."""
    import psycopg
    import redis

    from lookalike.online.lists import BY_NAME, encode_json, lists_of

    night = synthetic_night(n, "2026-11-01", seed=7)["item_neighbors"]
    lists = lists_of(night, BY_NAME["item_neighbors"])
    out = []
    rng = np.random.default_rng(0)
    keys = [f"item-{i:08d}" for i in rng.integers(0, n, size=lookups)]
    with psycopg.connect(urls["postgres"], autocommit=True) as conn:
        for layout, create, copy_cols, lines, index, query in (
                ("postgres: a row per (item, rank)", "item_id text, rank int, neighbor_id text, score real",
                 "item_id, rank, neighbor_id, score",
                 lambda: "\n".join(f"{a}\t{b}\t{c}\t{d}" for a, b, c, d in zip(
                     *(night.column(x).to_pylist() for x in ("item_id", "rank", "neighbor_id", "score")))) + "\n",
                 "primary key (item_id, rank)", "select neighbor_id, score from t where item_id = %s order by rank"),
                ("postgres: a row per item, arrays (chosen)", "item_id text, ids text[], scores real[]",
                 "item_id, ids, scores", None, "primary key (item_id)", "select ids, scores from t where item_id = %s")):
            conn.execute("drop table if exists t")
            conn.execute(f"create table t ({create})")
            from lookalike.online.postgres_store import _copy_text

            text = lines() if lines else _copy_text(lists, BY_NAME["item_neighbors"]).decode()
            started = time.perf_counter()
            with conn.cursor() as cur, cur.copy(f"copy t ({copy_cols}) from stdin") as copy:
                copy.write(text)
            conn.execute(f"alter table t add {index}")
            written = time.perf_counter() - started
            size = conn.execute("select pg_total_relation_size('t')").fetchone()[0]
            times = []
            for key in keys:
                t = time.perf_counter()
                conn.execute(query, (key,), prepare=True).fetchall()
                times.append((time.perf_counter() - t) * 1000)
            out.append({"layout": layout, "rows_per_s": round(n * K / written), "bytes_per_item": round(size / n),
                        "p50_1_ms": round(float(np.percentile(times, 50)), 3)})
            print(out[-1], flush=True)
        conn.execute("drop table t")
    r = redis.Redis.from_url(urls["redis"])
    fields = lists.column("item_id").to_pylist()
    values = encode_json(lists, BY_NAME["item_neighbors"])
    from lookalike.online.redis_store import BUCKETS, bucket

    for layout in ("redis: a key per item", "redis: a hash per generation and table",
                   f"redis: {BUCKETS} bucket hashes per generation and table (chosen)"):
        r.flushdb()
        while r.info("memory")["lazyfree_pending_objects"]:  # the last layout's UNLINK still freeing
            time.sleep(0.1)
        before = r.info("memory")["used_memory"]
        pipe = r.pipeline(transaction=False)
        for start in range(0, n, 5000):
            chunk = dict(zip(fields[start:start + 5000], values[start:start + 5000]))
            if layout.endswith("per item"):
                pipe.mset({f"lay:g:1:{f}": v for f, v in chunk.items()})
            elif "bucket" in layout:
                for f, v in chunk.items():
                    pipe.hset(f"lay:g:1:{bucket(f)}", f, v)
            else:
                pipe.hset("lay:g:1", mapping=chunk)
            pipe.execute()
        per_item = (r.info("memory")["used_memory"] - before) / n
        started = time.perf_counter()
        if layout.endswith("per item"):
            for batch in _chunks(r.scan_iter(match="lay:g:1:*", count=5000), 5000):
                r.unlink(*batch)
        elif "bucket" in layout:
            r.unlink(*(f"lay:g:1:{b}" for b in range(BUCKETS)))
        else:
            r.unlink("lay:g:1")
        removed = time.perf_counter() - started
        out.append({"layout": layout, "bytes_per_item": round(per_item), "remove_generation_s": round(removed, 3)})
        print(out[-1], flush=True)
    r.flushdb()
    return out


def _chunks(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--lookups", type=int, default=2000, help="per reader process")
    parser.add_argument("--rate", type=float, default=200, help="lookups per second per reader (0: flat out)")
    parser.add_argument("--layouts", action="store_true", help="also measure the layouts not chosen (smallest n)")
    parser.add_argument("--postgres-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--redis-cluster-url", help="a node of a running Redis Cluster")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    from lookalike.tools.summary import format_table

    root = Path(tempfile.mkdtemp(prefix="lookalike-handoff-bench-"))
    root.chmod(0o755)  # the PostgreSQL server runs as postgres and keeps its files below
    stops = []
    urls = {"postgres": args.postgres_url, "redis": args.redis_url, "redis cluster": args.redis_cluster_url}
    try:
        if not urls["postgres"]:
            urls["postgres"], stop = start_postgres(root / "servers")
            stops.append(stop)
        if not urls["redis"]:
            urls["redis"], stop = start_redis(root)
            stops.append(stop)
        if not urls["redis cluster"]:
            urls["redis cluster"], stop = start_redis_cluster(root / "cluster")
            stops.append(stop)
        rows = [row for n in args.n for row in run_size(n, root, urls, args.lookups, args.rate)]
        alternatives = layouts(min(args.n), urls, args.lookups) if args.layouts else []
    finally:
        for stop in stops:
            stop()
        shutil.rmtree(root, ignore_errors=True)
    columns = ["n", "system", "handoff_s", "rows_per_s", "switch_s", "lease_ms", "p50_1_ms", "p99_1_ms", "p50_8_ms", "p99_8_ms",
               "bytes_per_item"]
    print()
    print(format_table(columns, [tuple(r.get(c) for c in columns) for r in rows]))
    if alternatives:
        columns = ["layout", "rows_per_s", "bytes_per_item", "p50_1_ms", "remove_generation_s"]
        print()
        print(format_table(columns, [tuple(r.get(c) for c in columns) for r in alternatives]))
    if args.json:
        Path(args.json).write_text(json.dumps({"sizes": rows, "layouts": alternatives}, indent=2))


if __name__ == "__main__":
    main()
