"""Photos fetched and decoded as Spark tasks, or in decode processes, give the extract of one
process, row for row; and ``extract.launcher: spark-submit`` runs the stage as a Spark job."""
import dataclasses

import pyarrow.parquet as pq

from lookalike.config import load_config
from lookalike.extract import photos
from lookalike.extract.stage import run_extract
from lookalike.orchestration.launch import run_stage
from lookalike.storage import Warehouse
from tests.conftest import DS, write_config

OUTPUTS = ("listings_snapshot", "catalog", "quarantine", "interactions")


def _tables(result: dict) -> dict:
    return {name: pq.read_table(result[name]) for name in OUTPUTS}


def _never():
    raise AssertionError("the stage ran in-process although the config names a launcher")


def test_spark_and_decode_processes_extract_what_one_process_extracts(tmp_path, sample_dir, caplog):
    config = write_config(tmp_path, sample_dir, extract={"decode_processes": 1})
    cfg = load_config(config, environ={})
    one = run_extract(cfg, DS)
    expected = _tables(one)
    assert expected["listings_snapshot"].num_rows > 200 and expected["quarantine"].num_rows > 0

    processes = dataclasses.replace(cfg, work_dir=str(tmp_path / "processes"),
                                    extract=dataclasses.replace(cfg.extract, decode_processes=2))
    assert _tables(run_extract(processes, DS)) == expected

    caplog.set_level("INFO")
    on_spark = dataclasses.replace(cfg, work_dir=str(tmp_path / "spark"),
                                   extract=dataclasses.replace(cfg.extract, spark_min_rows=1))
    assert _tables(run_extract(on_spark, DS)) == expected
    assert "photos fetched and decoded on Spark (local[2])" in caplog.text
    assert photos.read_marker(Warehouse.of(on_spark), DS)["photos"] == photos.read_marker(Warehouse.of(cfg), DS)["photos"]


def test_extract_under_spark_submit(tmp_path, sample_dir, monkeypatch, caplog):
    config = write_config(tmp_path, sample_dir, extract={"launcher": "spark-submit", "spark_min_rows": 1})
    monkeypatch.setenv("LOOKALIKE_CONFIG", str(config))  # what a DAG task has
    caplog.set_level("INFO", logger="lookalike")
    result = run_stage(load_config(), "extract", DS, _never)
    assert "jobs/extract.py --ds " + DS in caplog.text
    assert "photos fetched and decoded on Spark" in caplog.text, caplog.text[-3000:]
    reference = run_extract(load_config(environ={"LOOKALIKE_CONFIG": str(config), "LOOKALIKE_WORK_DIR":
                                                 str(tmp_path / "here"), "LOOKALIKE_EXTRACT__SPARK_MIN_ROWS": "0"}), DS)
    assert _tables(result) == _tables(reference)


MAIN_THAT_ONLY_RUNS_AS_MAIN = '''
import sys
if __name__ != "__main__":  # as Airflow's entry point inside a task, whose environment blocks the metadata DB
    raise RuntimeError("this entry point cannot be imported by a child process")
from lookalike.config import load_config
from lookalike.extract.stage import run_extract
print(run_extract(load_config(sys.argv[1], environ={}), sys.argv[2])["listings_snapshot"])
'''


def test_decode_processes_work_under_a_main_module_that_children_cannot_import(tmp_path, sample_dir):
    """Spawned processes import the parent's ``__main__`` unless told not to: under an Airflow
    LocalExecutor task that import fails, and every decode process died with it."""
    import subprocess
    import sys
    from pathlib import Path

    config = write_config(tmp_path, sample_dir, extract={"decode_processes": 2})
    script = tmp_path / "entry.py"
    script.write_text(MAIN_THAT_ONLY_RUNS_AS_MAIN)
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(script), str(config), DS], capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = run_extract(load_config(config, environ={"LOOKALIKE_WORK_DIR": str(tmp_path / "one"),
                                                         "LOOKALIKE_EXTRACT__DECODE_PROCESSES": "1"}), DS)
    assert pq.read_table(done.stdout.strip()) == pq.read_table(reference["listings_snapshot"])
