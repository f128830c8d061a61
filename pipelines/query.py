"""``lookalike query``: read-only SQL over the published tables with DuckDB.

For each table, ``<table>_all`` is every published partition (files listed by the table's
manifest, so a publish in progress is never visible) and ``<table>`` its latest partition
(``sql/views/duckdb.sql``, applied to each table of the registry). Only read statements are accepted.
"""
from __future__ import annotations

import string

import duckdb
import pyarrow as pa

from lookalike import schemas
from lookalike.resources import sql_path
from lookalike.errors import LookalikeError
from lookalike.storage import PUBLISHED_TABLES, Warehouse

READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA}


class QueryError(LookalikeError):
    pass


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(warehouse: Warehouse) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the published tables as views.

    Local files are read by DuckDB itself; on S3 each table is an Arrow dataset over the
    manifest's files (DuckDB scans it lazily, pushing projections and filters down), since
    DuckDB's own S3 support is an extension that downloads at run time.
    """
    import pyarrow.fs

    con = duckdb.connect(":memory:")
    local = isinstance(warehouse.fs, pyarrow.fs.LocalFileSystem)
    for table in PUBLISHED_TABLES:
        files = warehouse.partition_files(table)
        if files and local:
            listing = "[" + ", ".join(_sql_literal(f) for f in files) + "]"
            con.execute(f"create view {table}_all as select * from read_parquet({listing}, union_by_name = true, hive_partitioning = false)")
        elif files:
            import pyarrow.dataset as pads
            import pyarrow.parquet as pq

            schema = pa.unify_schemas([pq.read_schema(f, filesystem=warehouse.fs) for f in files],
                                      promote_options="permissive")
            con.register(f"{table}_data", pads.dataset(files, schema=schema, filesystem=warehouse.fs, format="parquet"))
            con.execute(f"create view {table}_all as select * from {table}_data")
        else:  # nothing published yet: an empty relation with the table's columns, so queries still bind
            con.register(f"{table}_empty", schemas.PUBLISHED[table].empty_table())
            con.execute(f"create view {table}_all as select * from {table}_empty")
    view = string.Template(sql_path("views", "duckdb.sql").read_text())
    for table in PUBLISHED_TABLES:
        con.execute(view.substitute(table=table))
    con.execute(sql_path("views", "intraday.sql").read_text())  # item_neighbors_live: the night and its hours
    con.execute(sql_path("views", "experiments.sql").read_text())  # lookalike_bucket, lookalike_variant
    return con


def run_query(warehouse: Warehouse, sql: str, variables: dict[str, str] | None = None):
    """Execute read-only ``sql``; returns (column names, rows)."""
    con = connect(warehouse)
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {exc}") from None
    if not statements:
        raise QueryError("no SQL statement given")
    for st in statements:
        if st.type not in READ_ONLY:
            raise QueryError(f"only read-only queries are allowed; got a {st.type.name} statement")
    for name, value in (variables or {}).items():
        con.execute(f"set variable {name} = {_sql_literal(value)}")
    try:
        for st in statements[:-1]:
            con.execute(st)
        rel = con.execute(statements[-1])
        return [d[0] for d in rel.description], rel.fetchall()
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from None
