"""`lookalike ddl`: the Spark SQL script runs on a real Spark session and follows the manifest."""
import uuid

import pyarrow as pa
import pytest

from lookalike import schemas
from lookalike.tools.ddl import render_ddl, statements
from lookalike.storage import Warehouse, write_parquet

D1, D2 = "2026-11-20", "2026-11-21"
SPARK_TYPES = {pa.string(): "string", pa.float64(): "double", pa.float32(): "float", pa.int32(): "int",
               pa.int64(): "bigint", pa.bool_(): "boolean", pa.list_(pa.float32()): "array<float>"}


def _publish(wh, tmp_path, ds, items, *, retain=5):
    rows = [{"ds": ds, "item_id": f"i{i}", "rank": 1, "neighbor_id": f"i{i + 1}", "score": 0.5, "same_image": False,
             "model_version": "v"} for i in range(items)]
    path = write_parquet(pa.Table.from_pylist(rows, schema=schemas.ITEM_NEIGHBORS),
                         tmp_path / "staged" / uuid.uuid4().hex / "part-0.parquet")
    publication = wh.begin(ds)
    publication.add("item_neighbors", [path], rows=items)
    publication.commit(retain=retain)


@pytest.fixture
def spark(cfg):
    from lookalike.spark import spark_session

    return spark_session(cfg)


def _run(spark, script):
    for statement in statements(script):
        spark.sql(statement)


def test_spark_reads_each_published_partition_at_its_run_and_follows_reruns(spark, tmp_path):
    wh = Warehouse.at(tmp_path / "wh")
    _publish(wh, tmp_path, D1, 2)
    _publish(wh, tmp_path, D2, 3)
    schema = f"lk_{uuid.uuid4().hex[:8]}"
    try:
        _run(spark, render_ddl(wh, "spark", schema=schema))
        counts = dict(spark.sql(f"select ds, count(*) from {schema}.item_neighbors group by ds").collect())
        assert counts == {D1: 2, D2: 3}

        # every table's columns and types are the published Parquet schema's (ds last, as the partition)
        for table, arrow in schemas.PUBLISHED.items():
            got = [(f.name, f.dataType.simpleString()) for f in spark.table(f"{schema}.{table}").schema]
            expected = [(f.name, SPARK_TYPES[f.type]) for f in arrow if f.name != "ds"] + [("ds", "string")]
            assert got == expected, table

        # a rerun of D2 and retention of one partition: the same script moves D2 and drops D1
        _publish(wh, tmp_path, D2, 1, retain=1)
        script = render_ddl(wh, "spark", schema=schema)
        assert f"drop if exists partition (ds = '{D1}')" in script
        _run(spark, script)
        spark.catalog.refreshTable(f"{schema}.item_neighbors")
        counts = dict(spark.sql(f"select ds, count(*) from {schema}.item_neighbors group by ds").collect())
        assert counts == {D2: 1}
        _run(spark, script)  # idempotent
    finally:
        spark.sql(f"drop schema if exists {schema} cascade")


def test_trino_script_registers_each_partition_at_its_run(tmp_path):
    wh = Warehouse.at(tmp_path / "wh")
    _publish(wh, tmp_path, D1, 2)
    script = render_ddl(wh, "trino", schema="lk", catalog="hive")
    run = wh.entries("item_neighbors")[D1]["path"]
    assert f"external_location = '{tmp_path}/wh/item_neighbors'" in script
    assert (f"call hive.system.register_partition('lk', 'item_neighbors', array['ds'], array['{D1}'], "
            f"'{tmp_path}/wh/item_neighbors/{run}');") in script
    assert "${" not in script
