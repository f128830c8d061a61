"""Quality checks a partition must pass before it is published. Each returns a list of failures.

The neighbour checks run in DuckDB over the staged Parquet files (or Arrow tables), so checking
a table of tens of millions of rows streams it instead of loading it as Python objects.
"""
from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCORE_TOLERANCE = 1e-4  # float32 dot products of unit vectors can exceed 1 by rounding

Source = pa.Table | list  # an Arrow table or a list of Parquet file paths


def register(con: duckdb.DuckDBPyConnection, name: str, source: Source) -> None:
    """``source`` as the view or table ``name`` of ``con``."""
    if isinstance(source, pa.Table):
        con.register(name, source)
    else:
        files = ", ".join("'" + str(f).replace("'", "''") + "'" for f in source)
        con.execute(f"create view {name} as select * from read_parquet([{files}], hive_partitioning = false)")


def _rising_scores(con: duckdb.DuckDBPyConnection, table: str, key: str) -> int:
    """Rows whose score is above the previous rank's for the same ``key`` (beyond rounding)."""
    return con.execute(f"""select count(*) from (select score - lag(score) over (partition by {key} order by rank)
                           as d from {table}) where d > {SCORE_TOLERANCE}""").fetchone()[0]


def check_neighbors(neighbors: Source, *, k: int, active: Source, embedded: Source,
                    arm: tuple[str, str] | None = None) -> list[str]:
    """k rows per item, ranks 1..k, descending scores in [-1, 1], no self, no neighbour off sale,
    no item without an embedding. ``active`` and ``embedded`` hold an ``item_id`` column. With
    ``arm`` = (experiment, variant), ``neighbors`` is item_neighbors_variants and the checks run
    on that arm's rows, each failure named with it."""
    con = duckdb.connect(":memory:")
    for name, source in (("n_all" if arm else "n", neighbors), ("active", active), ("embedded", embedded)):
        register(con, name, source)
    if arm:
        experiment, variant = (value.replace("'", "''") for value in arm)  # a view cannot take parameters
        con.execute(f"create view n as select * from n_all where experiment = '{experiment}' and variant = '{variant}'")

    def one(sql: str):
        return con.execute(sql).fetchone()

    if one("select count(*) from n")[0] == 0:
        return [f"item_neighbors_variants has no rows for {arm[0]}/{arm[1]}" if arm else "item_neighbors is empty"]
    failures = _neighbor_failures(one, con, k)
    return [f"item_neighbors_variants {arm[0]}/{arm[1]}: {f}" for f in failures] if arm else failures


def _neighbor_failures(one, con: duckdb.DuckDBPyConnection, k: int) -> list[str]:
    failures = []
    wrong_count, wrong_ranks = one(f"""
        select count(*) filter (where c <> {k}),
               count(*) filter (where c = {k} and (lo <> 1 or hi <> {k} or distinct_ranks <> {k}))
        from (select item_id, count(*) c, min(rank) lo, max(rank) hi, count(distinct rank) distinct_ranks
              from n group by item_id)""")
    if wrong_count:
        failures.append(f"{wrong_count} items do not have exactly k={k} neighbours")
    if wrong_ranks:
        failures.append(f"{wrong_ranks} items do not have ranks 1..{k}")
    rising = _rising_scores(con, "n", "item_id")
    if rising:
        failures.append(f"scores are not descending by rank for {rising} rows")
    own = one("select count(*) from n where item_id = neighbor_id")[0]
    if own:
        failures.append(f"{own} items list themselves as a neighbour")
    off_sale, examples = one("""select count(distinct neighbor_id), list(distinct neighbor_id order by neighbor_id)[1:3]
                                from n where not exists (select 1 from active a where a.item_id = n.neighbor_id)""")
    if off_sale:
        failures.append(f"{off_sale} neighbours are not on sale, e.g. {examples}")
    bad = one(f"select count(*) from n where score is null or not isfinite(score) or abs(score) > 1 + {SCORE_TOLERANCE}")[0]
    if bad:
        failures.append(f"{bad} scores outside [-1, 1] or not finite")
    unknown = one("""select count(distinct item_id) from n
                     where not exists (select 1 from embedded e where e.item_id = n.item_id)""")[0]
    if unknown:
        failures.append(f"{unknown} items have neighbours but no embedding")
    return failures


def check_recommendations(recs: Source, *, k: int, on_sale: pa.Array) -> list[str]:
    """At most k items per user, ranks 1..n, descending scores, no item twice, every item on sale."""
    con = duckdb.connect(":memory:")
    register(con, "r", recs)
    con.register("on_sale", pa.table({"item_id": on_sale}))

    def one(sql: str):
        return con.execute(sql).fetchone()

    failures = []
    too_many, wrong_ranks, repeated = one(f"""
        select count(*) filter (where c > {k}), count(*) filter (where lo <> 1 or hi <> c or distinct_ranks <> c),
               count(*) filter (where distinct_items <> c)
        from (select user_id, count(*) c, min(rank) lo, max(rank) hi, count(distinct rank) distinct_ranks,
                     count(distinct item_id) distinct_items from r group by user_id)""")
    if too_many:
        failures.append(f"{too_many} users have more than k={k} recommendations")
    if wrong_ranks:
        failures.append(f"{wrong_ranks} users do not have ranks 1..n")
    if repeated:
        failures.append(f"{repeated} users are recommended an item twice")
    rising = _rising_scores(con, "r", "user_id")
    if rising:
        failures.append(f"scores are not descending by rank for {rising} rows")
    off_sale, examples = one("""select count(distinct item_id), list(distinct item_id order by item_id)[1:3] from r
                                where not exists (select 1 from on_sale s where s.item_id = r.item_id)""")
    if off_sale:
        failures.append(f"{off_sale} recommended items are not on sale, e.g. {examples}")
    return failures


def check_embeddings(files: list) -> list[str]:
    """Unique item ids, one dimension, finite L2-normalised vectors — read batch by batch."""
    failures, seen, dims, rows, bad = [], set(), set(), 0, 0
    duplicates = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=["item_id", "embedding"]):
            ids = batch.column(0).to_pylist()
            duplicates += len(ids) - len(set(ids)) + len(seen.intersection(ids))
            seen.update(ids)
            rows += batch.num_rows
            lengths = pc.list_value_length(batch.column(1)).to_numpy(zero_copy_only=False)
            dims.update(np.unique(lengths).tolist())
            if len(dims) == 1 and batch.num_rows:
                vectors = batch.column(1).flatten().to_numpy(zero_copy_only=False).astype(np.float32)
                vectors = vectors.reshape(batch.num_rows, -1)
                norms = np.linalg.norm(vectors, axis=1)
                bad += int((~np.isfinite(vectors).all(axis=1) | (np.abs(norms - 1) > 1e-3)).sum())
    if rows == 0:
        return ["item_embeddings is empty"]
    if duplicates:
        failures.append(f"{duplicates} duplicate item_id in item_embeddings")
    if len(dims) != 1:
        failures.append(f"embeddings have different dimensions: {sorted(dims)}")
    elif bad:
        failures.append(f"{bad} embeddings are not finite, L2-normalised vectors")
    return failures


def check_rows(rows: int, name: str) -> list[str]:
    return [] if rows else [f"{name} is empty"]
