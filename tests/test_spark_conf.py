"""Spark settings generated from Lookalike's config, CPU and GPU clusters."""
import os
from pathlib import Path

from lookalike.tools.cli import main
from lookalike.config import load_config
from lookalike.spark import spark_conf


def test_cpu_default_reuses_workers_and_uses_one_thread_per_task():
    conf = spark_conf(load_config(environ={}))
    assert conf["spark.master"] == "local[*]"
    assert conf["spark.python.worker.reuse"] == "true"
    assert conf["spark.executorEnv.OMP_NUM_THREADS"] == "1"
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "1024"
    assert not any("resource.gpu" in key for key in conf)


def test_gpu_cluster_gets_one_gpu_per_task_and_a_discovery_script():
    cfg = load_config(environ={"LOOKALIKE_SPARK__MASTER": "spark://spark-master:7077",
                               "LOOKALIKE_SPARK__EXECUTOR_GPUS": "4", "LOOKALIKE_SPARK__EXECUTOR_MEMORY": "32g",
                               "LOOKALIKE_EMBED__ARROW_BATCH_ROWS": "512"})
    conf = spark_conf(cfg)
    assert conf["spark.executor.resource.gpu.amount"] == "4"
    assert conf["spark.task.resource.gpu.amount"] == "1"
    assert conf["spark.executor.memory"] == "32g"
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "512"
    script = Path(conf["spark.executor.resource.gpu.discoveryScript"])
    assert script.is_absolute() and script.is_file() and os.access(script, os.X_OK)


def test_cli_prints_spark_submit_flags(capsys, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_SPARK__EXECUTOR_GPUS", "1")
    assert main(["spark-conf"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "--conf spark.task.resource.gpu.amount=1" in lines
    assert all(line.startswith("--conf spark.") for line in lines)
