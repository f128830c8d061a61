"""End to end: `lookalike run` drives the real Airflow DAG over a tiny sample marketplace."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.query import run_query
from pipelines.storage import PUBLISHED_TABLES, Warehouse
from tests.conftest import DS, write_config

REPO = Path(__file__).resolve().parents[1]
LOOKALIKE = [sys.executable, "-m", "pipelines.cli"]
pytestmark = pytest.mark.slow


def _run(*args, check=True, **kw):
    proc = subprocess.run([*LOOKALIKE, *args], capture_output=True, text=True, timeout=900, cwd=REPO, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"lookalike {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _contents(wh: Warehouse) -> dict:
    """Every published table's rows (sorted), for comparing two runs."""
    out = {}
    for table in PUBLISHED_TABLES:
        columns, rows = run_query(wh, f"select * from {table}_all")
        out[table] = sorted(json.dumps(dict(zip(columns, r)), default=str, sort_keys=True) for r in rows)
    return out


@pytest.fixture(scope="module")
def nightly(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("e2e")
    config = write_config(root, sample_dir, embed={"local_max_rows": 0})  # the first night embeds on Spark
    proc = _run("run", "--config", str(config), "--ds", DS)
    return config, Warehouse.of(load_config(config, environ={})), proc.stdout


def test_run_goes_through_airflow_and_prints_the_summary(nightly):
    config, wh, stdout = nightly
    for task in ("extract", "train", "evaluate", "embed", "neighbors", "publish"):
        assert f"── task {task}" in stdout
    assert "Published tables:" in stdout and "nDCG@5" in stdout and "lookalike query" in stdout
    assert "reused 0, computed" in stdout and "(spark)" in stdout
    assert all(DS in wh.partitions(t) for t in PUBLISHED_TABLES)


def test_neighbor_rows_equal_k_times_items_with_neighbours(nightly):
    config, wh, _ = nightly
    proc = _run("query", "--config", str(config), "--format", "json", "select count(*) as n from item_neighbors")
    total = json.loads(proc.stdout)[0]["n"]
    items = run_query(wh, "select count(distinct item_id) from item_neighbors")[1][0][0]
    assert items > 100 and total == 5 * items


def test_every_sql_file_runs_against_the_output(nightly):
    config, wh, _ = nightly
    files = sorted((REPO / "sql" / "analytics").glob("*.sql"))
    assert len(files) >= 4
    for path in files:
        columns, rows = run_query(wh, path.read_text())
        assert columns, path.name
        if path.name != "neighbor_overlap_day_over_day.sql":  # needs two published days
            assert rows, path.name
    item = run_query(wh, "select max(item_id) from item_neighbors")[1][0][0]
    _, rows = run_query(wh, (REPO / "sql" / "analytics" / "similar_items.sql").read_text(), {"item_id": item})
    assert [r[2] for r in rows] == [1, 2, 3, 4, 5] and all(r[0] == item for r in rows)


def test_rerunning_the_same_ds_leaves_published_tables_identical(nightly):
    config, wh, _ = nightly
    before = _contents(wh)
    proc = _run("run", "--config", str(config), "--ds", DS)
    assert _contents(wh) == before
    assert "computed 0 (none)" in proc.stdout  # every embedding reused: same items, photos and model
    _, rows = run_query(wh, (REPO / "sql" / "analytics" / "neighbor_overlap_day_over_day.sql").read_text())
    assert rows == []  # still one published day


def test_a_failed_run_says_where_the_log_is(tmp_path, sample_dir):
    config = write_config(tmp_path, sample_dir)
    proc = _run("run", "--config", str(config), "--ds", "2020-01-01", check=False)
    assert proc.returncode != 0
    assert "failed for ds=2020-01-01" in proc.stderr and "Airflow log" in proc.stderr
    assert "no listings created in" in proc.stdout  # the stage's own error reaches the console
