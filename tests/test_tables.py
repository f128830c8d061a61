"""The table registry (``pipelines/tables.py``) is the one list of published tables: what is
derived from it follows it, and what is written by hand (the engines' DDL, the README's list)
fails here as soon as it drifts, including when a table is added to one place only."""
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from lookalike import schemas, tables

ROOT = Path(__file__).resolve().parents[1]
ENGINE_TYPES = {
    "spark": {pa.string(): "string", pa.float64(): "double", pa.float32(): "float", pa.int32(): "int",
              pa.int64(): "bigint", pa.bool_(): "boolean", pa.list_(pa.float32()): "array<float>"},
    "trino": {pa.string(): "varchar", pa.float64(): "double", pa.float32(): "real", pa.int32(): "integer",
              pa.int64(): "bigint", pa.bool_(): "boolean", pa.list_(pa.float32()): "array(real)"},
}


def ddl_tables(text: str) -> dict[str, list[tuple[str, str]]]:
    """``create table`` statements of a DDL script → {table: [(column, type)]}."""
    found = {}
    for name, body in re.findall(r"create table if not exists [^\s(]*?(\w+) \((.*?)\n\)", text, flags=re.S):
        found[name] = [tuple(line.strip().rstrip(",").split(" ", 1)) for line in body.strip().splitlines()]
    return found


def ddl_drift(text: str, engine: str, registry=tables.TABLES) -> list[str]:
    """What differs between the registry (with each table's Arrow schema) and a DDL script."""
    created = ddl_tables(text)
    names = [t.name for t in registry]
    problems = [f"{engine}: no create table for {n}" for n in names if n not in created]
    problems += [f"{engine}: {n} is not in the table registry" for n in created if n not in names]
    for table in registry:
        if table.name in created:
            arrow = getattr(schemas, table.schema)
            expected = [(f.name, ENGINE_TYPES[engine][f.type]) for f in arrow if f.name != "ds"]
            expected.append(("ds", ENGINE_TYPES[engine][pa.string()]))
            if created[table.name] != expected:
                problems.append(f"{engine}: {table.name} has columns {created[table.name]}, its schema {expected}")
    return problems


@pytest.mark.parametrize("engine", ["spark", "trino"])
def test_the_engines_ddl_creates_every_registered_table_with_its_schema(engine):
    assert ddl_drift((ROOT / "sql" / "ddl" / f"{engine}.sql").read_text(), engine) == []


@pytest.mark.parametrize("engine", ["spark", "trino"])
def test_a_table_added_to_one_place_only_is_drift(engine):
    text = (ROOT / "sql" / "ddl" / f"{engine}.sql").read_text()
    added = tables.TABLES + (replace(tables.BY_NAME["user_history"], name="user_sessions"),)
    assert ddl_drift(text, engine, added) == [f"{engine}: no create table for user_sessions"]
    extra = text + "\ncreate table if not exists x.user_sessions (\n    user_id string\n)\n"
    assert ddl_drift(extra, engine) == [f"{engine}: user_sessions is not in the table registry"]
    renamed = text.replace("    same_image boolean,\n", "    same_photo boolean,\n", 1)  # item_neighbors comes first
    assert [p.split(" has ")[0] for p in ddl_drift(renamed, engine)] == [f"{engine}: item_neighbors"]


def test_the_readme_lists_every_table_as_the_registry_describes_it():
    readme = (ROOT / "README.md").read_text()
    listed = re.findall(r"^\| `(\w+)` \| (.+?) \|$", readme.split("## Tables", 1)[1].split("\n## ", 1)[0], re.M)
    assert sorted(listed) == sorted((t.name, t.row) for t in tables.TABLES)


def test_what_is_derived_follows_the_registry(tmp_path):
    from lookalike.publish.stage import EXPERIMENT_TABLES, NIGHTLY_TABLES, USER_TABLES
    from lookalike.query import connect
    from lookalike.storage import PUBLISHED_TABLES, Warehouse

    assert PUBLISHED_TABLES == tuple(schemas.PUBLISHED) == tables.NAMES
    from lookalike.intraday.stage import TABLE as INTRADAY_TABLE

    assert set(NIGHTLY_TABLES) | set(EXPERIMENT_TABLES) | set(USER_TABLES) | {INTRADAY_TABLE} == set(tables.NAMES)
    assert tables.published_by(tables.INTRADAY) == (INTRADAY_TABLE,)
    assert "eval_metrics" in NIGHTLY_TABLES and "eval_metrics" not in USER_TABLES  # both DAGs write it; nightly first
    con = connect(Warehouse.at(tmp_path / "wh"))
    views = {row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()}
    assert {*tables.NAMES, *(f"{t}_all" for t in tables.NAMES), "item_neighbors_live"} <= views
    for table in tables.TABLES:  # an empty warehouse still binds every column
        columns = [r[0] for r in con.execute(f"describe {table.name}").fetchall()]
        assert columns == getattr(schemas, table.schema).names
    help_text = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "query", "--help"], capture_output=True,
                               text=True, cwd=ROOT, check=True).stdout
    assert all(t in " ".join(help_text.split()) for t in tables.NAMES)


def test_the_registry_imports_nothing_but_the_standard_library():
    code = "import sys, lookalike.tables; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('pyarrow', 'pandas', 'numpy', 'airflow', 'duckdb', 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
