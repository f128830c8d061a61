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


DAG_IDS = {"lookalike_extract", "lookalike_finetune", "lookalike_nightly", "lookalike_user_recs", "lookalike_intraday"}


def _edges(dag):
    return {(up, down) for down in dag.task_ids for up in dag.get_task(down).upstream_task_ids}


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == DAG_IDS


def test_edges_are_exactly_the_pipeline(dagbag):
    assert dagbag.dags["lookalike_extract"].task_ids == ["extract"]
    assert _edges(dagbag.dags["lookalike_finetune"]) == {("train", "evaluate")}
    assert _edges(dagbag.dags["lookalike_nightly"]) == {("embed", "neighbors"), ("neighbors", "experiments"),
                                                       ("experiments", "publish"), ("publish", "report"),
                                                       ("publish", "handoff"), ("publish", "approve_drift"),
                                                       ("approve_drift", "publish_accepted"),
                                                       ("publish_accepted", "handoff"), ("publish_accepted", "report")}
    assert _edges(dagbag.dags["lookalike_user_recs"]) == {("userrec", "publish"), ("publish", "handoff")}
    assert _edges(dagbag.dags["lookalike_intraday"]) == {("update", "publish"), ("publish", "handoff")}


def test_dags_are_chained_by_assets(dagbag):
    from lookalike.publish.stage import EXPERIMENT_TABLES, NIGHTLY_TABLES

    extract = dagbag.dags["lookalike_extract"].get_task("extract")
    assert [a.name for a in extract.outlets] == ["lookalike.snapshot"]
    nightly = dagbag.dags["lookalike_nightly"]
    assert "lookalike.snapshot" in str(nightly.timetable.asset_condition)  # scheduled by each extract
    publish = nightly.get_task("publish")
    assert sorted(a.name for a in publish.outlets) == sorted(f"lookalike.{t}" for t in NIGHTLY_TABLES
                                                                      + EXPERIMENT_TABLES)
    user_recs = dagbag.dags["lookalike_user_recs"]
    assert "lookalike.item_embeddings" in str(user_recs.timetable.asset_condition)  # each published day
    assert sorted(a.name for a in user_recs.get_task("publish").outlets) == [
        "lookalike.eval_metrics", "lookalike.user_history", "lookalike.user_recommendations"]
    assert [a.name for a in dagbag.dags["lookalike_finetune"].get_task("evaluate").outlets] == ["lookalike.model"]


def test_training_runs_on_the_gpu_queue_and_pool(dagbag):
    train = dagbag.dags["lookalike_finetune"].get_task("train")
    assert (train.queue, train.pool) == ("gpu", "gpu")
    assert all(t.queue != "gpu" for d in DAG_IDS - {"lookalike_finetune"} for t in dagbag.dags[d].tasks)


def test_tasks_retry_with_backoff_time_out_and_say_how_to_rerun(dagbag):
    from lookalike.orchestration.dag_common import on_task_failure

    for dag_id in DAG_IDS:
        dag = dagbag.dags[dag_id]
        assert dag.max_active_runs == 1 and dag.doc_md and dag_id in dag.doc_md
        assert ("as_of" if dag_id == "lookalike_intraday" else "ds") in dag.params
        for task in dag.tasks:
            if task.task_id == "approve_drift":  # a human's answer is not retried; it times out to a rejection
                assert task.retries == 0 and task.response_timeout is not None
                continue
            assert task.retries >= 1 and task.retry_exponential_backoff, task.task_id
            assert task.execution_timeout is not None
            assert on_task_failure in (task.on_failure_callback if isinstance(task.on_failure_callback, list)
                                       else [task.on_failure_callback])


def test_the_failure_message_names_the_task_the_ds_and_the_rerun(caplog):
    from types import SimpleNamespace

    from lookalike.orchestration.dag_common import on_task_failure

    ti = SimpleNamespace(dag_id="lookalike_nightly", task_id="neighbors", try_number=3)
    on_task_failure({"ti": ti, "params": {"ds": "2026-11-21"}, "exception": ValueError("disk full")})
    message = caplog.records[-1].getMessage()
    assert "neighbors of lookalike_nightly failed for ds=2026-11-21" in message and "disk full" in message
    assert "airflow tasks clear lookalike_nightly" in message and "lookalike neighbors --ds 2026-11-21" in message


def test_dag_files_do_no_heavy_imports_at_parse_time():
    import subprocess
    import sys

    code = ("import sys, runpy; runpy.run_path(sys.argv[1]); "
            "heavy = [m for m in ('torch', 'pyspark', 'faiss', 'transformers') if m in sys.modules]; "
            "print(','.join(heavy))")
    for path in DAGS.glob("*.py"):
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "", f"{path.name} imports {out.stdout.strip()} at parse time"


def test_a_bad_config_key_fails_the_first_task_naming_it_and_every_dag_still_parses(tmp_path):
    """An unknown key (here an environment override) is not an import error of every DAG: they parse with
    the defaults, and the extract task fails at once (bad input, no retry) with the key in its log."""
    import subprocess
    import sys

    from lookalike.config import load_config
    from lookalike.orchestration.orchestrate import airflow_env
    from tests.conftest import DS

    cfg = load_config(environ={"LOOKALIKE_AIRFLOW__HOME": str(tmp_path / "airflow")})
    env = {**airflow_env(cfg, None), "LOOKALIKE_AIRFLOW__HOME": str(tmp_path / "airflow"),
           "LOOKALIKE_EXTRACT__NO_SUCH_KEY": "1"}
    airflow = str(Path(sys.executable).with_name("airflow"))
    bag = subprocess.run([sys.executable, "-c", "import json, sys; from airflow.dag_processing.dagbag import DagBag; "
                          "bag = DagBag(dag_folder=sys.argv[1]); print(json.dumps([sorted(bag.dag_ids), "
                          "list(bag.import_errors)]))", str(DAGS)], env=env, capture_output=True, text=True, timeout=300)
    assert bag.returncode == 0, bag.stderr[-3000:]
    assert bag.stdout.strip().splitlines()[-1] == f'[{sorted(DAG_IDS)!r}, []]'.replace("'", '"')
    subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, check=True, timeout=300)
    run = subprocess.run([airflow, "dags", "test", "lookalike_extract", DS], env=env, capture_output=True, text=True,
                         timeout=300)
    logs = run.stdout + run.stderr
    assert "no_such_key" in logs and "unknown config key" in logs, logs[-3000:]
    assert "AirflowFailException" in logs or "failed" in logs.lower()
    assert "up_for_retry" not in logs  # bad input: failed at once
