"""``lookalike ddl``: the published tables as external Parquet tables for Spark SQL or Trino.

The ``create table`` statements live in ``sql/ddl/<engine>.sql``; this module fills in the
warehouse location and appends the partition statements of the warehouse manifest: every
published ds registered at its run folder (a rerun of a ds moves the registration to the new
run), every ds removed by retention dropped. The output is a script to run after each publish;
for Spark it is idempotent.
"""
from __future__ import annotations

from string import Template

from lookalike.errors import LookalikeError
from lookalike.resources import sql_path
from lookalike.storage import PUBLISHED_TABLES, Warehouse

ENGINES = ("spark", "trino")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _spark_location(location: str) -> str:
    return "s3a://" + location.removeprefix("s3://") if location.startswith("s3://") else location


def render_ddl(wh: Warehouse, engine: str, *, schema: str = "lookalike", catalog: str = "hive") -> str:
    """The engine's DDL script for the warehouse ``wh`` as published now."""
    if engine not in ENGINES:
        raise LookalikeError(f"--engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    location = wh.display()
    if engine == "spark":
        location = _spark_location(location)
    script = Template(sql_path("ddl", f"{engine}.sql").read_text()).substitute(
        schema=schema, catalog=catalog, warehouse=location.rstrip("/"))
    lines = ["", "-- Partitions, from the warehouse manifest "
                 f"(generation {wh.manifest()['generation']})."]
    for table in PUBLISHED_TABLES:
        for ds, entry in wh.entries(table).items():
            where = _quote(f"{location}/{table}/{entry['path']}")
            if engine == "spark":
                lines += [f"alter table {schema}.{table} add if not exists partition (ds = {_quote(ds)}) location {where};",
                          f"alter table {schema}.{table} partition (ds = {_quote(ds)}) set location {where};"]
            else:
                args = f"{_quote(schema)}, {_quote(table)}, array['ds'], array[{_quote(ds)}]"
                lines += [f"call {catalog}.system.unregister_partition({args});",
                          f"call {catalog}.system.register_partition({args}, {where});"]
        for ds in wh.retired(table):
            if engine == "spark":
                lines.append(f"alter table {schema}.{table} drop if exists partition (ds = {_quote(ds)});")
            else:
                lines.append(f"call {catalog}.system.unregister_partition({_quote(schema)}, {_quote(table)}, "
                             f"array['ds'], array[{_quote(ds)}]);")
    return script.rstrip() + "\n" + "\n".join(lines) + "\n"


def statements(script: str) -> list[str]:
    """The script's statements, comments dropped (for engines' one-statement-per-call APIs)."""
    body = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]
