"""The published tables, in one place: each table's name, what one row is, its keys, its Arrow
schema (by name, in :mod:`lookalike.schemas`), the DAGs that publish it and its Airflow Asset.

Everything that lists tables is derived from here: the publish lists (:mod:`lookalike.publish.stage`),
the DAG outlets and Assets (:mod:`lookalike.orchestration.dag_common`), the DuckDB views (``sql/views/duckdb.sql``
is applied per table), the CLI's help, ``schemas.PUBLISHED``. What cannot be derived, the Spark and
Trino DDL of ``sql/ddl/`` and the README's table list, is checked against it by
``tests/test_tables.py``, which fails on drift. Adding a table is one entry here, its schema in
``schemas.py``, its producer, and its DDL.

Standard library only: DAG files import this at parse time.
"""
from __future__ import annotations

from dataclasses import dataclass

NIGHTLY = "lookalike_nightly"
USER_RECS = "lookalike_user_recs"
INTRADAY = "lookalike_intraday"


@dataclass(frozen=True)
class Table:
    name: str
    row: str  # what one row is, for people: "item and rank: …"
    keys: tuple[str, ...]  # unique within a ds
    schema: str  # the name of its Arrow schema in lookalike.schemas
    dags: tuple[str, ...]  # the DAGs whose publish writes it (the first writes it first each night)
    # Handed to the online stores (docs/serving.md) with this feed, items | users, as one list per key
    # (its keys but the rank) of ``member``, in rank order; empty: warehouse only
    feed: str = ""
    member: str = ""

    @property
    def asset_name(self) -> str:
        return f"lookalike.{self.name}"

    @property
    def asset_uri(self) -> str:
        return f"lookalike://warehouse/{self.name}"


TABLES: tuple[Table, ...] = (
    Table("listings_snapshot", "listing of the training window", ("item_id",), "LISTINGS_SNAPSHOT", (NIGHTLY,)),
    Table("catalog", "on-sale listing: the items embedded and offered", ("item_id",), "LISTINGS_SNAPSHOT", (NIGHTLY,)),
    Table("quarantine", "row left out, and why", (), "QUARANTINE", (NIGHTLY,)),
    Table("item_embeddings", "on-sale item: the served model's embedding", ("item_id",), "ITEM_EMBEDDINGS", (NIGHTLY,)),
    Table("item_neighbors", "item and rank: its top-k on-sale neighbours, with the cosine score",
          ("item_id", "rank"), "ITEM_NEIGHBORS", (NIGHTLY,), "items", "neighbor_id"),
    Table("item_neighbors_intraday", "item and rank: a list the hours changed since the night ds (rank 0: withdrawn)",
          ("item_id", "rank"), "ITEM_NEIGHBORS_INTRADAY", (INTRADAY,)),
    Table("item_neighbors_variants", "experiment, variant, item and rank: each arm's top-k, as item_neighbors",
          ("experiment", "variant", "item_id", "rank"), "ITEM_NEIGHBORS_VARIANTS", (NIGHTLY,), "items", "neighbor_id"),
    Table("experiment_variants", "experiment and variant: what the arm serves and its users' hash buckets",
          ("experiment", "variant"), "EXPERIMENT_VARIANTS", (NIGHTLY,)),
    Table("ab_results", "experiment, variant and metric: the A/B analysis of the logs, lift with 95% interval",
          ("experiment", "variant", "metric"), "AB_RESULTS", (NIGHTLY,)),
    Table("eval_metrics", "system, metric, k and segment: the offline evaluations, with 95% intervals",
          ("system", "metric", "k", "segment"), "EVAL_METRICS", (NIGHTLY, USER_RECS)),
    Table("user_recommendations", "user and rank: the user model's recommendations", ("user_id", "rank"),
          "USER_RECOMMENDATIONS", (USER_RECS,), "users", "item_id"),
    Table("user_history", "user and step: what the user model read", ("user_id", "step"), "USER_HISTORY",
          (USER_RECS,)),
)

BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
HANDED_OFF: tuple[str, ...] = tuple(t.name for t in TABLES if t.feed)  # what serving.tables may name


def published_by(dag: str) -> tuple[str, ...]:
    """The tables ``dag``'s publish task commits."""
    return tuple(t.name for t in TABLES if dag in t.dags)
