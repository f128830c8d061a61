"""The nightly pipeline on real services: PostgreSQL as the listings source, S3 (moto's server on
loopback) as the image store and the warehouse, Airflow running the DAG."""
import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from lookalike.config import load_config
from lookalike.storage import Warehouse
from lookalike.tables import NIGHTLY, USER_RECS, published_by
from tests.conftest import DS, write_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _lookalike(*args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)
    assert proc.returncode == 0, f"lookalike {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_the_nightly_dag_on_postgres_and_s3(s3, postgres_url, tmp_path):
    client = boto3.client("s3")
    client.create_bucket(Bucket="images")
    client.create_bucket(Bucket="lake")
    seeded = _lookalike("sample-data", "--out", str(tmp_path / "sample"), "--items", "400", "--users", "120",
                        "--days", "120", "--seed", "1", "--end", DS, "--load-into", postgres_url,
                        "--upload-images", "s3://images/sample")
    assert "Loaded 400 listings" in seeded and "to s3://images/sample" in seeded
    with sa.create_engine(postgres_url).connect() as con:
        assert con.execute(sa.text("select data_type from information_schema.columns where table_name = 'listings' "
                                   "and column_name = 'created_at'")).scalar() == "timestamp without time zone"

    config = write_config(tmp_path, tmp_path / "sample", source={"url": postgres_url, "images": "s3://images/sample"},
                          warehouse="s3://lake/warehouse", work_dir=str(tmp_path / "work"),
                          experiments={"look": {"variants": {"baseline": {"serve": "image_baseline", "share": 0.5},
                                                             "served": {"serve": "production", "share": 0.5}}}})
    stdout = _lookalike("run", "--config", str(config), "--ds", DS)
    assert "── task publish" in stdout and "Published tables:" in stdout

    wh = Warehouse.of(load_config(config, environ={}))
    assert all(DS in wh.entries(t) for t in (*published_by(NIGHTLY), *published_by(USER_RECS)))  # not the hours
    assert not (tmp_path / "warehouse").exists()

    def query(sql):
        return json.loads(_lookalike("query", "--config", str(config), "--format", "json", sql, timeout=300))

    counts = query("select count(*) as rows, count(distinct item_id) as items from item_neighbors")[0]
    assert counts["items"] > 100 and counts["rows"] == 5 * counts["items"]
    arms = query("select variant, count(*) as rows from item_neighbors_variants group by variant order by variant")
    assert [a["variant"] for a in arms] == ["baseline", "served"] and {a["rows"] for a in arms} == {counts["rows"]}
    assert query("select lookalike_variant('look', 'u00001') as v")[0]["v"] in {"baseline", "served"}
    reasons = {r["reason"] for r in query("select distinct reason from quarantine")}
    assert any(r.startswith("image file not found") for r in reasons)  # a listing whose photo is not in the bucket
    with sa.create_engine(postgres_url).connect() as con:
        on_sale = con.execute(sa.text("select count(*) from listings where status = 'on_sale'")).scalar()
    catalogue = query("select count(*) as n from catalog")[0]["n"]
    assert on_sale - 10 < catalogue <= on_sale  # every on_sale listing but the few with a broken photo
