"""DAG integrity: the files import cleanly, wire the stages in order and retry."""
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"lookalike_nightly"}


def test_nightly_edges_are_exactly_the_pipeline(dagbag):
    dag = dagbag.dags["lookalike_nightly"]
    edges = {(up, down) for down in dag.task_ids for up in dag.get_task(down).upstream_task_ids}
    assert edges == {("extract", "train"), ("train", "evaluate"), ("evaluate", "embed"), ("embed", "neighbors"),
                     ("neighbors", "publish"), ("publish", "report")}


def test_publish_emits_an_asset_event_per_published_table(dagbag):
    from pipelines.storage import PUBLISHED_TABLES

    publish = dagbag.dags["lookalike_nightly"].get_task("publish")
    assert sorted(a.name for a in publish.outlets) == sorted(f"lookalike.{t}" for t in PUBLISHED_TABLES)


def test_tasks_retry_with_backoff_and_runs_do_not_overlap(dagbag):
    dag = dagbag.dags["lookalike_nightly"]
    assert dag.max_active_runs == 1
    assert dag.doc_md and "extract" in dag.doc_md
    for task in dag.tasks:
        assert task.retries >= 1 and task.retry_exponential_backoff, task.task_id
        assert task.execution_timeout is not None


def test_dag_files_do_no_heavy_imports_at_parse_time():
    import subprocess
    import sys

    code = ("import sys, runpy; runpy.run_path(sys.argv[1]); "
            "heavy = [m for m in ('torch', 'pyspark', 'faiss', 'transformers') if m in sys.modules]; "
            "print(','.join(heavy))")
    for path in DAGS.glob("*.py"):
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "", f"{path.name} imports {out.stdout.strip()} at parse time"
